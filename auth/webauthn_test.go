package auth_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
)

// Verifies: REQ-ACC-015
func TestPasskeyRegistrationAndSignIn(t *testing.T) {
	e := newEnv(t, nil)
	e.clock.Add(time.Until(e.clock.Now())*-1 + time.Second) // near real time: go-webauthn checks ceremony times with its own clock
	_, secret, _ := e.user(t, "pat@example.org", [2]string{auth.RoleClinician, "*"})
	_, p := e.login(t, "pat@example.org", secret)
	pk, err := e.svc.NewPasskeys(auth.WebAuthnConfig{RPID: "vigil.test", Origins: []string{"https://vigil.test"}})
	if err != nil {
		t.Fatal(err)
	}
	a := &authtest.SoftAuthenticator{RPID: "vigil.test", Origin: "https://vigil.test"}

	// Registration by the signed-in user.
	opts, ceremony, err := pk.BeginRegistration(e.ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Response.AuthenticatorSelection.UserVerification != "required" {
		t.Fatalf("registration options = %+v, want user verification required", opts.Response.AuthenticatorSelection)
	}
	body := a.Create(t, opts.Response.Challenge.String(), p.ID[:]) // the user handle is the user id
	if err := pk.FinishRegistration(e.ctx, p, p.Origin("r", ""), ceremony, body); err != nil {
		t.Fatalf("FinishRegistration = %v (%s)", err, auth.ReasonOf(err))
	}
	if err := pk.FinishRegistration(e.ctx, p, p.Origin("r", ""), ceremony, body); auth.ReasonOf(err) != "ceremony_unknown" {
		t.Fatalf("FinishRegistration(replayed) = %v, want ceremony_unknown", err)
	}
	if n := len(e.events(t, "user.passkey_added")); n != 1 {
		t.Fatalf("user.passkey_added events = %d, want 1", n)
	}

	// Passwordless sign-in with the passkey.
	lopts, lc, err := pk.BeginLogin(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := pk.FinishLogin(e.ctx, auth.PasskeyLogin{Ceremony: lc, Body: a.Get(t, lopts.Response.Challenge.String(), a.Key, authtest.FlagUP|authtest.FlagUV)})
	if err != nil {
		t.Fatalf("FinishLogin = %v (%s)", err, auth.ReasonOf(err))
	}
	if sess.UserID != p.ID || sess.AuthMethod != auth.MethodWebAuthn {
		t.Fatalf("FinishLogin = %+v, want a webauthn session of %s", sess, p.ID)
	}

	// Refusals: signed by another key, without user verification, replayed ceremony.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	lopts, lc, _ = pk.BeginLogin(e.ctx)
	_, err = pk.FinishLogin(e.ctx, auth.PasskeyLogin{Ceremony: lc, Body: a.Get(t, lopts.Response.Challenge.String(), other, authtest.FlagUP|authtest.FlagUV)})
	wantCode(t, "FinishLogin(other key)", err, "invalid_credentials", "assertion_invalid")
	lopts, lc, _ = pk.BeginLogin(e.ctx)
	_, err = pk.FinishLogin(e.ctx, auth.PasskeyLogin{Ceremony: lc, Body: a.Get(t, lopts.Response.Challenge.String(), a.Key, authtest.FlagUP)})
	wantCode(t, "FinishLogin(no user verification)", err, "invalid_credentials", "assertion_invalid")
	_, err = pk.FinishLogin(e.ctx, auth.PasskeyLogin{Ceremony: lc, Body: a.Get(t, lopts.Response.Challenge.String(), a.Key, authtest.FlagUP|authtest.FlagUV)})
	wantCode(t, "FinishLogin(used ceremony)", err, "invalid_credentials", "ceremony_unknown")
	// A disabled user's passkey no longer signs in.
	if err := e.svc.DisableUser(e.ctx, admin, p.ID); err != nil {
		t.Fatal(err)
	}
	lopts, lc, _ = pk.BeginLogin(e.ctx)
	_, err = pk.FinishLogin(e.ctx, auth.PasskeyLogin{Ceremony: lc, Body: a.Get(t, lopts.Response.Challenge.String(), a.Key, authtest.FlagUP|authtest.FlagUV)})
	wantCode(t, "FinishLogin(disabled user)", err, "invalid_credentials", "user_disabled")
}
