package auth_test

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
	"golang.org/x/oauth2"
	"golang.org/x/text/language"

	"github.com/vigilhealth/vigil/auth"
)

// A real OpenID provider in-process: zitadel/oidc's OpenID-certified op package with its
// example storage and login form, plus a "groups" claim for the users' groups.

const redirectURL = "https://vigil.test/auth/oidc/callback"

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

// SetUserinfoFromRequest adds the groups claim to ID tokens when the client asks for the
// provider's custom scope (the example client allows only that one besides the standard ones).
func (s *opStorage) SetUserinfoFromRequest(ctx context.Context, ui *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	if err := s.Storage.SetUserinfoFromRequest(ctx, ui, req, scopes); err != nil {
		return err
	}
	if slices.Contains(scopes, storage.CustomScope) {
		ui.AppendClaims("groups", s.groups[req.GetSubject()])
	}
	return nil
}

type testOP struct {
	srv    *httptest.Server
	issuer string
}

func startOP(t *testing.T) *testOP {
	t.Helper()
	var mu sync.Mutex
	var h http.Handler
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hh := h
		mu.Unlock()
		hh.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	users := opUsers{users: map[string]*storage.User{
		"u-icu": {ID: "u-icu", Username: "icu.nurse", Password: "op-password", FirstName: "Ida", LastName: "Nurse",
			Email: "ida.nurse@hospital.example", EmailVerified: true, PreferredLanguage: language.English},
		"u-none": {ID: "u-none", Username: "visitor", Password: "op-password", FirstName: "Vic", LastName: "Visitor",
			Email: "vic@hospital.example", EmailVerified: true, PreferredLanguage: language.English},
	}}
	clients := map[string]*storage.Client{
		"vigil": storage.WebClient("vigil", "vigil-secret", redirectURL),
		"other": storage.WebClient("other", "other-secret", redirectURL),
	}
	st := &opStorage{Storage: storage.NewStorageWithClients(users, clients), groups: map[string][]string{"u-icu": {"icu-nurses", "staff"}, "u-none": {"staff"}}}
	router := exampleop.SetupServer(srv.URL, st, nil, false)
	mu.Lock()
	h = router
	mu.Unlock()
	return &testOP{srv: srv, issuer: srv.URL}
}

// signInAtOP drives the provider's login form like a browser, from the authorization URL to
// the redirect back to Vigil, and returns that redirect's query.
func signInAtOP(t *testing.T, authURL, username string) url.Values {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 10 * time.Second, CheckRedirect: func(r *http.Request, _ []*http.Request) error {
		if strings.HasPrefix(r.URL.String(), redirectURL) {
			return http.ErrUseLastResponse
		}
		return nil
	}}
	resp, err := c.Get(authURL)
	if err != nil {
		t.Fatalf("GET authorization URL: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	id := resp.Request.URL.Query().Get("authRequestID")
	if resp.StatusCode != http.StatusOK || id == "" {
		t.Fatalf("authorization URL led to %s (%d), want the login form", resp.Request.URL, resp.StatusCode)
	}
	login := *resp.Request.URL
	login.RawQuery = ""
	resp, err = c.PostForm(login.String(), url.Values{"username": {username}, "password": {"op-password"}, "id": {id}})
	if err != nil {
		t.Fatalf("POST login form: %v", err)
	}
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil || !strings.HasPrefix(loc.String(), redirectURL) {
		t.Fatalf("login form answered %d %v, want a redirect to %s", resp.StatusCode, loc, redirectURL)
	}
	return loc.Query()
}

func newRP(t *testing.T, e *env, p *testOP, mod func(*auth.OIDCConfig)) *auth.RelyingParty {
	t.Helper()
	w := ward()
	cfg := auth.OIDCConfig{Issuer: p.issuer, ClientID: "vigil", ClientSecret: "vigil-secret", RedirectURL: redirectURL,
		Scopes:  []string{"email", "profile", storage.CustomScope},
		RoleMap: []auth.ClaimRole{{Value: "icu-nurses", Role: auth.RoleClinician, Domain: auth.WardDomain(w)}}}
	if mod != nil {
		mod(&cfg)
	}
	rp, err := e.svc.NewRelyingParty(e.ctx, cfg)
	if err != nil {
		t.Fatalf("NewRelyingParty = %v", err)
	}
	return rp
}

// Verifies: REQ-ACC-002
func TestOIDCSignInEndToEnd(t *testing.T) {
	provider := startOP(t)
	e := newEnv(t, func(c *auth.Config) { c.Now = time.Now }) // the provider stamps tokens with the real clock
	rp := newRP(t, e, provider, nil)
	flow, err := rp.Begin(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(flow.URL)
	if q := u.Query(); q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("nonce") == "" || q.Get("state") != flow.State {
		t.Fatalf("authorization URL %s lacks PKCE S256, nonce or state", flow.URL)
	}
	if ck := rp.FlowCookie(flow); !ck.HttpOnly || !ck.Secure || ck.SameSite != http.SameSiteLaxMode {
		t.Fatalf("FlowCookie = %+v", ck)
	}
	q := signInAtOP(t, flow.URL, "icu.nurse")
	sess, err := rp.Finish(e.ctx, auth.Callback{State: q.Get("state"), Code: q.Get("code"), CookieState: flow.State, SourceAddr: "192.0.2.5"})
	if err != nil {
		t.Fatalf("Finish = %v (%s)", err, auth.ReasonOf(err))
	}
	p, err := e.svc.Authenticate(e.ctx, auth.Credentials{SessionToken: sess.Token})
	if err != nil || p.AuthMethod != auth.MethodOIDC {
		t.Fatalf("Authenticate(OIDC session) = %+v, %v", p, err)
	}
	user, err := e.svc.User(e.ctx, p.ID)
	if err != nil || user.Profile.Email != "ida.nurse@hospital.example" || user.Profile.DisplayName != "Ida Nurse" || !user.OIDC {
		t.Fatalf("User = %+v, %v; want the provider's profile", user, err)
	}
	if len(user.Roles) != 1 || user.Roles[0].Role != auth.RoleClinician || user.Roles[0].Source != "oidc" {
		t.Fatalf("User roles = %+v, want clinician from the claim mapping", user.Roles)
	}
	// A second sign-in finds the same user; the roles are unchanged, so no policy change.
	v := e.svc.Enforcer().Version()
	flow2, _ := rp.Begin(e.ctx)
	q2 := signInAtOP(t, flow2.URL, "icu.nurse")
	sess2, err := rp.Finish(e.ctx, auth.Callback{State: q2.Get("state"), Code: q2.Get("code"), CookieState: flow2.State})
	if err != nil || sess2.UserID != p.ID || e.svc.Enforcer().Version() != v {
		t.Fatalf("second Finish = %+v, %v (version %d→%d); want the same user, no policy change", sess2, err, v, e.svc.Enforcer().Version())
	}
	// The code is single use: replaying the callback fails (the state is gone).
	_, err = rp.Finish(e.ctx, auth.Callback{State: q2.Get("state"), Code: q2.Get("code"), CookieState: flow2.State})
	wantCode(t, "Finish(replayed callback)", err, "oidc_failed", "state_unknown")
	// A user whose groups map to no role is refused.
	flow3, _ := rp.Begin(e.ctx)
	q3 := signInAtOP(t, flow3.URL, "visitor")
	_, err = rp.Finish(e.ctx, auth.Callback{State: q3.Get("state"), Code: q3.Get("code"), CookieState: flow3.State})
	wantCode(t, "Finish(no mapped role)", err, "oidc_failed", "no_role")
	ok := e.events(t, "auth.login.succeeded")
	if len(ok) != 2 || ok[0].ActorAuth != auth.MethodOIDC || ok[0].ActorID != p.ID.String() {
		t.Fatalf("auth.login.succeeded = %+v", ok)
	}
}

// Verifies: REQ-ACC-002
func TestOIDCRefusals(t *testing.T) {
	provider := startOP(t)
	other := startOP(t)
	c := &clock{t: time.Now()}
	e := newEnv(t, func(cfg *auth.Config) { cfg.Now = c.Now })
	rp := newRP(t, e, provider, nil)
	begin := func() (auth.Flow, url.Values) {
		c.t = time.Now()
		f, err := rp.Begin(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		return f, signInAtOP(t, f.URL, "icu.nurse")
	}

	f, q := begin()
	_, err := rp.Finish(e.ctx, auth.Callback{State: q.Get("state"), Code: q.Get("code"), CookieState: "another-browser"})
	wantCode(t, "Finish(state ≠ cookie)", err, "oidc_failed", "state_mismatch")
	_, err = rp.Finish(e.ctx, auth.Callback{State: "forged", Code: q.Get("code"), CookieState: "forged"})
	wantCode(t, "Finish(unknown state)", err, "oidc_failed", "state_unknown")
	_, err = rp.Finish(e.ctx, auth.Callback{Error: "access_denied", State: f.State, CookieState: f.State})
	wantCode(t, "Finish(provider error)", err, "oidc_failed", "provider_error")

	f, q = begin()
	_, err = rp.Finish(e.ctx, auth.Callback{State: f.State, Code: "forged-code", CookieState: f.State})
	wantCode(t, "Finish(forged code)", err, "oidc_failed", "code_exchange_failed")

	// The stored nonce differs from the one the provider put in the ID token (a token injected
	// from another sign-in).
	f, q = begin()
	if _, err := e.pool.Exec(e.ctx, "UPDATE auth_oidc_flows SET nonce = 'other-nonce'"); err != nil {
		t.Fatal(err)
	}
	_, err = rp.Finish(e.ctx, auth.Callback{State: f.State, Code: q.Get("code"), CookieState: f.State})
	wantCode(t, "Finish(nonce mismatch)", err, "oidc_failed", "nonce_mismatch")

	// An expired ID token: the relying party's clock is two hours on when it checks.
	f, q = begin()
	c.t = time.Now().Add(2 * time.Hour)
	if _, err := e.pool.Exec(e.ctx, "UPDATE auth_oidc_flows SET expires_at = $1", c.t.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	_, err = rp.Finish(e.ctx, auth.Callback{State: f.State, Code: q.Get("code"), CookieState: f.State})
	wantCode(t, "Finish(expired ID token)", err, "oidc_failed", "id_token_expired")

	// An expired flow.
	f, q = begin()
	c.t = time.Now().Add(11 * time.Minute)
	_, err = rp.Finish(e.ctx, auth.Callback{State: f.State, Code: q.Get("code"), CookieState: f.State})
	wantCode(t, "Finish(expired flow)", err, "oidc_failed", "state_expired")
	c.t = time.Now()

	// ID tokens from another provider, and for another client of the same provider, obtained
	// through real flows by another client.
	rawFrom := func(p *testOP, clientID, secret string) string {
		oc := oauth2.Config{ClientID: clientID, ClientSecret: secret, RedirectURL: redirectURL, Scopes: []string{"openid"},
			Endpoint: oauth2.Endpoint{AuthURL: p.issuer + "/auth", TokenURL: p.issuer + "/oauth/token"}}
		v := oauth2.GenerateVerifier()
		q := signInAtOP(t, oc.AuthCodeURL("s", oauth2.SetAuthURLParam("nonce", "n1"), oauth2.S256ChallengeOption(v)), "icu.nurse")
		tok, err := oc.Exchange(e.ctx, q.Get("code"), oauth2.VerifierOption(v))
		if err != nil {
			t.Fatalf("exchange at %s as %s: %v", p.issuer, clientID, err)
		}
		return tok.Extra("id_token").(string)
	}
	if got := rp.VerifyIDToken(e.ctx, rawFrom(other, "vigil", "vigil-secret"), "n1"); got != "issuer_mismatch" {
		t.Fatalf("verify(token of another issuer) = %q, want issuer_mismatch", got)
	}
	if got := rp.VerifyIDToken(e.ctx, rawFrom(provider, "other", "other-secret"), "n1"); got != "audience_mismatch" {
		t.Fatalf("verify(token for another client) = %q, want audience_mismatch", got)
	}
	good := rawFrom(provider, "vigil", "vigil-secret")
	if got := rp.VerifyIDToken(e.ctx, good, "n1"); got != "" {
		t.Fatalf("verify(good token) = %q, want \"\"", got)
	}
	if got := rp.VerifyIDToken(e.ctx, good[:len(good)-4]+"AAAA", "n1"); got != "id_token_invalid" {
		t.Fatalf("verify(tampered signature) = %q, want id_token_invalid", got)
	}
	failed := e.events(t, "auth.login.failed")
	if len(failed) != 7 {
		t.Fatalf("auth.login.failed events = %d, want 7", len(failed))
	}
	for _, f := range failed {
		if !strings.Contains(string(f.Payload), `"oidc_failed"`) {
			t.Fatalf("auth.login.failed payload %s, want code oidc_failed", f.Payload)
		}
	}
}
