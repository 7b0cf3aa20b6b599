package server

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pquerna/otp/totp"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// The API's refusals whose domain records its own event — a request without its CSRF token
// (auth.csrf.rejected), an alarm action the lifecycle refuses (alarm.acknowledged, …
// rejected), a refused enrollment (auth.enrollment.failed), a refused API sign-in
// (auth.login.failed), a policy denial (access.denied), a refused session or API token
// (auth.session.rejected, auth.token.rejected) — leave exactly that one event with the
// request's id, never also the error handler's http.request.rejected; a refusal no domain
// records (a password the policy refuses, a request without credentials) leaves the server's
// one event. A sign-in, session or policy refusal whose own event cannot be recorded is a 500,
// never a clean 401/403.
// Verifies: REQ-POR-084, REQ-POR-085, REQ-POR-086, REQ-POR-087, REQ-POR-088, REQ-POR-089
// Verifies: REQ-ACC-053
func TestCSRFAndDomainRefusalsAuditedOnce(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	ctx := context.Background()
	now := time.Now().UTC()
	clk := func() time.Time { return now }
	rec := audittest.Recorder(t, pool, nil)
	alarmSvc, err := alarms.New(alarms.Config{Pool: pool, Recorder: rec, Now: clk, MaxSilence: 30 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := rules.New(ctx, rules.Config{Pool: pool, Recorder: rec, Alarms: alarmSvc, Now: clk})
	if err != nil {
		t.Fatal(err)
	}
	authSvc, cl, _ := SignedInUserOn(t, pool, rec)
	auditSvc := chaintest.Start(t, pool, url, rec) // the state-change audit middleware is mounted with it
	s, err := New(Config{Pool: pool, Recorder: rec, Alarms: alarmSvc, Rules: eng, Now: clk, Auth: authSvc, Audit: auditSvc,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)

	p := uuid.New()
	res, err := eng.Evaluate(ctx, p, []rules.Observation{{PatientID: p, Code: rules.CodeSpO2, Value: 84, Unit: "%", EffectiveAt: now.Add(-time.Minute)},
		{PatientID: p, Code: rules.CodeSpO2, Value: 84, Unit: "%", EffectiveAt: now}})
	if err != nil || len(res.Transitions) == 0 {
		t.Fatalf("Evaluate() = %v, %v; want an alarm", res.Transitions, err)
	}
	alarm := "/api/v1/alarms/" + res.Transitions[0].Alarm.ID.String()
	noCSRF := &http.Client{Transport: &authtest.Transport{CookieName: authSvc.Config().Session.CookieName,
		Session: cl.Transport.(*authtest.Transport).Session, NoCSRF: true}}

	newcomer, err := authSvc.CreateUser(ctx, authtest.Admin, auth.Profile{Email: "refused-newcomer@test.example"})
	if err != nil {
		t.Fatal(err)
	}
	en, err := authSvc.IssueEnrollment(ctx, authtest.Admin, newcomer.ID)
	if err != nil {
		t.Fatal(err)
	}
	offer, err := authSvc.StartEnrollment(ctx, authtest.Admin, en.Token)
	if err != nil {
		t.Fatal(err)
	}
	code, err := totp.GenerateCode(offer.Secret, now)
	if err != nil {
		t.Fatal(err)
	}
	wrong := "000000"
	if code == wrong {
		wrong = "111111"
	}
	complete := func(password, code string) string {
		return `{"token":"` + en.Token + `","password":"` + password + `","totp_code":"` + code + `"}`
	}

	// A device technician may not act on alarms: the policy refuses (access.denied).
	tech := SignedInClient(t, authSvc, authtest.Grant{Role: auth.RoleDeviceTechnician, Domain: auth.AllDomains})
	bogus := func(token string, bearer bool) *http.Client {
		return &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			r = r.Clone(r.Context())
			if bearer {
				r.Header.Set("Authorization", "Bearer "+token)
			} else {
				r.AddCookie(&http.Cookie{Name: authSvc.Config().Session.CookieName, Value: token})
			}
			return http.DefaultTransport.RoundTrip(r)
		})}
	}
	unknownSession := bogus("vgs_"+strings.Repeat("A", 43), false)

	if _, err := alarmSvc.Acknowledge(ctx, res.Transitions[0].Alarm.ID, audit.Event{Actor: authtest.Admin.Actor}, ""); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		what   string
		cl     *http.Client
		method string
		path   string
		body   string
		status int
		action string
	}{
		{"acknowledge without the CSRF token", noCSRF, "POST", alarm + "/acknowledge", `{}`, 403, "auth.csrf.rejected"},
		{"acknowledge again", cl, "POST", alarm + "/acknowledge", `{}`, 409, "alarm.acknowledged"},
		{"silence for longer than allowed", cl, "POST", alarm + "/silence", `{"reason":"turning","duration":"5h"}`, 400, "alarm.silenced"},
		// Refused by the access layer before the lifecycle (no alarm to authorize on): the server's record.
		{"resolve an unknown alarm", cl, "POST", "/api/v1/alarms/" + uuid.NewString() + "/resolve", `{"reason":"gone"}`, 404, "http.request.rejected"},
		{"start an unknown enrollment", http.DefaultClient, "POST", "/api/v1/auth/enrollment", `{"token":"vge_nope"}`, 401, "auth.enrollment.failed"},
		{"complete with a wrong code", http.DefaultClient, "POST", "/api/v1/auth/enrollment/complete", complete("correct horse battery staple", wrong), 401, "auth.enrollment.failed"},
		{"complete with a short password", http.DefaultClient, "POST", "/api/v1/auth/enrollment/complete", complete("short", code), 400, "http.request.rejected"},
		{"sign in with a wrong password", http.DefaultClient, "POST", "/api/v1/auth/sign-in", `{"email":"nobody@test.example","password":"wrong horse"}`, 401, "auth.login.failed"},
		{"sign in before enrolling", http.DefaultClient, "POST", "/api/v1/auth/sign-in", `{"email":"refused-newcomer@test.example","password":"x"}`, 401, "auth.login.failed"},
		{"resolve without the permission", tech, "POST", alarm + "/resolve", `{"reason":"gone"}`, 403, "access.denied"},
		{"read an alarm without the permission", tech, "GET", alarm, ``, 403, "access.denied"},
		{"acknowledge with an unknown session", unknownSession, "POST", alarm + "/acknowledge", `{}`, 401, "auth.session.rejected"},
		{"read with a malformed session", bogus("nonsense", false), "GET", alarm, ``, 401, "auth.session.rejected"},
		{"acknowledge with an unknown API token", bogus("vgt_nope", true), "POST", alarm + "/acknowledge", `{}`, 401, "auth.token.rejected"},
		// No credentials at all: auth records nothing, so the server's record is the one.
		{"acknowledge without credentials", http.DefaultClient, "POST", alarm + "/acknowledge", `{}`, 401, "http.request.rejected"},
	}
	for _, c := range cases {
		req, _ := http.NewRequest(c.method, ts.URL+c.path, strings.NewReader(c.body))
		req.Header.Set("Content-Type", "application/json")
		res, err := c.cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		rid := res.Header.Get("X-Request-Id")
		var got []string
		rows, err := pool.Query(ctx, `SELECT action || ' ' || outcome FROM audit_events WHERE request_id = $1 ORDER BY seq`, rid)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var a string
			if err := rows.Scan(&a); err != nil {
				t.Fatal(err)
			}
			got = append(got, a)
		}
		rows.Close()
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != c.status {
			t.Errorf("%s = %d, want %d: %s", c.what, res.StatusCode, c.status, b)
		}
		if rid == "" || len(got) != 1 || got[0] != c.action+" rejected" {
			t.Errorf("%s: audit events of request %q = %q, want exactly one %s (rejected)", c.what, rid, got, c.action)
		}
	}

	// The database refuses the refusals' own events from now on: a refusal whose record
	// failed is an internal error (500), never a clean 401/403 without its record.
	if _, err := pool.Exec(ctx, `CREATE FUNCTION refuse_refusals() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.action IN ('access.denied', 'auth.login.failed', 'auth.session.rejected') THEN
		RAISE EXCEPTION 'refused by test'; END IF; RETURN NEW; END $$;
		CREATE TRIGGER refuse_refusals BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse_refusals();`); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		switch c.action {
		case "access.denied", "auth.login.failed", "auth.session.rejected":
		default:
			continue
		}
		req, _ := http.NewRequest(c.method, ts.URL+c.path, strings.NewReader(c.body))
		req.Header.Set("Content-Type", "application/json")
		res, err := c.cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusInternalServerError {
			t.Errorf("%s, its %s not recordable = %d, want 500: %s", c.what, c.action, res.StatusCode, b)
		}
	}
}

// roundTripFunc is an http.RoundTripper made of a function (a client carrying credentials
// that match nothing).
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
