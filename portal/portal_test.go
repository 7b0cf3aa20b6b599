package portal_test

import (
	stdhtml "html"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/portal"
)

func body(t *testing.T, res *http.Response) string {
	t.Helper()
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Every page answers with the Content-Security-Policy that allows only the portal's own
// origin (no inline script), is not cached, and references each script and style sheet by
// its hashed URL with its integrity; the page has no inline script or style.
// Verifies: REQ-POR-003, REQ-POR-004
func TestPageHeadersAndNoInlineScript(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	email, secret := s.clinician(t, "clinician", s.ward.ID)
	c := client(t)
	if res := s.signIn(t, c, email, password, s.code(t, secret)); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign in = %d: %s", res.StatusCode, body(t, res))
	}
	for _, path := range []string{"/signin?x=1", "/"} {
		cl := c
		if path != "/" {
			cl = client(t)
		}
		res := s.get(t, path, cl)
		html := body(t, res)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("GET %s = %d", path, res.StatusCode)
		}
		csp := res.Header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'", "form-action 'self'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("GET %s CSP = %q, missing %q", path, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
			t.Errorf("GET %s CSP = %q allows inline or eval", path, csp)
		}
		if got := res.Header.Get("Cache-Control"); got != "no-store" {
			t.Errorf("GET %s Cache-Control = %q", path, got)
		}
		if regexp.MustCompile(`<script(?:\s[^>]*)?>\s*[^<\s]`).MatchString(html) || strings.Contains(html, "<style") ||
			regexp.MustCompile(`\sstyle=|\son[a-z]+=`).MatchString(html) {
			t.Errorf("GET %s has inline script, style or handler:\n%s", path, html)
		}
		tags := regexp.MustCompile(`<(?:script|link)[^>]*>`).FindAllString(stdhtml.UnescapeString(html), -1)
		if len(tags) == 0 {
			t.Fatalf("GET %s has no script or style sheet", path)
		}
		for _, tag := range tags {
			if !regexp.MustCompile(`(?:src|href)="/assets/[^"]+\.[0-9a-f]{16}\.(?:js|css)"`).MatchString(tag) ||
				!regexp.MustCompile(`integrity="sha384-[A-Za-z0-9+/=]{64}"`).MatchString(tag) {
				t.Errorf("GET %s: %s is not a hashed asset with integrity", path, tag)
			}
		}
	}
}

// Sign-in posts to auth's local password + TOTP login: coded errors are rendered next to
// the field, no session is created; a cross-site post is refused; success sets the session
// cookie and opens the ward overview; sign-out needs the CSRF token and ends the session.
// Verifies: REQ-POR-005, REQ-POR-006
func TestSignInAndOut(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	email, secret := s.clinician(t, "clinician", s.ward.ID)
	c := client(t)
	if res := s.get(t, "/", c); res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/signin" {
		t.Fatalf("GET / without a session = %d %q, want 303 /signin", res.StatusCode, res.Header.Get("Location"))
	}
	sessions := func() int { return s.Count(t, "SELECT count(*) FROM auth_sessions") }
	cases := []struct {
		name, email, pw, code string
		status                int
		wantCode              string
		wantInvalid           string
	}{
		{"no email", "", password, "", 422, "email_required", "email"},
		{"no password", email, "", "", 422, "password_required", "password"},
		{"no code", email, password, "", 401, "mfa_required", "totp"},
		{"wrong code", email, password, "000000", 401, "invalid_credentials", "password"},
		{"wrong password", email, "not the password at all", s.code(t, secret), 401, "invalid_credentials", "password"},
	}
	for _, tc := range cases {
		res := s.signIn(t, c, tc.email, tc.pw, tc.code)
		html := body(t, res)
		if res.StatusCode != tc.status || !strings.Contains(html, `data-code="`+tc.wantCode+`"`) {
			t.Errorf("%s: sign in = %d, want %d with code %s:\n%s", tc.name, res.StatusCode, tc.status, tc.wantCode, html)
		}
		if !regexp.MustCompile(`id="` + tc.wantInvalid + `"[^>]*aria-invalid="true"`).MatchString(strings.ReplaceAll(html, "\n", " ")) {
			t.Errorf("%s: field %s is not marked invalid", tc.name, tc.wantInvalid)
		}
		if n := sessions(); n != 0 {
			t.Fatalf("%s: %d sessions stored after a refused sign-in", tc.name, n)
		}
	}
	s.Clock.Add(30 * time.Second)
	// A cross-site form post is refused before auth is asked.
	form := url.Values{"email": {email}, "password": {password}, "totp": {s.code(t, secret)}}
	req, _ := http.NewRequest(http.MethodPost, s.ts.URL+"/signin", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusForbidden || sessions() != 0 {
		t.Fatalf("cross-site sign in = %d (%d sessions), want 403 and none", res.StatusCode, sessions())
	}
	res.Body.Close()

	res = s.signIn(t, c, email, password, s.code(t, secret))
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/" {
		t.Fatalf("sign in = %d %q: %s", res.StatusCode, res.Header.Get("Location"), body(t, res))
	}
	res.Body.Close()
	if sessions() != 1 {
		t.Fatalf("%d sessions after sign-in, want 1", sessions())
	}
	res = s.get(t, "/", c)
	html := body(t, res)
	if res.StatusCode != http.StatusOK || !strings.Contains(html, "Ward overview") {
		t.Fatalf("GET / signed in = %d:\n%s", res.StatusCode, html)
	}
	if res := s.get(t, "/signin", c); res.StatusCode != http.StatusSeeOther {
		t.Errorf("GET /signin signed in = %d, want 303 to the overview", res.StatusCode)
	}
	// Sign-out without the CSRF token is refused; with it the session ends.
	post := func(form url.Values) *http.Response {
		req, _ := http.NewRequest(http.MethodPost, s.ts.URL+"/signout", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res
	}
	if res := post(url.Values{}); res.StatusCode != http.StatusForbidden {
		t.Fatalf("sign out without CSRF = %d, want 403", res.StatusCode)
	}
	if n := s.Count(t, "SELECT count(*) FROM audit_events WHERE action = 'auth.csrf.rejected'"); n != 1 {
		t.Errorf("%d auth.csrf.rejected events, want 1", n)
	}
	tok := regexp.MustCompile(`name="csrf_token" value="([^"]+)"`).FindStringSubmatch(html)
	if tok == nil {
		t.Fatal("the overview has no sign-out form with a CSRF token")
	}
	if res := post(url.Values{"csrf_token": {tok[1]}}); res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/signin" {
		t.Fatalf("sign out = %d %q", res.StatusCode, res.Header.Get("Location"))
	}
	if n := s.Count(t, "SELECT count(*) FROM auth_sessions WHERE ended_at IS NULL"); n != 0 {
		t.Fatalf("%d open sessions after sign-out", n)
	}
	if res := s.get(t, "/", c); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("GET / after sign-out = %d, want 303", res.StatusCode)
	}
}

// The ward overview shows one tile per patient of the viewer's ward — latest vitals with
// units and age, NEWS2 score and band, active alarms by IEC 60601-1-8 priority (colour
// class, symbol and word), device status — and nothing of another ward's patients; a tile
// of another ward's patient is refused; each tile shown is an audited read.
// Verifies: REQ-POR-007, REQ-POR-008, REQ-POR-009
func TestWardOverviewTiles(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	email, secret := s.clinician(t, "clinician", s.ward.ID)
	s.upload(t, 5) // HR, SpO2, RR, temperature, systolic BP of the device's patient
	// An alarm and a NEWS2 score for the second patient, from the rules engine.
	p2 := s.patients[1].ID
	now := s.Clock.Now()
	obs := []rules.Observation{
		{PatientID: p2, Code: rules.CodeSpO2, Value: 84, Unit: "%", EffectiveAt: now.Add(-time.Minute)},
		{PatientID: p2, Code: rules.CodeSpO2, Value: 84, Unit: "%", EffectiveAt: now},
		{PatientID: p2, Code: rules.CodeHeartRate, Value: 128, Unit: "/min", EffectiveAt: now},
		{PatientID: p2, Code: rules.CodeRespiratoryRate, Value: 26, Unit: "/min", EffectiveAt: now},
		{PatientID: p2, Code: rules.CodeBodyTemperature, Value: 39.4, Unit: "Cel", EffectiveAt: now},
		{PatientID: p2, Code: rules.CodeSystolicBP, Value: 95, Unit: "mm[Hg]", EffectiveAt: now},
		{PatientID: p2, Code: rules.CodeConsciousness, Value: 0, Unit: "{score}", EffectiveAt: now},
		{PatientID: p2, Code: rules.CodeInhaledO2Flow, Value: 0, Unit: "L/min", EffectiveAt: now},
	}
	res0, err := s.rules.Evaluate(s.Ctx, p2, obs)
	if err != nil || len(res0.Transitions) == 0 {
		t.Fatalf("Evaluate = %v, %v; want alarms", res0.Transitions, err)
	}
	s.Clock.Add(45 * time.Second)
	c := client(t)
	if res := s.signIn(t, c, email, password, s.code(t, secret)); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign in = %d", res.StatusCode)
	}
	res := s.get(t, "/", c)
	html := body(t, res)
	for _, p := range s.patients {
		if !strings.Contains(html, `id="tile-`+p.ID.String()+`"`) {
			t.Errorf("no tile for %s", p.PHI.GivenName)
		}
	}
	if strings.Contains(html, s.other.ID.String()) || strings.Contains(html, "Elsewhere") {
		t.Errorf("the overview shows the other ward's patient")
	}
	if !strings.Contains(html, "Ward 7A") || strings.Contains(html, "Ward 9C") {
		t.Errorf("ward headings wrong")
	}
	tile := func(id string) string {
		res := s.get(t, "/ward/tiles/"+id, c)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("GET tile %s = %d", id, res.StatusCode)
		}
		return strings.Join(strings.Fields(body(t, res)), " ")
	}
	t1 := tile(s.patients[0].ID.String())
	for _, want := range []string{`data-code="8867-4"> <dt><abbr title="Heart rate">HR</abbr></dt> <dd><span class="value">72</span> <span class="unit">/min</span> <span class="age">`,
		`<span class="value">97</span> <span class="unit">%</span>`, `<span class="value">121/—</span> <span class="unit">mmHg</span>`, `<span class="value">36.9</span> <span class="unit">°C</span>`,
		`data-status="online"`, "No active alarms"} {
		if !strings.Contains(t1, want) {
			t.Errorf("tile of the device's patient lacks %q:\n%s", want, t1)
		}
	}
	if !regexp.MustCompile(`<span class="age">4[5-9] s ago</span>`).MatchString(t1) {
		t.Errorf("tile does not show the values' age (45 s):\n%s", t1)
	}
	s.Clock.Add(3 * time.Minute) // past NoDataAfter: the device is silent
	if t1 := tile(s.patients[0].ID.String()); !strings.Contains(t1, `data-status="no-data"`) || !strings.Contains(t1, "3 min ago") {
		t.Errorf("tile of a silent device's patient, 3 min later:\n%s", t1)
	}
	t2 := tile(p2.String())
	if !regexp.MustCompile(`NEWS2 <strong class="score">\d+</strong> <span class="band">(High|Medium) risk</span>`).MatchString(t2) {
		t.Errorf("tile lacks the NEWS2 score and band:\n%s", t2)
	}
	if !regexp.MustCompile(`class="alarm alarm-(high|medium|low)" data-priority="(high|medium|low)"><span class="symbol" aria-hidden="true">!{1,3}</span> <span class="word">(High|Medium|Low) priority:</span>`).MatchString(t2) {
		t.Errorf("tile lacks a prioritised alarm:\n%s", t2)
	}
	// Another ward's patient: refused, and nothing of them in the answer.
	res = s.get(t, "/ward/tiles/"+s.other.ID.String(), c)
	if b := body(t, res); res.StatusCode != http.StatusForbidden || strings.Contains(b, "Otto") {
		t.Fatalf("GET other ward's tile = %d %s, want 403", res.StatusCode, b)
	}
	if n := s.Count(t, "SELECT count(*) FROM audit_events WHERE action = 'access.phi.read' AND object_id = $1", p2.String()); n < 2 {
		t.Errorf("%d access.phi.read events for the second patient, want one per view (2)", n)
	}
	_ = auth.ObjObservation
}

// portal.Routes lists exactly the routes Mount registers (the server's access table is built
// from it).
// Verifies: REQ-POR-008
func TestRoutesListed(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	e := echo.New()
	s.portal.Mount(e)
	var got []string
	for _, r := range e.Routes() {
		got = append(got, r.Method+" "+r.Path)
	}
	want := portal.Routes()
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("Mount registers %v, Routes() = %v", got, want)
	}
}
