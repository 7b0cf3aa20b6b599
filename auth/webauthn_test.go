package auth_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/vigilhealth/vigil/auth"
)

// softAuthenticator is a software WebAuthn authenticator (a platform authenticator's
// behaviour, done with real P-256 keys): it makes a resident credential with "none"
// attestation and signs assertions with user presence and verification, as a browser would
// return them to the portal.
type softAuthenticator struct {
	rpID, origin string
	key          *ecdsa.PrivateKey
	credID       []byte
	userHandle   []byte
	count        uint32
}

const (
	flagUP = 0x01
	flagUV = 0x04
	flagAT = 0x40
)

func (a *softAuthenticator) authData(flags byte, attested []byte) []byte {
	h := sha256.Sum256([]byte(a.rpID))
	d := append(h[:], flags)
	d = binary.BigEndian.AppendUint32(d, a.count)
	return append(d, attested...)
}

func (a *softAuthenticator) clientData(typ, challenge string) []byte {
	b, _ := json.Marshal(map[string]any{"type": typ, "challenge": challenge, "origin": a.origin, "crossOrigin": false})
	return b
}

func b64u(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// create answers navigator.credentials.create(): the PublicKeyCredential JSON.
func (a *softAuthenticator) create(t *testing.T, challenge string, userHandle []byte) []byte {
	t.Helper()
	var err error
	if a.key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	a.credID = make([]byte, 32)
	_, _ = rand.Read(a.credID)
	a.userHandle = userHandle
	cose, err := cbor.Marshal(map[int64]any{1: int64(2), 3: int64(-7), -1: int64(1),
		-2: a.key.X.FillBytes(make([]byte, 32)), -3: a.key.Y.FillBytes(make([]byte, 32))})
	if err != nil {
		t.Fatal(err)
	}
	attested := make([]byte, 16) // AAGUID zero
	attested = binary.BigEndian.AppendUint16(attested, uint16(len(a.credID)))
	attested = append(append(attested, a.credID...), cose...)
	att, err := cbor.Marshal(map[string]any{"fmt": "none", "attStmt": map[string]any{}, "authData": a.authData(flagUP|flagUV|flagAT, attested)})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]any{"id": b64u(a.credID), "rawId": b64u(a.credID), "type": "public-key",
		"response": map[string]any{"attestationObject": b64u(att), "clientDataJSON": b64u(a.clientData("webauthn.create", challenge)),
			"transports": []string{"internal"}}})
	return b
}

// get answers navigator.credentials.get(): the assertion JSON, signed with key.
func (a *softAuthenticator) get(t *testing.T, challenge string, key *ecdsa.PrivateKey, flags byte) []byte {
	t.Helper()
	a.count++
	ad := a.authData(flags, nil)
	cd := a.clientData("webauthn.get", challenge)
	ch := sha256.Sum256(cd)
	digest := sha256.Sum256(append(append([]byte{}, ad...), ch[:]...))
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]any{"id": b64u(a.credID), "rawId": b64u(a.credID), "type": "public-key",
		"response": map[string]any{"authenticatorData": b64u(ad), "clientDataJSON": b64u(cd), "signature": b64u(sig), "userHandle": b64u(a.userHandle)}})
	return b
}

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
	a := &softAuthenticator{rpID: "vigil.test", origin: "https://vigil.test"}

	// Registration by the signed-in user.
	opts, ceremony, err := pk.BeginRegistration(e.ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Response.AuthenticatorSelection.UserVerification != "required" {
		t.Fatalf("registration options = %+v, want user verification required", opts.Response.AuthenticatorSelection)
	}
	body := a.create(t, opts.Response.Challenge.String(), p.ID[:]) // the user handle is the user id
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
	sess, err := pk.FinishLogin(e.ctx, auth.PasskeyLogin{Ceremony: lc, Body: a.get(t, lopts.Response.Challenge.String(), a.key, flagUP|flagUV)})
	if err != nil {
		t.Fatalf("FinishLogin = %v (%s)", err, auth.ReasonOf(err))
	}
	if sess.UserID != p.ID || sess.AuthMethod != auth.MethodWebAuthn {
		t.Fatalf("FinishLogin = %+v, want a webauthn session of %s", sess, p.ID)
	}

	// Refusals: signed by another key, without user verification, replayed ceremony.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	lopts, lc, _ = pk.BeginLogin(e.ctx)
	_, err = pk.FinishLogin(e.ctx, auth.PasskeyLogin{Ceremony: lc, Body: a.get(t, lopts.Response.Challenge.String(), other, flagUP|flagUV)})
	wantCode(t, "FinishLogin(other key)", err, "invalid_credentials", "assertion_invalid")
	lopts, lc, _ = pk.BeginLogin(e.ctx)
	_, err = pk.FinishLogin(e.ctx, auth.PasskeyLogin{Ceremony: lc, Body: a.get(t, lopts.Response.Challenge.String(), a.key, flagUP)})
	wantCode(t, "FinishLogin(no user verification)", err, "invalid_credentials", "assertion_invalid")
	_, err = pk.FinishLogin(e.ctx, auth.PasskeyLogin{Ceremony: lc, Body: a.get(t, lopts.Response.Challenge.String(), a.key, flagUP|flagUV)})
	wantCode(t, "FinishLogin(used ceremony)", err, "invalid_credentials", "ceremony_unknown")
	// A disabled user's passkey no longer signs in.
	if err := e.svc.DisableUser(e.ctx, admin, p.ID); err != nil {
		t.Fatal(err)
	}
	lopts, lc, _ = pk.BeginLogin(e.ctx)
	_, err = pk.FinishLogin(e.ctx, auth.PasskeyLogin{Ceremony: lc, Body: a.get(t, lopts.Response.Challenge.String(), a.key, flagUP|flagUV)})
	wantCode(t, "FinishLogin(disabled user)", err, "invalid_credentials", "user_disabled")
}
