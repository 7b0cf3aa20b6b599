package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/server"
)

// wireAuth opens the auth service (users, sessions, tokens, the policy) for the server, and
// the OpenID Connect relying party when VIGIL_OIDC_ISSUER is set:
//
//	VIGIL_OIDC_ISSUER         the provider's issuer URL
//	VIGIL_OIDC_CLIENT_ID      Vigil's client id at the provider
//	VIGIL_OIDC_CLIENT_SECRET  its secret (or VIGIL_OIDC_CLIENT_SECRET_FILE)
//	VIGIL_OIDC_REDIRECT_URL   https://<vigil>/api/v1/auth/oidc/callback
//	VIGIL_OIDC_ROLES_CLAIM    the claim listing groups (default "groups")
//	VIGIL_OIDC_ROLE_MAP       JSON: [{"value":"icu-nurses","role":"clinician","domain":"ward:<id>"}, …]
//	VIGIL_OIDC_REQUIRE_AMR    comma-separated amr values of which the ID token must list one
//	VIGIL_OIDC_NAME           the provider's name on the portal's "Sign in with …" button
//
// and passkeys (WebAuthn) when VIGIL_WEBAUTHN_RP_ID is set:
//
//	VIGIL_WEBAUTHN_RP_ID      the relying party id: the portal's host name (vigil.hospital.example)
//	VIGIL_WEBAUTHN_ORIGINS    comma-separated origins of the portal (https://vigil.hospital.example)
//
// Session cookies are Secure (__Host-vigil_session) unless the server runs as `vigil demo` or
// VIGIL_SESSION_INSECURE=true (plain HTTP on loopback only).
func wireAuth(ctx context.Context, sys *system, rc runConfig, cfg *server.Config, ring *keys.Ring) error {
	insecure := rc.Demo || getenv(ctx, "VIGIL_SESSION_INSECURE") == "true"
	svc, err := auth.New(ctx, auth.Config{Pool: sys.pool, Sealer: ring.PHI(), Audit: sys.rec,
		Session: auth.SessionConfig{Insecure: insecure}, Listener: sys.listen})
	if err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	sys.auth = svc
	cfg.Auth = svc
	if rpID := getenv(ctx, "VIGIL_WEBAUTHN_RP_ID"); rpID != "" {
		var origins []string
		for _, o := range strings.Split(getenv(ctx, "VIGIL_WEBAUTHN_ORIGINS"), ",") {
			if o = strings.TrimSpace(o); o != "" {
				origins = append(origins, o)
			}
		}
		if len(origins) == 0 {
			return fmt.Errorf("passkeys: VIGIL_WEBAUTHN_ORIGINS is required with VIGIL_WEBAUTHN_RP_ID")
		}
		pk, err := svc.NewPasskeys(auth.WebAuthnConfig{RPID: rpID, Origins: origins})
		if err != nil {
			return fmt.Errorf("passkeys: %w", err)
		}
		cfg.Passkeys = pk
	}
	issuer := getenv(ctx, "VIGIL_OIDC_ISSUER")
	if issuer == "" {
		return nil
	}
	secret, err := secretEnv(ctx, "VIGIL_OIDC_CLIENT_SECRET")
	if err != nil {
		return err
	}
	oc := auth.OIDCConfig{Issuer: issuer, ClientID: getenv(ctx, "VIGIL_OIDC_CLIENT_ID"), ClientSecret: secret,
		RedirectURL: getenv(ctx, "VIGIL_OIDC_REDIRECT_URL"), RolesClaim: getenv(ctx, "VIGIL_OIDC_ROLES_CLAIM")}
	if m := getenv(ctx, "VIGIL_OIDC_ROLE_MAP"); m != "" {
		if err := json.Unmarshal([]byte(m), &oc.RoleMap); err != nil {
			return fmt.Errorf("VIGIL_OIDC_ROLE_MAP: %w", err)
		}
	}
	if v := getenv(ctx, "VIGIL_OIDC_REQUIRE_AMR"); v != "" {
		oc.RequireAMR = strings.Split(v, ",")
	}
	rp, err := svc.NewRelyingParty(ctx, oc)
	if err != nil {
		return fmt.Errorf("oidc: %w", err)
	}
	cfg.OIDC = rp
	return nil
}

// oidcName is the identity provider's name on the portal's sign-in button (VIGIL_OIDC_NAME,
// default "single sign-on"); empty when single sign-on is off.
func oidcName(ctx context.Context, cfg server.Config) string {
	if cfg.OIDC == nil {
		return ""
	}
	if n := getenv(ctx, "VIGIL_OIDC_NAME"); n != "" {
		return n
	}
	return "single sign-on"
}
