package auth_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/auth"
)

// Verifies: REQ-ACC-005
func TestSessionIdleTimeoutAndLifetime(t *testing.T) {
	e := newEnv(t, nil)
	u, secret, _ := e.user(t, "carol@example.org", [2]string{auth.RoleClinician, "*"})
	sess, p := e.login(t, "carol@example.org", secret)
	if p.ID != u.ID || p.SessionID != sess.ID || p.Subject != auth.UserSubject(u.ID) || p.AuthMethod != auth.MethodPasswordTOTP {
		t.Fatalf("Authenticate = %+v, want user %s in session %s", p, u.ID, sess.ID)
	}
	cred := auth.Credentials{SessionToken: sess.Token, SourceAddr: "192.0.2.10"}
	// Used every 14 minutes, the session lives on (the default idle timeout is 15 minutes).
	for range 3 {
		e.clock.Add(14 * time.Minute)
		if _, err := e.svc.Authenticate(e.ctx, cred); err != nil {
			t.Fatalf("Authenticate after 14 min = %v (%s)", err, auth.ReasonOf(err))
		}
	}
	e.clock.Add(15 * time.Minute)
	_, err := e.svc.Authenticate(e.ctx, cred)
	wantCode(t, "Authenticate(idle 15 min)", err, "session_expired", "session_idle_timeout")
	_, err = e.svc.Authenticate(e.ctx, cred)
	wantCode(t, "Authenticate(ended session)", err, "session_expired", "session_ended")
	if got := e.events(t, "auth.session.ended"); len(got) != 1 || got[0].Reason != "idle_timeout" {
		t.Fatalf("auth.session.ended = %+v, want one idle_timeout", got)
	}

	// Absolute lifetime: 12 hours however busy.
	sess, _ = e.login(t, "carol@example.org", secret)
	cred.SessionToken = sess.Token
	for range 12 * 6 {
		e.clock.Add(10 * time.Minute)
		if _, err := e.svc.Authenticate(e.ctx, cred); err != nil {
			wantCode(t, "Authenticate(after 12 h)", err, "session_expired", "session_lifetime")
			if el := e.clock.Now().Sub(sess.CreatedAt); el < 12*time.Hour || el > 12*time.Hour+10*time.Minute {
				t.Fatalf("session ended after %s, want 12h", e.clock.Now().Sub(sess.CreatedAt))
			}
			break
		}
	}
	if e.clock.Now().Sub(sess.CreatedAt) < 12*time.Hour {
		t.Fatal("session outlived its lifetime")
	}
}

// Verifies: REQ-ACC-005
func TestTamperedSessionAndSignOutEverywhere(t *testing.T) {
	e := newEnv(t, nil)
	u, secret, _ := e.user(t, "dan@example.org", [2]string{auth.RoleClinician, "*"})
	s1, p1 := e.login(t, "dan@example.org", secret)
	s2, _ := e.login(t, "dan@example.org", secret)
	for _, tc := range []struct{ token, reason string }{
		{"", "no_credentials"},
		{"garbage", "session_malformed"},
		{s1.Token[:len(s1.Token)-1] + flip(s1.Token[len(s1.Token)-1]), "session_unknown"},
		{"vgs_" + strings.Repeat("A", 43), "session_unknown"},
	} {
		_, err := e.svc.Authenticate(e.ctx, auth.Credentials{SessionToken: tc.token})
		code := "unauthenticated"
		wantCode(t, "Authenticate("+tc.token+")", err, code, tc.reason)
	}
	if n := len(e.events(t, "auth.session.rejected")); n != 3 {
		t.Fatalf("auth.session.rejected events = %d, want 3 (no credentials at all is not an event)", n)
	}
	// Sign out one session; then everywhere.
	if err := e.svc.SignOut(e.ctx, p1, "r", "192.0.2.10"); err != nil {
		t.Fatal(err)
	}
	_, err := e.svc.Authenticate(e.ctx, auth.Credentials{SessionToken: s1.Token})
	wantCode(t, "Authenticate(signed out)", err, "session_expired", "session_ended")
	s3, _ := e.login(t, "dan@example.org", secret)
	n, err := e.svc.SignOutEverywhere(e.ctx, admin, u.ID)
	if err != nil || n != 2 {
		t.Fatalf("SignOutEverywhere = %d, %v; want 2 sessions ended", n, err)
	}
	for _, s := range []auth.Session{s2, s3} {
		_, err := e.svc.Authenticate(e.ctx, auth.Credentials{SessionToken: s.Token})
		wantCode(t, "Authenticate(after sign-out everywhere)", err, "session_expired", "session_ended")
	}
	// A disabled user's sessions end and they cannot sign in.
	s4, _ := e.login(t, "dan@example.org", secret)
	if err := e.svc.DisableUser(e.ctx, admin, u.ID); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.Authenticate(e.ctx, auth.Credentials{SessionToken: s4.Token})
	wantCode(t, "Authenticate(disabled user)", err, "session_expired", "session_ended")
	_, err = e.svc.Login(e.ctx, auth.LoginRequest{Email: "dan@example.org", Password: password, TOTPCode: e.code(t, secret)})
	wantCode(t, "Login(disabled user)", err, "invalid_credentials", "user_disabled")
}

func flip(c byte) string {
	if c == 'A' {
		return "B"
	}
	return "A"
}

// Verifies: REQ-ACC-005
func TestCookieAttributes(t *testing.T) {
	e := newEnv(t, nil)
	ck := e.svc.Cookie(auth.Session{Token: "vgs_x"})
	if !ck.HttpOnly || !ck.Secure || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/" || ck.Domain != "" ||
		!strings.HasPrefix(ck.Name, "__Host-") || !ck.Expires.IsZero() {
		t.Fatalf("Cookie = %+v, want __Host-, HttpOnly, Secure, SameSite=Strict, Path=/, no Domain, no expiry", ck)
	}
	if c := e.svc.ClearCookie(); c.MaxAge >= 0 || c.Name != ck.Name {
		t.Fatalf("ClearCookie = %+v, want MaxAge<0", c)
	}
}

// Verifies: REQ-ACC-006
func TestCSRF(t *testing.T) {
	e := newEnv(t, nil)
	_, secret, _ := e.user(t, "erin@example.org", [2]string{auth.RoleClinician, "*"})
	sess, p := e.login(t, "erin@example.org", secret)
	other, _ := e.login(t, "erin@example.org", secret)
	ck := e.svc.Cookie(sess)
	req := func(method, header, form string) *http.Request {
		var r *http.Request
		if form != "" {
			r = httptest.NewRequest(method, "/api/v1/alarms/x/ack", strings.NewReader(url.Values{auth.CSRFField: {form}}.Encode()))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		} else {
			r = httptest.NewRequest(method, "/api/v1/alarms/x/ack", nil)
		}
		r.AddCookie(ck)
		if header != "" {
			r.Header.Set(auth.CSRFHeader, header)
		}
		return r
	}
	good := auth.CSRFToken(sess.Token)
	for _, tc := range []struct {
		name   string
		r      *http.Request
		reason string
	}{
		{"GET without token", req(http.MethodGet, "", ""), ""},
		{"POST with header", req(http.MethodPost, good, ""), ""},
		{"POST with form field", req(http.MethodPost, "", good), ""},
		{"POST without token", req(http.MethodPost, "", ""), "csrf_missing"},
		{"DELETE with another session's token", req(http.MethodDelete, auth.CSRFToken(other.Token), ""), "csrf_mismatch"},
		{"PUT with a forged token", req(http.MethodPut, "AAAA", ""), "csrf_mismatch"},
	} {
		c := e.svc.CredentialsFrom(tc.r, "192.0.2.10", "req")
		if c.SessionToken != sess.Token {
			t.Fatalf("CredentialsFrom: cookie not read")
		}
		err := e.svc.CheckCSRF(e.ctx, tc.r, p, c)
		if tc.reason == "" && err != nil {
			t.Errorf("CheckCSRF(%s) = %v, want nil", tc.name, err)
		}
		if tc.reason != "" {
			wantCode(t, "CheckCSRF("+tc.name+")", err, "csrf_invalid", tc.reason)
		}
	}
	if got := e.events(t, "auth.csrf.rejected"); len(got) != 3 || got[0].ActorID != p.ID.String() {
		t.Fatalf("auth.csrf.rejected = %+v, want 3 events by %s", got, p.ID)
	}
	// A bearer-token request has no ambient credential: no CSRF token needed.
	r := httptest.NewRequest(http.MethodPost, "/api/v1/x", nil)
	r.Header.Set("Authorization", "Bearer vgt_abc")
	if err := e.svc.CheckCSRF(e.ctx, r, nil, e.svc.CredentialsFrom(r, "", "")); err != nil {
		t.Fatalf("CheckCSRF(bearer) = %v, want nil", err)
	}
}

// Verifies: REQ-ACC-007
func TestAPITokens(t *testing.T) {
	e := newEnv(t, nil)
	sa, err := e.svc.CreateServiceAccount(e.ctx, admin, "ci-pipeline")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{auth.RoleDeviceTechnician, auth.RoleQuality} {
		if err := e.svc.GrantRole(e.ctx, admin, auth.ServiceSubject(sa.ID), r, auth.AllDomains); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.svc.IssueAPIToken(e.ctx, admin, sa.ID, "x", []string{auth.RoleAdmin}, 0); !errorsIs(err, auth.ErrInvalid) {
		t.Fatalf("IssueAPIToken(role not held) = %v, want ErrInvalid", err)
	}
	tok, err := e.svc.IssueAPIToken(e.ctx, admin, sa.ID, "devices only", []string{auth.RoleDeviceTechnician}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var stored []byte
	if err := e.pool.QueryRow(e.ctx, "SELECT token_hash FROM auth_api_tokens WHERE id = $1", tok.ID).Scan(&stored); err != nil || strings.Contains(string(stored), tok.Token) {
		t.Fatalf("stored token = %x, %v; want only its hash", stored, err)
	}
	r := httptest.NewRequest(http.MethodPost, "/api/v1/devices", nil)
	r.Header.Set("Authorization", "Bearer "+tok.Token)
	p, err := e.svc.Authenticate(e.ctx, e.svc.CredentialsFrom(r, "192.0.2.77", "req-t"))
	if err != nil {
		t.Fatalf("Authenticate(token) = %v", err)
	}
	if p.ID != sa.ID || p.TokenID != tok.ID || p.Name != "ci-pipeline" || p.Actor().Kind != "service" || p.AuthMethod != auth.MethodAPIToken {
		t.Fatalf("Authenticate(token) = %+v", p)
	}
	// Scoped: the token may manage devices but not read the audit trail the account may read.
	if _, err := e.svc.Enforcer().Allow(p, "manage", auth.Target{Object: auth.ObjDevice}); err != nil {
		t.Fatalf("Allow(token, device manage) = %v", err)
	}
	if _, err := e.svc.Enforcer().Allow(p, "read", auth.Target{Object: auth.ObjAudit}); !errorsIs(err, auth.ErrForbidden) {
		t.Fatalf("Allow(token, audit read) = %v, want ErrForbidden", err)
	}
	var lastUsed *time.Time
	if err := e.pool.QueryRow(e.ctx, "SELECT last_used_at FROM auth_api_tokens WHERE id = $1", tok.ID).Scan(&lastUsed); err != nil || lastUsed == nil {
		t.Fatalf("last_used_at = %v, %v; want the use recorded", lastUsed, err)
	}
	// Expired, revoked, disabled account, unknown.
	e.clock.Add(25 * time.Hour)
	_, err = e.svc.Authenticate(e.ctx, auth.Credentials{BearerToken: tok.Token})
	wantCode(t, "Authenticate(expired token)", err, "unauthenticated", "token_expired")
	tok2, err := e.svc.IssueAPIToken(e.ctx, admin, sa.ID, "all", nil, 0)
	if err != nil || len(tok2.Roles) != 2 {
		t.Fatalf("IssueAPIToken(all roles) = %+v, %v", tok2, err)
	}
	if err := e.svc.RevokeAPIToken(e.ctx, admin, tok2.ID); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.Authenticate(e.ctx, auth.Credentials{BearerToken: tok2.Token})
	wantCode(t, "Authenticate(revoked token)", err, "unauthenticated", "token_revoked")
	tok3, _ := e.svc.IssueAPIToken(e.ctx, admin, sa.ID, "third", nil, 0)
	p3, err := e.svc.Authenticate(e.ctx, auth.Credentials{BearerToken: tok3.Token})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.svc.DisableServiceAccount(e.ctx, admin, sa.ID); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.Authenticate(e.ctx, auth.Credentials{BearerToken: tok3.Token})
	wantCode(t, "Authenticate(disabled account's token)", err, "unauthenticated", "token_revoked")
	if _, err := e.svc.Enforcer().Allow(p3, "manage", auth.Target{Object: auth.ObjDevice}); !errorsIs(err, auth.ErrForbidden) {
		t.Fatalf("Allow(revoked token's principal) = %v, want ErrForbidden (grants removed)", err)
	}
	_, err = e.svc.Authenticate(e.ctx, auth.Credentials{BearerToken: "vgt_" + strings.Repeat("x", 43)})
	wantCode(t, "Authenticate(unknown token)", err, "unauthenticated", "token_unknown")
	if got := e.events(t, "auth.token.rejected"); len(got) != 4 || got[0].ActorID != sa.ID.String() {
		t.Fatalf("auth.token.rejected = %+v, want 4, attributed to the account", got)
	}
}

// Background requests (a tile refreshed on a timer, X-Vigil-Background: 1) are authenticated
// but are not activity: a session only polled by them times out after the idle timeout,
// counted from the person's last own request.
// Verifies: REQ-ACC-042
func TestBackgroundRequestsDoNotPostponeIdleTimeout(t *testing.T) {
	e := newEnv(t, nil)
	_, secret, _ := e.user(t, "fay@example.org", [2]string{auth.RoleClinician, "*"})
	sess, _ := e.login(t, "fay@example.org", secret)

	req := httptest.NewRequest(http.MethodGet, "/ward/tiles/x", nil)
	req.AddCookie(e.svc.Cookie(sess))
	req.Header.Set(auth.BackgroundHeader, "1")
	bg := e.svc.CredentialsFrom(req, "192.0.2.10", "r-bg")
	if !bg.Background {
		t.Fatalf("CredentialsFrom(%s: 1).Background = false, want true", auth.BackgroundHeader)
	}
	req.Header.Del(auth.BackgroundHeader)
	fg := e.svc.CredentialsFrom(req, "192.0.2.10", "r-fg")
	if fg.Background {
		t.Fatal("CredentialsFrom(no header).Background = true, want false")
	}

	e.clock.Add(5 * time.Minute)
	if _, err := e.svc.Authenticate(e.ctx, fg); err != nil { // the person's last action
		t.Fatalf("Authenticate(foreground) = %v", err)
	}
	for range 14 { // a tile polls every minute for 14 minutes
		e.clock.Add(time.Minute)
		if _, err := e.svc.Authenticate(e.ctx, bg); err != nil {
			t.Fatalf("Authenticate(background, %s idle) = %v (%s)", e.clock.Now().Sub(t0), err, auth.ReasonOf(err))
		}
	}
	e.clock.Add(time.Minute) // 15 minutes since the last foreground request
	_, err := e.svc.Authenticate(e.ctx, bg)
	wantCode(t, "Authenticate(background, 15 min after the last own request)", err, "session_expired", "session_idle_timeout")

	// The same polling with a foreground request in between keeps the session.
	sess, _ = e.login(t, "fay@example.org", secret)
	req = httptest.NewRequest(http.MethodGet, "/", nil)
	req.AddCookie(e.svc.Cookie(sess))
	fg = e.svc.CredentialsFrom(req, "192.0.2.10", "r-fg2")
	bg = fg
	bg.Background = true
	for i := range 30 {
		e.clock.Add(time.Minute)
		c := bg
		if i == 10 || i == 20 {
			c = fg
		}
		if _, err := e.svc.Authenticate(e.ctx, c); err != nil {
			t.Fatalf("Authenticate(minute %d) = %v (%s), want the session alive", i+1, err, auth.ReasonOf(err))
		}
	}
}
