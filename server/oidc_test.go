package server

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/text/language"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// A real OpenID provider in-process (zitadel/oidc's OpenID-certified op package with its example
// storage and login form), as in package auth's tests, with a "groups" claim.

type opUsers struct{ users map[string]*storage.User }

func (u opUsers) GetUserByID(id string) *storage.User { return u.users[id] }
func (u opUsers) GetUserByUsername(name string) *storage.User {
	for _, x := range u.users {
		if x.Username == name {
			return x
		}
	}
	return nil
}
func (u opUsers) ExampleClientID() string { return "service" }

type opStorage struct {
	*storage.Storage
	groups map[string][]string
}

func (s *opStorage) SetUserinfoFromRequest(ctx context.Context, ui *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	if err := s.Storage.SetUserinfoFromRequest(ctx, ui, req, scopes); err != nil {
		return err
	}
	if slices.Contains(scopes, storage.CustomScope) {
		ui.AppendClaims("groups", s.groups[req.GetSubject()])
	}
	return nil
}

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
	opHandler := &lateHandler{}
	opSrv := httptest.NewServer(opHandler)
	t.Cleanup(opSrv.Close)
	users := opUsers{users: map[string]*storage.User{
		"u-icu": {ID: "u-icu", Username: "icu.nurse", Password: "op-password", FirstName: "Ida", LastName: "Nurse",
			Email: "ida.nurse@hospital.example", EmailVerified: true, PreferredLanguage: language.English},
	}}
	vigilHandler := &lateHandler{}
	ts := httptest.NewServer(vigilHandler)
	t.Cleanup(ts.Close)
	callback := ts.URL + "/api/v1/auth/oidc/callback"
	st := &opStorage{Storage: storage.NewStorageWithClients(users, map[string]*storage.Client{
		"vigil": storage.WebClient("vigil", "vigil-secret", callback)}), groups: map[string][]string{"u-icu": {"icu-nurses"}}}
	opHandler.set(exampleop.SetupServer(opSrv.URL, st, nil, false))

	pool := testdb.New(t)
	rec := audittest.Recorder(t, pool, nil)
	authSvc := authtest.New(t, pool, rec, keystest.LocalRing(t, nil).PHI(), nil, nil)
	ctx := context.Background()
	ward := auth.WardDomain([16]byte{1})
	rp, err := authSvc.NewRelyingParty(ctx, auth.OIDCConfig{Issuer: opSrv.URL, ClientID: "vigil", ClientSecret: "vigil-secret",
		RedirectURL: callback, Scopes: []string{"email", "profile", storage.CustomScope},
		RoleMap: []auth.ClaimRole{{Value: "icu-nurses", Role: auth.RoleClinician, Domain: ward}}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Pool: pool, Recorder: rec, Auth: authSvc, OIDC: rp})
	if err != nil {
		t.Fatal(err)
	}
	vigilHandler.set(s.Handler())

	// 1. Vigil sends the browser to the provider, with the flow cookie.
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Timeout: 10 * time.Second, CheckRedirect: func(r *http.Request, _ []*http.Request) error {
		if strings.HasPrefix(r.URL.String(), callback) {
			return http.ErrUseLastResponse // stop at the redirect back to Vigil
		}
		return nil
	}}
	resp, err := browser.Get(ts.URL + "/api/v1/auth/oidc/login")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	id := resp.Request.URL.Query().Get("authRequestID")
	if resp.StatusCode != http.StatusOK || id == "" || !strings.HasPrefix(resp.Request.URL.String(), opSrv.URL) {
		t.Fatalf("GET /auth/oidc/login led to %s (%d), want the provider's login form", resp.Request.URL, resp.StatusCode)
	}
	// 2. The user signs in at the provider, which redirects back to Vigil's callback.
	login := *resp.Request.URL
	login.RawQuery = ""
	resp, err = browser.PostForm(login.String(), url.Values{"username": {"icu.nurse"}, "password": {"op-password"}, "id": {id}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	back, err := resp.Location()
	if err != nil || !strings.HasPrefix(back.String(), callback) {
		t.Fatalf("login form answered %d %v, want a redirect to the callback", resp.StatusCode, back)
	}
	// A callback with another state is refused.
	bad := *back
	q := bad.Query()
	q.Set("state", "forged-state")
	bad.RawQuery = q.Encode()
	resp, err = browser.Get(bad.String())
	if err != nil {
		t.Fatal(err)
	}
	if e := decodeError(t, resp.Body); resp.StatusCode != http.StatusUnauthorized || e.Code != "oidc_failed" {
		t.Errorf("callback with a forged state = %d %s, want 401 oidc_failed", resp.StatusCode, e.Code)
	}
	resp.Body.Close()
	// The forged callback cleared the flow cookie: begin again and follow the real callback.
	resp, err = browser.Get(ts.URL + "/api/v1/auth/oidc/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	id = resp.Request.URL.Query().Get("authRequestID")
	login = *resp.Request.URL
	login.RawQuery = ""
	resp, err = browser.PostForm(login.String(), url.Values{"username": {"icu.nurse"}, "password": {"op-password"}, "id": {id}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	back, _ = resp.Location()
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
