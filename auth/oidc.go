package auth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"golang.org/x/oauth2"

	"github.com/vigilhealth/vigil/audit"
)

// OIDCConfig configures sign-in through a hospital's OpenID provider (Entra ID, Okta,
// Keycloak, …) as a relying party: authorization code flow with PKCE (S256), state and nonce.
type OIDCConfig struct {
	// Issuer is the provider's issuer URL (discovery at <Issuer>/.well-known/openid-configuration).
	// Required.
	Issuer string
	// ClientID and ClientSecret are Vigil's client registration at the provider. ClientID is
	// required; the secret comes from the environment or a file, never a flag.
	ClientID     string
	ClientSecret string
	// RedirectURL is Vigil's callback as registered at the provider, e.g.
	// https://vigil.example/auth/oidc/callback. Required.
	RedirectURL string
	// Scopes requested besides "openid". Default: email, profile, and the RolesClaim's name
	// when it is "groups".
	Scopes []string
	// RolesClaim is the ID-token claim that lists the user's groups or roles (a string or an
	// array of strings). Default "groups".
	RolesClaim string
	// RoleMap maps claim values to Vigil roles. A user whose claims map to no role is refused
	// (reason no_role). The mapping is configuration: the IdP stays the authority on who is in
	// which group, Vigil on what a role may do. At each sign-in the user's OIDC-derived grants
	// are replaced by the mapped ones (a policy change, audited, only when they differ).
	RoleMap []ClaimRole
	// RequireAMR, when set, refuses ID tokens whose "amr" claim lists none of these methods
	// (e.g. ["mfa", "otp", "hwk"]): the provider must have used a second factor.
	RequireAMR []string
	// FlowTTL is how long a sign-in may take between Begin and Callback. Default 10 minutes.
	FlowTTL time.Duration
	// HTTPClient reaches the provider. Default http.DefaultClient with a 10 s timeout.
	HTTPClient *http.Client
}

// ClaimRole maps one value of the roles claim to a role in a domain.
type ClaimRole struct {
	Value  string `json:"value" yaml:"value"`   // e.g. "icu-nurses"
	Role   string `json:"role" yaml:"role"`     // e.g. "clinician"
	Domain Domain `json:"domain" yaml:"domain"` // "*" or "ward:<id>"
}

// RelyingParty signs users in through an OpenID provider.
type RelyingParty struct {
	s        *Service
	cfg      OIDCConfig
	provider *oidc.Provider
	oauth    oauth2.Config
	verifier *oidc.IDTokenVerifier
}

// NewRelyingParty discovers the provider and returns the relying party.
func (s *Service) NewRelyingParty(ctx context.Context, cfg OIDCConfig) (*RelyingParty, error) {
	if cfg.Issuer == "" || cfg.ClientID == "" || cfg.RedirectURL == "" {
		return nil, errors.New("auth: OIDCConfig.Issuer, ClientID and RedirectURL are required")
	}
	if cfg.RolesClaim == "" {
		cfg.RolesClaim = "groups"
	}
	if cfg.Scopes == nil {
		cfg.Scopes = []string{"email", "profile"}
		if cfg.RolesClaim == "groups" {
			cfg.Scopes = append(cfg.Scopes, "groups")
		}
	}
	if cfg.FlowTTL <= 0 {
		cfg.FlowTTL = 10 * time.Minute
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	for _, m := range cfg.RoleMap {
		ri, ok := LookupRole(m.Role)
		if !ok || m.Value == "" {
			return nil, fmt.Errorf("auth: OIDC role map %q → %q: unknown role or empty value", m.Value, m.Role)
		}
		if _, isWard := m.Domain.Ward(); m.Domain != AllDomains && (!isWard || !ri.Clinical) {
			return nil, fmt.Errorf("auth: OIDC role map %q → %s in %q: domain must be \"*\" (or ward:<id> for clinical roles)", m.Value, m.Role, m.Domain)
		}
	}
	pctx := oidc.ClientContext(ctx, cfg.HTTPClient)
	p, err := oidc.NewProvider(pctx, cfg.Issuer)
	if err != nil {
		return nil, fmt.Errorf("auth: OIDC discovery at %s: %w", cfg.Issuer, err)
	}
	rp := &RelyingParty{s: s, cfg: cfg, provider: p}
	rp.oauth = oauth2.Config{ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret, RedirectURL: cfg.RedirectURL,
		Endpoint: p.Endpoint(), Scopes: append([]string{oidc.ScopeOpenID}, cfg.Scopes...)}
	rp.verifier = p.Verifier(&oidc.Config{ClientID: cfg.ClientID, Now: s.cfg.Now})
	return rp, nil
}

// FlowCookieName is the cookie that binds a sign-in's state to the browser that began it.
const FlowCookieName = "vigil_oidc_state"

// Flow is a sign-in begun: send the browser to URL with the flow cookie set.
type Flow struct {
	URL   string
	State string
}

// Begin starts a sign-in: a fresh state, nonce and PKCE verifier, kept server-side (single
// use, Config.FlowTTL), and the provider's authorization URL.
func (rp *RelyingParty) Begin(ctx context.Context) (Flow, error) {
	st, err := rp.s.random(32)
	if err != nil {
		return Flow{}, err
	}
	nb, err := rp.s.random(32)
	if err != nil {
		return Flow{}, err
	}
	state, nonce := b64(st), b64(nb)
	verifier := oauth2.GenerateVerifier()
	now := rp.s.now()
	if _, err := rp.s.pool.Exec(ctx, `INSERT INTO auth_oidc_flows (state_hash, nonce, verifier, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)`,
		tokenHash(state), nonce, verifier, now, now.Add(rp.cfg.FlowTTL)); err != nil {
		return Flow{}, fmt.Errorf("oidc begin: %w", err)
	}
	// Flows nobody finished are removed on the way.
	if _, err := rp.s.pool.Exec(ctx, "DELETE FROM auth_oidc_flows WHERE expires_at < $1", now.Add(-time.Hour)); err != nil {
		return Flow{}, fmt.Errorf("oidc begin: %w", err)
	}
	u := rp.oauth.AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier))
	return Flow{URL: u, State: state}, nil
}

// FlowCookie is the cookie holding the flow's state. SameSite=Lax, because the provider's
// redirect back is a cross-site navigation (a Strict cookie would not be sent).
func (rp *RelyingParty) FlowCookie(f Flow) *http.Cookie {
	return &http.Cookie{Name: FlowCookieName, Value: f.State, Path: "/", MaxAge: int(rp.cfg.FlowTTL / time.Second),
		HttpOnly: true, Secure: !rp.s.cfg.Session.Insecure, SameSite: http.SameSiteLaxMode}
}

// Callback is what the provider's redirect brings back, and the flow cookie.
type Callback struct {
	State       string // query "state"
	Code        string // query "code"
	Error       string // query "error" (the provider refused)
	CookieState string // the flow cookie's value
	SourceAddr  string
	RequestID   string
}

// Claims are the identity claims Vigil uses.
type Claims struct {
	Subject       string   `json:"sub"`
	Email         string   `json:"email"`
	EmailVerified *bool    `json:"email_verified"`
	Name          string   `json:"name"`
	AMR           []string `json:"amr"`
}

// Finish completes a sign-in: it checks the state against the flow cookie and the stored flow
// (single use), exchanges the code with the PKCE verifier, verifies the ID token (signature,
// issuer, audience, expiry under Config.Now, nonce), maps the roles claim, finds or creates the
// user by (issuer, subject), and opens a session ("auth.login.succeeded", method oidc). Any
// failure is ErrOIDC with a reason in the audit event "auth.login.failed": provider_error,
// state_mismatch, state_unknown, state_expired, code_exchange_failed, id_token_missing,
// issuer_mismatch, audience_mismatch, id_token_expired, id_token_invalid, nonce_mismatch,
// mfa_missing, no_role, email_in_use, profile_invalid, user_disabled.
func (rp *RelyingParty) Finish(ctx context.Context, cb Callback) (Session, error) {
	o := Origin{RequestID: cb.RequestID, SourceAddr: cb.SourceAddr}
	failed := func(user uuid.UUID, reason string) (Session, error) {
		return Session{}, rp.s.auditLoginFailure(ctx, o, user, MethodOIDC, ErrOIDC, reason)
	}
	if cb.Error != "" {
		return failed(uuid.Nil, "provider_error")
	}
	if cb.State == "" || cb.CookieState == "" || !constantTimeEqual(cb.State, cb.CookieState) {
		return failed(uuid.Nil, "state_mismatch")
	}
	var nonce, verifier string
	var expires time.Time
	err := rp.s.pool.QueryRow(ctx, "DELETE FROM auth_oidc_flows WHERE state_hash = $1 RETURNING nonce, verifier, expires_at",
		tokenHash(cb.State)).Scan(&nonce, &verifier, &expires)
	if errors.Is(err, pgx.ErrNoRows) {
		return failed(uuid.Nil, "state_unknown")
	}
	if err != nil {
		return Session{}, fmt.Errorf("oidc callback: %w", err)
	}
	if !rp.s.now().Before(expires) {
		return failed(uuid.Nil, "state_expired")
	}
	hctx := oidc.ClientContext(ctx, rp.cfg.HTTPClient)
	tok, err := rp.oauth.Exchange(hctx, cb.Code, oauth2.VerifierOption(verifier))
	if err != nil {
		return failed(uuid.Nil, "code_exchange_failed")
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return failed(uuid.Nil, "id_token_missing")
	}
	idt, reason := rp.verify(hctx, raw, nonce)
	if reason != "" {
		return failed(uuid.Nil, reason)
	}
	var c Claims
	all := map[string]any{}
	if err := idt.Claims(&c); err != nil {
		return failed(uuid.Nil, "id_token_invalid")
	}
	_ = idt.Claims(&all)
	if c.Email == "" || c.Name == "" {
		// Providers put profile claims in the userinfo response rather than the ID token.
		if ui, err := rp.provider.UserInfo(hctx, oauth2.StaticTokenSource(tok)); err == nil && ui.Subject == idt.Subject {
			var uc Claims
			if ui.Claims(&uc) == nil {
				c.Email = cmp(c.Email, uc.Email)
				c.Name = cmp(c.Name, uc.Name)
			}
		}
	}
	if len(rp.cfg.RequireAMR) > 0 && !slices.ContainsFunc(c.AMR, func(m string) bool { return slices.Contains(rp.cfg.RequireAMR, m) }) {
		return failed(uuid.Nil, "mfa_missing")
	}
	grants := rp.mapRoles(all[rp.cfg.RolesClaim])
	if len(grants) == 0 {
		return failed(uuid.Nil, "no_role")
	}
	user, reason, err := rp.user(ctx, o, idt.Issuer, idt.Subject, Profile{Email: c.Email, DisplayName: c.Name})
	if err != nil {
		return Session{}, fmt.Errorf("oidc callback: %w", err)
	}
	if reason != "" {
		return failed(user, reason)
	}
	if err := rp.syncRoles(ctx, o, user, grants); err != nil {
		return Session{}, fmt.Errorf("oidc callback: %w", err)
	}
	return rp.s.signIn(ctx, o, user, MethodOIDC, "", map[string]any{"issuer": idt.Issuer})
}

func cmp(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// verify checks an ID token and its nonce; it returns a reason code on failure.
func (rp *RelyingParty) verify(ctx context.Context, raw, nonce string) (*oidc.IDToken, string) {
	idt, err := rp.verifier.Verify(ctx, raw)
	if err != nil {
		var exp *oidc.TokenExpiredError
		msg := err.Error()
		switch {
		case errors.As(err, &exp):
			return nil, "id_token_expired"
		case strings.Contains(msg, "different provider"):
			return nil, "issuer_mismatch"
		case strings.Contains(msg, "audience"):
			return nil, "audience_mismatch"
		case unverifiedIssuer(raw) != rp.cfg.Issuer:
			// The signature check fails first for a token of another provider; say why.
			return nil, "issuer_mismatch"
		}
		return nil, "id_token_invalid"
	}
	if !constantTimeEqual(idt.Nonce, nonce) {
		return nil, "nonce_mismatch"
	}
	return idt, ""
}

// unverifiedIssuer reads the "iss" claim of a JWT without verifying it (diagnostics only).
func unverifiedIssuer(raw string) string {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return ""
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var c struct {
		Iss string `json:"iss"`
	}
	if json.Unmarshal(b, &c) != nil {
		return ""
	}
	return c.Iss
}

// mapRoles maps the roles claim (a string or a list of strings) through RoleMap.
func (rp *RelyingParty) mapRoles(claim any) []RoleGrant {
	var values []string
	switch v := claim.(type) {
	case string:
		values = []string{v}
	case []any:
		for _, x := range v {
			if s, ok := x.(string); ok {
				values = append(values, s)
			}
		}
	}
	var out []RoleGrant
	for _, m := range rp.cfg.RoleMap {
		if slices.Contains(values, m.Value) {
			g := RoleGrant{Role: m.Role, Domain: m.Domain}
			if !slices.Contains(out, g) {
				out = append(out, g)
			}
		}
	}
	return out
}

// user finds the user of (issuer, subject), creating them at first sign-in.
func (rp *RelyingParty) user(ctx context.Context, o Origin, issuer, subject string, p Profile) (uuid.UUID, string, error) {
	idx, err := rp.s.oidcIndex(ctx, issuer, subject)
	if err != nil {
		return uuid.Nil, "", err
	}
	var id uuid.UUID
	var status string
	err = rp.s.pool.QueryRow(ctx, "SELECT id, status FROM auth_users WHERE oidc_index = $1", idx).Scan(&id, &status)
	switch {
	case err == nil && status != StatusActive:
		return id, "user_disabled", nil
	case err == nil:
		return id, "", nil
	case !errors.Is(err, pgx.ErrNoRows):
		return uuid.Nil, "", err
	}
	if p.Email == "" {
		p.Email = "oidc-" + uuid.NewString()[:8] + "@invalid"
	}
	o.Actor = audit.Actor{Kind: audit.ActorService, ID: "auth", AuthMethod: "oidc"}
	u, err := rp.s.createUser(ctx, o, p, idx)
	if errors.Is(err, ErrConflict) {
		// A local account has this e-mail address: never link by e-mail (the provider may not
		// have verified it); an administrator resolves it.
		return uuid.Nil, "email_in_use", nil
	}
	if errors.Is(err, ErrInvalid) {
		return uuid.Nil, "profile_invalid", nil
	}
	if err != nil {
		return uuid.Nil, "", err
	}
	return u.ID, "", nil
}

// syncRoles makes the user's OIDC-sourced grants equal want (one audited policy change, only
// when they differ).
func (rp *RelyingParty) syncRoles(ctx context.Context, o Origin, user uuid.UUID, want []RoleGrant) error {
	sub := UserSubject(user)
	var have []RoleGrant
	for _, g := range rp.s.enf.RolesOf(sub) {
		if g.Source == "oidc" {
			have = append(have, RoleGrant{Role: g.Role, Domain: g.Domain})
		}
	}
	same := len(have) == len(want)
	for _, g := range want {
		same = same && slices.Contains(have, g)
	}
	if same {
		return nil
	}
	o.Actor = audit.Actor{Kind: audit.ActorService, ID: "auth", AuthMethod: "oidc"}
	detail := map[string]any{"subject": sub, "roles": want}
	return rp.s.changePolicy(ctx, o, "oidc_roles_synced", detail, []rowScope{grantsOf(sub)}, func(tx pgx.Tx, v int64, d *policyDelta) error {
		var err error
		if d.Revoked, err = deleteGrants(ctx, tx, "DELETE FROM auth_policy_rules WHERE ptype = 'g' AND v0 = $1 AND source = 'oidc'", sub); err != nil {
			return err
		}
		for _, g := range want {
			tag, err := tx.Exec(ctx, `INSERT INTO auth_policy_rules (ptype, v0, v1, v2, source, version) VALUES ('g', $1, $2, $3, 'oidc', $4)
				ON CONFLICT DO NOTHING`, sub, g.Role, string(g.Domain), v)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 1 {
				d.Grants = append(d.Grants, RoleGrant{Subject: sub, Role: g.Role, Domain: g.Domain, Source: "oidc"})
			}
		}
		return nil
	})
}
