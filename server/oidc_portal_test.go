package server

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

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
	vigilHandler := &lateHandler{}
	ts := httptest.NewServer(vigilHandler)
	t.Cleanup(ts.Close)
	callback := ts.URL + "/api/v1/auth/oidc/callback"
	op := authtest.StartOP(t, callback)

	pool := testdb.New(t)
	rec := audittest.Recorder(t, pool, nil)
	ring := keystest.LocalRing(t, nil)
	authSvc := authtest.New(t, pool, rec, ring.PHI(), nil, nil)
	ctx := context.Background()
	rp, err := authSvc.NewRelyingParty(ctx, auth.OIDCConfig{Issuer: op.Issuer, ClientID: "vigil", ClientSecret: "vigil-secret",
		RedirectURL: callback, Scopes: []string{"email", "profile", authtest.OPGroupsScope},
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

	browser := authtest.Browser(callback, htmlTransport{})
	back := op.SignIn(t, browser, ts.URL+"/api/v1/auth/oidc/login", "q.officer", callback) // the button's link
	browser.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := browser.Get(back.String())
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
