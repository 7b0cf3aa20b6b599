package server

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// lateHandler serves h once it is set (a server whose URL is needed to build its handler).
type lateHandler struct {
	mu sync.Mutex
	h  http.Handler
}

func (l *lateHandler) set(h http.Handler) { l.mu.Lock(); l.h = h; l.mu.Unlock() }
func (l *lateHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	l.mu.Lock()
	h := l.h
	l.mu.Unlock()
	h.ServeHTTP(w, r)
}

// Single sign-on through the server's routes, end to end over real HTTP: GET
// /auth/oidc/login redirects to the provider with the flow cookie set; the provider's login
// form redirects back to /auth/oidc/callback, which answers the session (cookie and CSRF token)
// of a user whose roles come from the groups claim; the session then reaches the API. A
// callback whose state does not match the flow cookie answers 401 oidc_failed.
// Verifies: REQ-ACC-002, REQ-ACC-028
func TestOIDCSignInThroughRoutes(t *testing.T) {
	t.Parallel()
	vigilHandler := &lateHandler{}
	ts := httptest.NewServer(vigilHandler)
	t.Cleanup(ts.Close)
	callback := ts.URL + "/api/v1/auth/oidc/callback"
	op := authtest.StartOP(t, callback)

	pool := testdb.New(t)
	rec := audittest.Recorder(t, pool, nil)
	authSvc := authtest.New(t, pool, rec, keystest.LocalRing(t, nil).PHI(), nil, nil)
	ctx := context.Background()
	ward := auth.WardDomain([16]byte{1})
	rp, err := authSvc.NewRelyingParty(ctx, auth.OIDCConfig{Issuer: op.Issuer, ClientID: "vigil", ClientSecret: "vigil-secret",
		RedirectURL: callback, Scopes: []string{"email", "profile", authtest.OPGroupsScope},
		RoleMap: []auth.ClaimRole{{Value: "icu-nurses", Role: auth.RoleClinician, Domain: ward}}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Pool: pool, Recorder: rec, Auth: authSvc, OIDC: rp})
	if err != nil {
		t.Fatal(err)
	}
	vigilHandler.set(s.Handler())

	// 1. Vigil sends the browser to the provider, with the flow cookie; 2. the user signs in at
	// the provider, which redirects back to Vigil's callback.
	browser := authtest.Browser(callback, nil)
	back := op.SignIn(t, browser, ts.URL+"/api/v1/auth/oidc/login", "icu.nurse", callback)
	// A callback with another state is refused.
	bad := *back
	q := bad.Query()
	q.Set("state", "forged-state")
	bad.RawQuery = q.Encode()
	resp, err := browser.Get(bad.String())
	if err != nil {
		t.Fatal(err)
	}
	if e := decodeError(t, resp.Body); resp.StatusCode != http.StatusUnauthorized || e.Code != "oidc_failed" {
		t.Errorf("callback with a forged state = %d %s, want 401 oidc_failed", resp.StatusCode, e.Code)
	}
	resp.Body.Close()
	// The forged callback cleared the flow cookie: begin again and follow the real callback.
	back = op.SignIn(t, browser, ts.URL+"/api/v1/auth/oidc/login", "icu.nurse", callback)
	// 3. The callback opens the session.
	resp, err = browser.Get(back.String())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"auth_method":"oidc"`) || !strings.Contains(string(b), "csrf_token") {
		t.Fatalf("GET callback = %d %s, want 200 with an oidc session", resp.StatusCode, b)
	}
	// 4. The session reaches the API (the jar sends the cookie back over plain HTTP: Insecure).
	resp, err = browser.Get(ts.URL + "/api/v1/auth/me")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "ida.nurse@hospital.example") || !strings.Contains(string(b), `"role":"clinician"`) {
		t.Errorf("GET /auth/me after OIDC sign-in = %d %s, want the provider's user with the mapped role", resp.StatusCode, b)
	}
}
