package server

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// A refused single sign-on callback (GET /auth/oidc/callback) and a refused passkey sign-in
// (POST /auth/passkeys/sign-in/finish) leave exactly one audit event with the request's id,
// auth's auth.login.failed with its specific reason — never also the error handler's generic
// http.request.rejected; a passkey answer refused before auth (no credential) leaves the
// server's one event. Then, with the refusals' own events made unrecordable by the database:
// the OIDC callback, the passkey sign-in, a policy denial (POST and GET) and a refused session
// are answered 500 — never a clean 401/403 — and each still leaves exactly one event,
// http.request.failed (outcome failure), so no refused request is missing from the trail.
// Verifies: REQ-POR-090, REQ-ACC-058, REQ-ACC-059
func TestSignInRefusalsAuditedOnce(t *testing.T) {
	t.Parallel()
	vigilHandler := &lateHandler{}
	ts := httptest.NewServer(vigilHandler)
	t.Cleanup(ts.Close)
	callback := ts.URL + "/api/v1/auth/oidc/callback"
	op := authtest.StartOP(t, callback)

	pool, url := testdb.NewWithURL(t)
	ctx := context.Background()
	rec := audittest.Recorder(t, pool, nil)
	authSvc, _, _ := SignedInUserOn(t, pool, rec)
	rp, err := authSvc.NewRelyingParty(ctx, auth.OIDCConfig{Issuer: op.Issuer, ClientID: "vigil", ClientSecret: "vigil-secret",
		RedirectURL: callback, Scopes: []string{"email", "profile", authtest.OPGroupsScope},
		RoleMap: []auth.ClaimRole{{Value: "icu-nurses", Role: auth.RoleClinician, Domain: auth.AllDomains}}})
	if err != nil {
		t.Fatal(err)
	}
	pk, err := authSvc.NewPasskeys(auth.WebAuthnConfig{RPID: "vigil.test", Origins: []string{"https://vigil.test"}})
	if err != nil {
		t.Fatal(err)
	}
	auditSvc := chaintest.Start(t, pool, url, rec) // the state-change audit middleware is mounted with it
	s, err := New(Config{Pool: pool, Recorder: rec, Auth: authSvc, Audit: auditSvc, OIDC: rp, Passkeys: pk,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	vigilHandler.set(s.Handler())
	// A device technician may not list service accounts: the policy refuses (access.denied).
	tech := SignedInClient(t, authSvc, authtest.Grant{Role: auth.RoleDeviceTechnician, Domain: auth.AllDomains})
	unknownSession := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		r = r.Clone(r.Context())
		r.AddCookie(&http.Cookie{Name: authSvc.Config().Session.CookieName, Value: "vgs_" + strings.Repeat("A", 43)})
		return http.DefaultTransport.RoundTrip(r)
	})}

	type event struct{ action, outcome, reason string }
	do := func(cl *http.Client, method, path, body string) (*http.Response, []event, string) {
		t.Helper()
		req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		res, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		rid := res.Header.Get("X-Request-Id")
		// Counted as soon as the answer's status arrived: the event is committed before it.
		var got []event
		rows, err := pool.Query(ctx, `SELECT action, outcome, coalesce(reason, '') FROM audit_events WHERE request_id = $1 ORDER BY seq`, rid)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var e event
			if err := rows.Scan(&e.action, &e.outcome, &e.reason); err != nil {
				t.Fatal(err)
			}
			got = append(got, e)
		}
		rows.Close()
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if rid == "" {
			t.Fatalf("%s %s: no request id", method, path)
		}
		return res, got, string(b)
	}
	forged := "/api/v1/auth/oidc/callback?state=forged-state&code=whatever"
	unknownCeremony := `{"ceremony":"unknown-ceremony","credential":{"id":"AAAA","type":"public-key"}}`
	cases := []struct {
		what           string
		cl             *http.Client
		method, path   string
		body           string
		status         int
		action, reason string
	}{
		{"OIDC callback with a forged state", http.DefaultClient, "GET", forged, ``, 401, "auth.login.failed", "state_mismatch"},
		{"OIDC callback with the provider's error", http.DefaultClient, "GET", "/api/v1/auth/oidc/callback?error=access_denied", ``, 401, "auth.login.failed", "provider_error"},
		{"passkey sign-in of an unknown ceremony", http.DefaultClient, "POST", "/api/v1/auth/passkeys/sign-in/finish", unknownCeremony, 401, "auth.login.failed", "ceremony_unknown"},
		{"passkey sign-in without a credential", http.DefaultClient, "POST", "/api/v1/auth/passkeys/sign-in/finish", `{"ceremony":"x"}`, 400, "http.request.rejected", "invalid_request"},
	}
	for _, c := range cases {
		res, got, b := do(c.cl, c.method, c.path, c.body)
		if res.StatusCode != c.status {
			t.Errorf("%s = %d, want %d: %s", c.what, res.StatusCode, c.status, b)
		}
		if len(got) != 1 || got[0].action != c.action || got[0].outcome != "rejected" || (c.reason != "" && got[0].reason != c.reason) {
			t.Errorf("%s: audit events of the request = %+v, want exactly one %s (rejected, reason %q)", c.what, got, c.action, c.reason)
		}
	}

	// The database refuses the refusals' own events from now on.
	if _, err := pool.Exec(ctx, `CREATE FUNCTION refuse_refusals() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.action IN ('access.denied', 'auth.login.failed', 'auth.session.rejected') THEN
		RAISE EXCEPTION 'refused by test'; END IF; RETURN NEW; END $$;
		CREATE TRIGGER refuse_refusals BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse_refusals();`); err != nil {
		t.Fatal(err)
	}
	failing := []struct {
		what         string
		cl           *http.Client
		method, path string
		body         string
	}{
		{"OIDC callback with a forged state", http.DefaultClient, "GET", forged, ``},
		{"passkey sign-in of an unknown ceremony", http.DefaultClient, "POST", "/api/v1/auth/passkeys/sign-in/finish", unknownCeremony},
		{"issue a token without the permission", tech, "POST", "/api/v1/service-accounts/" + authtest.Admin.Actor.ID + "/tokens", `{}`},
		{"list service accounts without the permission", tech, "GET", "/api/v1/service-accounts", ``},
		{"sign out with an unknown session", unknownSession, "POST", "/api/v1/auth/sign-out", `{}`},
	}
	for _, c := range failing {
		res, got, b := do(c.cl, c.method, c.path, c.body)
		if res.StatusCode != http.StatusInternalServerError {
			t.Errorf("%s, its refusal not recordable = %d, want 500: %s", c.what, res.StatusCode, b)
		}
		if len(got) != 1 || got[0].action != "http.request.failed" || got[0].outcome != "failure" {
			t.Errorf("%s, its refusal not recordable: audit events of the request = %+v, want exactly one http.request.failed (failure)", c.what, got)
		}
	}
}
