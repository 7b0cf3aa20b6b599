package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/webauthn"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
)

// WebAuthnConfig configures passkeys (WebAuthn, github.com/go-webauthn/webauthn).
type WebAuthnConfig struct {
	// RPID is the relying party id: the portal's host name (e.g. "vigil.hospital.example").
	// Required.
	RPID string
	// RPDisplayName is shown by authenticators. Default "Vigil".
	RPDisplayName string
	// Origins are the portal's origins (e.g. "https://vigil.hospital.example"). Required.
	Origins []string
	// CeremonyTTL is how long a registration or sign-in ceremony may take. Default 5 minutes.
	CeremonyTTL time.Duration
}

// Passkeys registers passkeys for signed-in users and signs users in with them. User
// verification (PIN or biometric on the authenticator) is required, so a passkey is a
// multi-factor credential on its own and satisfies the second-factor requirement.
type Passkeys struct {
	s   *Service
	w   *webauthn.WebAuthn
	ttl time.Duration
}

// NewPasskeys returns the passkey ceremonies of the service.
func (s *Service) NewPasskeys(cfg WebAuthnConfig) (*Passkeys, error) {
	if cfg.RPDisplayName == "" {
		cfg.RPDisplayName = "Vigil"
	}
	if cfg.CeremonyTTL <= 0 {
		cfg.CeremonyTTL = 5 * time.Minute
	}
	w, err := webauthn.New(&webauthn.Config{RPID: cfg.RPID, RPDisplayName: cfg.RPDisplayName, RPOrigins: cfg.Origins,
		AuthenticatorSelection: protocol.AuthenticatorSelection{ResidentKey: protocol.ResidentKeyRequirementRequired,
			UserVerification: protocol.VerificationRequired}})
	if err != nil {
		return nil, fmt.Errorf("auth: webauthn: %w", err)
	}
	return &Passkeys{s: s, w: w, ttl: cfg.CeremonyTTL}, nil
}

// waUser is a user as go-webauthn sees them: the user handle is the user id's 16 bytes.
type waUser struct {
	id    uuid.UUID
	name  string
	creds []webauthn.Credential
}

func (u *waUser) WebAuthnID() []byte                         { return u.id[:] }
func (u *waUser) WebAuthnName() string                       { return u.name }
func (u *waUser) WebAuthnDisplayName() string                { return u.name }
func (u *waUser) WebAuthnCredentials() []webauthn.Credential { return u.creds }

func (pk *Passkeys) loadUser(ctx context.Context, id uuid.UUID) (*waUser, string, error) {
	u, err := pk.s.User(ctx, id)
	if err != nil {
		return nil, "", err
	}
	wu := &waUser{id: id, name: u.Profile.Email}
	rows, err := pk.s.pool.Query(ctx, "SELECT credential FROM auth_webauthn_credentials WHERE user_id = $1 ORDER BY created_at", id)
	if err != nil {
		return nil, "", err
	}
	var raw []byte
	if _, err := pgx.ForEachRow(rows, []any{&raw}, func() error {
		var c webauthn.Credential
		if err := json.Unmarshal(raw, &c); err != nil {
			return err
		}
		wu.creds = append(wu.creds, c)
		return nil
	}); err != nil {
		return nil, "", err
	}
	return wu, u.Status, nil
}

func (pk *Passkeys) saveCeremony(ctx context.Context, kind string, user *uuid.UUID, sd *webauthn.SessionData) (string, error) {
	b, err := pk.s.random(32)
	if err != nil {
		return "", err
	}
	id := "vgw_" + b64(b)
	data, err := json.Marshal(sd)
	if err != nil {
		return "", err
	}
	now := pk.s.now()
	if _, err := pk.s.pool.Exec(ctx, `INSERT INTO auth_webauthn_ceremonies (id_hash, kind, user_id, session, expires_at) VALUES ($1, $2, $3, $4, $5)`,
		tokenHash(id), kind, user, data, now.Add(pk.ttl)); err != nil {
		return "", err
	}
	_, err = pk.s.pool.Exec(ctx, "DELETE FROM auth_webauthn_ceremonies WHERE expires_at < $1", now.Add(-time.Hour))
	return id, err
}

// takeCeremony removes and returns a ceremony (single use); a reason code when unusable.
func (pk *Passkeys) takeCeremony(ctx context.Context, kind, id string) (webauthn.SessionData, *uuid.UUID, string, error) {
	var sd webauthn.SessionData
	var user *uuid.UUID
	var data []byte
	var exp time.Time
	err := pk.s.pool.QueryRow(ctx, "DELETE FROM auth_webauthn_ceremonies WHERE id_hash = $1 AND kind = $2 RETURNING user_id, session, expires_at",
		tokenHash(id), kind).Scan(&user, &data, &exp)
	if errors.Is(err, pgx.ErrNoRows) {
		return sd, nil, "ceremony_unknown", nil
	}
	if err != nil {
		return sd, nil, "", err
	}
	if !pk.s.now().Before(exp) {
		return sd, user, "ceremony_expired", nil
	}
	if err := json.Unmarshal(data, &sd); err != nil {
		return sd, user, "", err
	}
	return sd, user, "", nil
}

// BeginRegistration starts adding a passkey for the signed-in user p: it returns the options
// for navigator.credentials.create() and the ceremony id to send back with the result.
func (pk *Passkeys) BeginRegistration(ctx context.Context, p *Principal) (*protocol.CredentialCreation, string, error) {
	if p == nil || p.Kind != audit.ActorUser {
		return nil, "", fail(ErrUnauthenticated, "no_user")
	}
	u, _, err := pk.loadUser(ctx, p.ID)
	if err != nil {
		return nil, "", err
	}
	var exclude []protocol.CredentialDescriptor
	for _, c := range u.creds {
		exclude = append(exclude, c.Descriptor())
	}
	opts, sd, err := pk.w.BeginRegistration(u, webauthn.WithExclusions(exclude))
	if err != nil {
		return nil, "", fmt.Errorf("passkey registration: %w", err)
	}
	id, err := pk.saveCeremony(ctx, "register", &p.ID, sd)
	if err != nil {
		return nil, "", fmt.Errorf("passkey registration: %w", err)
	}
	return opts, id, nil
}

// FinishRegistration verifies the authenticator's answer (the JSON of the
// PublicKeyCredential) and stores the passkey, audited as "user.passkey_added"; a refused
// answer is audited as "auth.passkey.rejected" and returned as ErrInvalidCredentials.
func (pk *Passkeys) FinishRegistration(ctx context.Context, p *Principal, o Origin, ceremony string, body []byte) error {
	reject := func(reason string) error {
		_, err := pk.s.cfg.Audit.RecordNow(ctx, o.event(pk.s.now(), "auth.passkey.rejected", audit.Object{Type: "user", ID: p.ID.String()},
			audit.OutcomeRejected, reason, map[string]any{"ceremony": "register"}))
		if err != nil {
			return fmt.Errorf("passkey registration: audit refusal: %w", err)
		}
		return fail(ErrInvalidCredentials, reason)
	}
	sd, user, reason, err := pk.takeCeremony(ctx, "register", ceremony)
	if err != nil {
		return fmt.Errorf("passkey registration: %w", err)
	}
	if reason != "" {
		return reject(reason)
	}
	if user == nil || *user != p.ID {
		return reject("ceremony_other_user")
	}
	parsed, err := protocol.ParseCredentialCreationResponseBody(bytes.NewReader(body))
	if err != nil {
		return reject("response_malformed")
	}
	u, _, err := pk.loadUser(ctx, p.ID)
	if err != nil {
		return err
	}
	cred, err := pk.w.CreateCredential(u, sd, parsed)
	if err != nil {
		return reject("attestation_invalid")
	}
	data, err := json.Marshal(cred)
	if err != nil {
		return err
	}
	now := pk.s.now()
	return pgx.BeginFunc(ctx, pk.s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO auth_webauthn_credentials (id, user_id, credential, created_at) VALUES ($1, $2, $3, $4)",
			cred.ID, p.ID, data, now); err != nil {
			return err
		}
		return pk.s.recordUserEvent(ctx, tx, o.event(now, "user.passkey_added", audit.Object{Type: "user", ID: p.ID.String()},
			audit.OutcomeSuccess, "", map[string]any{"credential_id": b64(cred.ID), "attestation": cred.AttestationFormat}), p.ID)
	})
}

// BeginLogin starts a passkey sign-in (discoverable credentials: no name typed): it returns
// the options for navigator.credentials.get() and the ceremony id.
func (pk *Passkeys) BeginLogin(ctx context.Context) (*protocol.CredentialAssertion, string, error) {
	opts, sd, err := pk.w.BeginDiscoverableLogin(webauthn.WithUserVerification(protocol.VerificationRequired))
	if err != nil {
		return nil, "", fmt.Errorf("passkey sign-in: %w", err)
	}
	id, err := pk.saveCeremony(ctx, "login", nil, sd)
	if err != nil {
		return nil, "", fmt.Errorf("passkey sign-in: %w", err)
	}
	return opts, id, nil
}

// PasskeyLogin is the browser's answer to a passkey sign-in.
type PasskeyLogin struct {
	Ceremony   string
	Body       []byte // the JSON of the PublicKeyCredential (assertion)
	SourceAddr string
	RequestID  string
}

// FinishLogin verifies the assertion (signature by the registered key, user verification,
// signature counter) and opens a session with the method "webauthn" ("auth.login.succeeded").
// Refusals are ErrInvalidCredentials, audited as "auth.login.failed" with a reason:
// ceremony_unknown, ceremony_expired, response_malformed, assertion_invalid,
// authenticator_cloned, user_disabled.
func (pk *Passkeys) FinishLogin(ctx context.Context, req PasskeyLogin) (Session, error) {
	o := Origin{RequestID: req.RequestID, SourceAddr: req.SourceAddr}
	failed := func(user uuid.UUID, reason string) (Session, error) {
		return Session{}, pk.s.auditLoginFailure(ctx, o, user, MethodWebAuthn, ErrInvalidCredentials, reason)
	}
	sd, _, reason, err := pk.takeCeremony(ctx, "login", req.Ceremony)
	if err != nil {
		return Session{}, fmt.Errorf("passkey sign-in: %w", err)
	}
	if reason != "" {
		return failed(uuid.Nil, reason)
	}
	parsed, err := protocol.ParseCredentialRequestResponseBody(bytes.NewReader(req.Body))
	if err != nil {
		return failed(uuid.Nil, "response_malformed")
	}
	var found *waUser
	var status string
	handler := func(_, userHandle []byte) (webauthn.User, error) {
		id, err := uuid.FromBytes(userHandle)
		if err != nil {
			return nil, err
		}
		found, status, err = pk.loadUser(ctx, id)
		return found, err
	}
	_, cred, err := pk.w.ValidatePasskeyLogin(handler, sd, parsed)
	if err != nil || found == nil {
		id := uuid.Nil
		if found != nil {
			id = found.id
		}
		return failed(id, "assertion_invalid")
	}
	if cred.Authenticator.CloneWarning {
		return failed(found.id, "authenticator_cloned")
	}
	if status != StatusActive {
		return failed(found.id, "user_disabled")
	}
	data, err := json.Marshal(cred)
	if err != nil {
		return Session{}, err
	}
	if _, err := pk.s.pool.Exec(ctx, "UPDATE auth_webauthn_credentials SET credential = $2, last_used_at = $3 WHERE id = $1",
		cred.ID, data, pk.s.now()); err != nil {
		return Session{}, fmt.Errorf("passkey sign-in: %w", err)
	}
	return pk.s.signIn(ctx, o, found.id, MethodWebAuthn, "", map[string]any{"credential_id": b64(cred.ID)})
}
