package auth_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
)

// A real OpenID provider in-process: authtest.OP.

const redirectURL = "https://vigil.test/auth/oidc/callback"

// signInAtOP signs in at provider p as username, from the authorization URL to the redirect
// back to Vigil, and returns that redirect's query.
func signInAtOP(t *testing.T, p *authtest.OP, authURL, username string) url.Values {
	t.Helper()
	return p.SignIn(t, authtest.Browser(redirectURL, nil), authURL, username, redirectURL).Query()
}

func newRP(t *testing.T, e *env, p *authtest.OP, mod func(*auth.OIDCConfig)) *auth.RelyingParty {
	t.Helper()
	w := ward()
	cfg := auth.OIDCConfig{Issuer: p.Issuer, ClientID: "vigil", ClientSecret: "vigil-secret", RedirectURL: redirectURL,
		Scopes:  []string{"email", "profile", authtest.OPGroupsScope},
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
	provider := authtest.StartOP(t, redirectURL)
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
	q := signInAtOP(t, provider, flow.URL, "icu.nurse")
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
	q2 := signInAtOP(t, provider, flow2.URL, "icu.nurse")
	sess2, err := rp.Finish(e.ctx, auth.Callback{State: q2.Get("state"), Code: q2.Get("code"), CookieState: flow2.State})
	if err != nil || sess2.UserID != p.ID || e.svc.Enforcer().Version() != v {
		t.Fatalf("second Finish = %+v, %v (version %d→%d); want the same user, no policy change", sess2, err, v, e.svc.Enforcer().Version())
	}
	// The code is single use: replaying the callback fails (the state is gone).
	_, err = rp.Finish(e.ctx, auth.Callback{State: q2.Get("state"), Code: q2.Get("code"), CookieState: flow2.State})
	wantCode(t, "Finish(replayed callback)", err, "oidc_failed", "state_unknown")
	// A user whose groups map to no role is refused.
	flow3, _ := rp.Begin(e.ctx)
	q3 := signInAtOP(t, provider, flow3.URL, "visitor")
	_, err = rp.Finish(e.ctx, auth.Callback{State: q3.Get("state"), Code: q3.Get("code"), CookieState: flow3.State})
	wantCode(t, "Finish(no mapped role)", err, "oidc_failed", "no_role")
	ok := e.events(t, "auth.login.succeeded")
	if len(ok) != 2 || ok[0].ActorAuth != auth.MethodOIDC || ok[0].ActorID != p.ID.String() {
		t.Fatalf("auth.login.succeeded = %+v", ok)
	}
}

// Verifies: REQ-ACC-002
func TestOIDCRefusals(t *testing.T) {
	provider := authtest.StartOP(t, redirectURL)
	other := authtest.StartOP(t, redirectURL)
	c := &clock{t: time.Now()}
	e := newEnv(t, func(cfg *auth.Config) { cfg.Now = c.Now })
	rp := newRP(t, e, provider, nil)
	begin := func() (auth.Flow, url.Values) {
		c.t = time.Now()
		f, err := rp.Begin(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		return f, signInAtOP(t, provider, f.URL, "icu.nurse")
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
	rawFrom := func(p *authtest.OP, clientID, secret string) string {
		oc := oauth2.Config{ClientID: clientID, ClientSecret: secret, RedirectURL: redirectURL, Scopes: []string{"openid"},
			Endpoint: oauth2.Endpoint{AuthURL: p.Issuer + "/auth", TokenURL: p.Issuer + "/oauth/token"}}
		v := oauth2.GenerateVerifier()
		q := signInAtOP(t, p, oc.AuthCodeURL("s", oauth2.SetAuthURLParam("nonce", "n1"), oauth2.S256ChallengeOption(v)), "icu.nurse")
		tok, err := oc.Exchange(e.ctx, q.Get("code"), oauth2.VerifierOption(v))
		if err != nil {
			t.Fatalf("exchange at %s as %s: %v", p.Issuer, clientID, err)
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
