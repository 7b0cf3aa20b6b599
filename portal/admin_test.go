package portal_test

import (
	"context"
	"html"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/auth"
)

// breakGlassViaAPI opens break-glass access to a patient with c's session.
func (s *stack) breakGlassViaAPI(t testing.TB, c *http.Client, patient, reason string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, s.ts.URL+"/api/v1/patients/"+patient+"/break-glass",
		strings.NewReader(`{"reason":"`+reason+`"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(auth.CSRFHeader, auth.CSRFToken(s.session(t, c)))
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode >= 300 {
		t.Fatalf("break-glass = %d %s", res.StatusCode, b)
	}
}

// TestAdminPage: each section of the administration page shown only to those the policy
// lets read it — users with roles and wards and the policy with its versions to the
// administrator; the policy and the break-glass review queue to quality staff, who review a
// grant (note required, CSRF required); the rules with their versions and authors to
// clinicians; nothing to a technician.
// Verifies: REQ-POR-037, REQ-POR-038
func TestAdminPage(t *testing.T) {
	s := newStack(t)
	nEmail, nSecret := s.clinician(t, auth.RoleClinician, s.ward.ID)
	nurse := s.signedInAs(t, nEmail, nSecret)
	nu, _ := s.auth.UserByEmail(s.Ctx, nEmail)
	s.breakGlassViaAPI(t, nurse, s.other.ID.String(), "patient collapsed in the corridor")

	aEmail, aSecret, _ := s.staff(t, auth.RoleAdmin)
	adm := s.signedInAs(t, aEmail, aSecret)
	res := s.get(t, "/admin", adm)
	page := body(t, res)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("admin GET /admin = %d:\n%s", res.StatusCode, page)
	}
	if !regexp.MustCompile(`<tr data-user="` + nu.ID.String() + `"><td>` + regexp.QuoteMeta(nu.Profile.DisplayName) + `</td><td>` + nEmail + `</td><td class="status">active</td><td>TOTP</td>\s*<td>clinician on Ward 7A</td>`).MatchString(page) {
		t.Errorf("the users section lacks the clinician with their ward:\n%s", page)
	}
	for _, want := range []string{`id="policy-rules"`, "<td>quality</td><td>audit</td><td>read</td><td>global</td>", `id="policy-versions"`, "role_granted", `href="/admin" aria-current="page"`} {
		if !strings.Contains(page, want) {
			t.Errorf("admin page lacks %q", want)
		}
	}
	for _, absent := range []string{`id="breakglass"`, `id="rules"`, "patient collapsed"} {
		if strings.Contains(page, absent) {
			t.Errorf("admin page shows %q, which the administrator may not read", absent)
		}
	}

	// The administrator adds a user (coded errors first, CSRF required) and gets the
	// enrollment link once, with its QR code; the link works; then disables the account.
	if res := s.postFormAs(t, adm, "/admin/users", url.Values{"email": {"x@example.org"}, "name": {"X"}, "role": {"quality"}, "ward": {"*"}}, false); res.StatusCode != http.StatusForbidden {
		t.Errorf("add user without CSRF = %d, want 403", res.StatusCode)
	}
	for _, tc := range []struct {
		form        url.Values
		field, code string
	}{
		{url.Values{"email": {"not-an-address"}, "name": {"X"}, "role": {"quality"}, "ward": {"*"}}, "email", "invalid_email"},
		{url.Values{"email": {"x@example.org"}, "name": {""}, "role": {"quality"}, "ward": {"*"}}, "name", "name_required"},
		{url.Values{"email": {"x@example.org"}, "name": {"X"}, "role": {"clinician"}, "ward": {"*"}}, "ward", "ward_required"},
		{url.Values{"email": {"x@example.org"}, "name": {"X"}, "role": {"quality"}, "ward": {string(auth.WardDomain(s.ward.ID))}}, "ward", "ward_not_allowed"},
		{url.Values{"email": {"x@example.org"}, "name": {"X"}, "role": {"clinician"}, "ward": {"ward:" + uuid.NewString()}}, "ward", "invalid_ward"},
		{url.Values{"email": {"x@example.org"}, "name": {"X"}, "role": {"overlord"}, "ward": {"*"}}, "role", "invalid_role"},
		{url.Values{"email": {nEmail}, "name": {"X"}, "role": {"quality"}, "ward": {"*"}}, "email", "user_conflict"},
	} {
		res := s.postFormAs(t, adm, "/admin/users", tc.form, true)
		if page := body(t, res); res.StatusCode < 400 || !strings.Contains(page, `id="u-`+tc.field+`-error" class="field-error" data-code="`+tc.code+`"`) {
			t.Errorf("add user %v = %d, want %s on %s", tc.form, res.StatusCode, tc.code, tc.field)
		}
	}
	if _, err := s.auth.UserByEmail(s.Ctx, "x@example.org"); err == nil {
		t.Error("a refused form stored a user")
	}
	newEmail := "charge-" + uuid.NewString()[:6] + "@example.org"
	res = s.postFormAs(t, adm, "/admin/users", url.Values{"email": {newEmail}, "name": {"Grace Hopper"}, "role": {auth.RoleChargeNurse},
		"ward": {string(auth.WardDomain(s.ward.ID))}}, true)
	page = html.UnescapeString(body(t, res))
	link := regexp.MustCompile(`<code id="link">(http://[^<]+/enroll#token=(vge_[A-Za-z0-9_-]+))</code>`).FindStringSubmatch(page)
	if res.StatusCode != http.StatusOK || link == nil || !strings.Contains(page, `<img class="qr" id="link-qr" src="data:image/png;base64,`) ||
		!strings.Contains(page, "charge nurse on Ward 7A") {
		t.Fatalf("add user = %d:\n%s", res.StatusCode, page)
	}
	if _, err := s.auth.StartEnrollment(s.Ctx, auth.Origin{}, link[2]); err != nil {
		t.Errorf("the enrollment link does not work: %v", err)
	}
	added, err := s.auth.UserByEmail(s.Ctx, newEmail)
	if err != nil {
		t.Fatal(err)
	}
	res = s.postFormAs(t, adm, "/admin/users/"+added.ID.String()+"/status", url.Values{"action": {"disable"}}, true)
	if page = body(t, res); res.StatusCode != http.StatusOK || !regexp.MustCompile(`<tr data-user="`+added.ID.String()+`">.*?<td class="status">disabled</td>`).MatchString(page) {
		t.Errorf("disable = %d", res.StatusCode)
	}
	au, _ := s.auth.UserByEmail(s.Ctx, aEmail)
	if res := s.postFormAs(t, adm, "/admin/users/"+au.ID.String()+"/status", url.Values{"action": {"disable"}}, true); res.StatusCode != http.StatusConflict {
		t.Errorf("disabling oneself = %d, want 409", res.StatusCode)
	}
	res = s.postFormAs(t, adm, "/admin/users/"+added.ID.String()+"/status", url.Values{"action": {"enable"}}, true)
	if page = body(t, res); !regexp.MustCompile(`<tr data-user="` + added.ID.String() + `">.*?<td class="status">active</td>`).MatchString(page) {
		t.Errorf("enable = %d", res.StatusCode)
	}

	// Quality: the policy and the break-glass queue, not the users.
	qEmail, qSecret, qName := s.staff(t, auth.RoleQuality)
	q := s.signedInAs(t, qEmail, qSecret)
	page = body(t, s.get(t, "/admin", q))
	if strings.Contains(page, `id="user-list"`) || strings.Contains(page, nEmail) || !strings.Contains(page, `id="policy-rules"`) {
		t.Error("quality staff: wrong sections")
	}
	if !regexp.MustCompile(`<td class="who">` + regexp.QuoteMeta(nu.Profile.DisplayName) + `</td><td>break_glass_opened</td>`).MatchString(page) {
		t.Error("the policy changes do not name the clinician who opened break-glass")
	}
	grant := regexp.MustCompile(`<tr data-grant="([0-9a-f-]{36})">`).FindStringSubmatch(page)
	if grant == nil || !strings.Contains(page, "patient collapsed in the corridor") || !strings.Contains(page, nu.Profile.DisplayName) {
		t.Fatalf("break-glass queue lacks the grant:\n%s", page)
	}
	path := "/admin/break-glass/" + grant[1] + "/review"
	if res := s.postFormAs(t, q, path, url.Values{"note": {"justified"}}, false); res.StatusCode != http.StatusForbidden {
		t.Errorf("review without CSRF = %d, want 403", res.StatusCode)
	}
	res = s.postFormAs(t, q, path, url.Values{"note": {"  "}}, true)
	if page = body(t, res); res.StatusCode != http.StatusUnprocessableEntity ||
		!strings.Contains(page, `<p id="note-`+grant[1]+`-error" class="field-error" data-code="note_required">`) {
		t.Errorf("review without a note = %d", res.StatusCode)
	}
	res = s.postFormAs(t, q, path, url.Values{"note": {"justified: rapid response call"}}, true)
	if page = body(t, res); res.StatusCode != http.StatusOK || !strings.Contains(page, "Review recorded.") || !strings.Contains(page, `id="no-grants"`) {
		t.Errorf("review = %d:\n%s", res.StatusCode, page)
	}
	gs, err := s.auth.BreakGlassGrants(s.Ctx, false, 10)
	if err != nil || len(gs) != 1 || gs[0].ReviewedAt == nil {
		t.Errorf("grant after review = %+v, %v", gs, err)
	}
	if res := s.postFormAs(t, q, path, url.Values{"note": {"again"}}, true); res.StatusCode != http.StatusConflict {
		t.Errorf("second review = %d, want 409", res.StatusCode)
	}
	if res := s.postFormAs(t, adm, path, url.Values{"note": {"x"}}, true); res.StatusCode != http.StatusForbidden {
		t.Errorf("administrator review = %d, want 403", res.StatusCode)
	}
	if res := s.postFormAs(t, q, "/admin/users", url.Values{"email": {"q@example.org"}, "name": {"Q"}, "role": {"quality"}, "ward": {"*"}}, true); res.StatusCode != http.StatusForbidden {
		t.Errorf("quality adds a user = %d, want 403", res.StatusCode)
	}
	_ = qName

	// A clinician: the clinical rules with their versions and who made them, and the care
	// teams of their own patients (each read audited); nothing else.
	if _, err := s.Core.AddCareTeamMember(s.Ctx, admin, s.patients[1].ID, nu.ID.String(), "nurse"); err != nil {
		t.Fatal(err)
	}
	page = body(t, s.get(t, "/admin", nurse))
	p1 := s.patients[1]
	if !regexp.MustCompile(`<tr data-patient="` + p1.ID.String() + `"><td>Ward 7A</td><td>` + p1.PHI.GivenName + " " + p1.PHI.FamilyName + ` <span class="mrn">` + p1.PHI.MRN +
		`</span></td>\s*<td>` + regexp.QuoteMeta(nu.Profile.DisplayName) + ` \(nurse, since`).MatchString(page) {
		t.Errorf("the clinician's care teams lack their own team:\n%s", page)
	}
	if strings.Contains(page, s.other.PHI.FamilyName) {
		t.Error("the care teams show a patient of another ward")
	}
	reads, err := s.chain.Events(s.Ctx, chain.EventFilter{ActorID: nu.ID.String(), Action: "access.phi.read", ObjectType: "patient", ObjectID: p1.ID.String()})
	if err != nil || len(reads.Events) == 0 {
		t.Errorf("care team read not audited: %d, %v", len(reads.Events), err)
	}
	if !strings.Contains(page, "No ward has its own NEWS2 settings") {
		t.Error("the ward settings section is missing")
	}
	if err := s.rules.SetWardNEWS2(s.Ctx, admin, s.ward.ID, []string{"temp", "acvpu"}, 4*time.Hour, "temperature charted every 4 h"); err != nil {
		t.Fatal(err)
	}
	if err := s.rules.SetWardNEWS2(s.Ctx, admin, s.ward.ID, []string{"temp"}, 6*time.Hour, "night rounds"); err != nil {
		t.Fatal(err)
	}
	page = body(t, s.get(t, "/admin", nurse))
	if !regexp.MustCompile(`<tr><td>Ward 7A</td><td>2</td><td>[^<]+</td><td class="who">[^<]+</td><td>temp</td><td>6h</td><td>night rounds</td></tr>` +
		`<tr><td>Ward 7A</td><td>1</td><td>[^<]+</td><td class="who">[^<]+</td><td>temp, acvpu</td><td>4h</td><td>temperature charted every 4 h</td></tr>`).MatchString(page) {
		t.Errorf("the ward settings lack their two versions:\n%s", page)
	}
	if strings.Contains(body(t, s.get(t, "/admin", adm)), `id="careteams"`) {
		t.Error("the administrator sees the care teams (patients' names)")
	}
	if !strings.Contains(page, `id="rules"`) || !strings.Contains(page, `data-rule="news2"`) || strings.Contains(page, `id="policy-rules"`) ||
		strings.Contains(page, `id="user-list"`) || strings.Contains(page, `id="breakglass"`) {
		t.Errorf("clinician's administration page has the wrong sections:\n%s", page)
	}

	// A technician may read none of it.
	tEmail, tSecret, _ := s.staff(t, auth.RoleDeviceTechnician)
	tech := s.signedInAs(t, tEmail, tSecret)
	if res := s.get(t, "/admin", tech); res.StatusCode != http.StatusForbidden {
		t.Errorf("technician GET /admin = %d, want 403", res.StatusCode)
	}
	if page := body(t, s.get(t, "/devices", tech)); strings.Contains(page, `href="/admin"`) {
		t.Error("the technician is offered the administration page")
	}
}
