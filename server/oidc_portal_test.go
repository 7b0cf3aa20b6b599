package server

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"golang.org/x/text/language"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys/keystest"
	"github.com/vigilhealth/vigil/portal"
)

// htmlTransport sends every request as a browser navigating does (Accept: text/html).
type htmlTransport struct{}

func (htmlTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Accept", "text/html,application/xhtml+xml")
	return http.DefaultTransport.RoundTrip(r)
}

// The portal's "Sign in with <IdP>" button: a browser that went through the provider comes
// back from the callback to the portal (303 to /) with its session cookie, and the portal
// shows it signed in.
// Verifies: REQ-POR-039
func TestOIDCSignInToThePortal(t *testing.T) {
	t.Parallel()
	opHandler := &lateHandler{}
	opSrv := httptest.NewServer(opHandler)
	t.Cleanup(opSrv.Close)
	users := opUsers{users: map[string]*storage.User{
		"u-q": {ID: "u-q", Username: "q.officer", Password: "op-password", FirstName: "Quinn", LastName: "Officer",
			Email: "quinn@hospital.example", EmailVerified: true, PreferredLanguage: language.English},
	}}
	vigilHandler := &lateHandler{}
	ts := httptest.NewServer(vigilHandler)
	t.Cleanup(ts.Close)
	callback := ts.URL + "/api/v1/auth/oidc/callback"
	st := &opStorage{Storage: storage.NewStorageWithClients(users, map[string]*storage.Client{
		"vigil": storage.WebClient("vigil", "vigil-secret", callback)}), groups: map[string][]string{"u-q": {"quality"}}}
	opHandler.set(exampleop.SetupServer(opSrv.URL, st, nil, false))

	pool := testdb.New(t)
	rec := audittest.Recorder(t, pool, nil)
	ring := keystest.LocalRing(t, nil)
	authSvc := authtest.New(t, pool, rec, ring.PHI(), nil, nil)
	ctx := context.Background()
	rp, err := authSvc.NewRelyingParty(ctx, auth.OIDCConfig{Issuer: opSrv.URL, ClientID: "vigil", ClientSecret: "vigil-secret",
		RedirectURL: callback, Scopes: []string{"email", "profile", storage.CustomScope},
		RoleMap: []auth.ClaimRole{{Value: "quality", Role: auth.RoleQuality, Domain: auth.AllDomains}}})
	if err != nil {
		t.Fatal(err)
	}
	cs, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: ring.PHI()})
	if err != nil {
		t.Fatal(err)
	}
	p, err := portal.New(portal.Config{Auth: authSvc, Core: cs, Recorder: rec, OIDCName: "Hospital SSO"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Pool: pool, Recorder: rec, Auth: authSvc, OIDC: rp, Core: cs, Portal: p})
	if err != nil {
		t.Fatal(err)
	}
	vigilHandler.set(s.Handler())

	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Transport: htmlTransport{}, Timeout: 10 * time.Second, CheckRedirect: func(r *http.Request, _ []*http.Request) error {
		if strings.HasPrefix(r.URL.String(), callback) {
			return http.ErrUseLastResponse
		}
		return nil
	}}
	resp, err := browser.Get(ts.URL + "/api/v1/auth/oidc/login") // the button's link
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	id := resp.Request.URL.Query().Get("authRequestID")
	login := *resp.Request.URL
	login.RawQuery = ""
	resp, err = browser.PostForm(login.String(), url.Values{"username": {"q.officer"}, "password": {"op-password"}, "id": {id}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	back, err := resp.Location()
	if err != nil || !strings.HasPrefix(back.String(), callback) {
		t.Fatalf("login form answered %d %v, want a redirect to the callback", resp.StatusCode, back)
	}
	browser.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err = browser.Get(back.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		t.Fatalf("callback for a browser = %d %q, want 303 to /", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, err = browser.Get(ts.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `<form class="signout"`) || !strings.Contains(string(b), `href="/admin"`) {
		t.Errorf("the portal after single sign-on = %d:\n%s", resp.StatusCode, b)
	}
}
