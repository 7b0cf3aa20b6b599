package authtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

// SoftAuthenticator is a software WebAuthn authenticator (a platform authenticator's
// behaviour, done with real P-256 keys): it makes a resident credential with "none"
// attestation and signs assertions with user presence and verification, answering as a
// browser's navigator.credentials.create() / get() would.
type SoftAuthenticator struct {
	RPID, Origin string
	Key          *ecdsa.PrivateKey // the credential's key, made by Create
	CredID       []byte
	UserHandle   []byte
	Count        uint32
}

// Authenticator data flags.
const (
	FlagUP = 0x01 // user present
	FlagUV = 0x04 // user verified
	FlagAT = 0x40 // attested credential data included
)

func (a *SoftAuthenticator) authData(flags byte, attested []byte) []byte {
	h := sha256.Sum256([]byte(a.RPID))
	d := append(h[:], flags)
	d = binary.BigEndian.AppendUint32(d, a.Count)
	return append(d, attested...)
}

func (a *SoftAuthenticator) clientData(typ, challenge string) []byte {
	b, _ := json.Marshal(map[string]any{"type": typ, "challenge": challenge, "origin": a.Origin, "crossOrigin": false})
	return b
}

func b64u(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// Create answers navigator.credentials.create() for challenge (base64url, as the options
// carry it) and the user handle: the PublicKeyCredential JSON.
func (a *SoftAuthenticator) Create(t testing.TB, challenge string, userHandle []byte) []byte {
	t.Helper()
	var err error
	if a.Key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	a.CredID = make([]byte, 32)
	_, _ = rand.Read(a.CredID)
	a.UserHandle = userHandle
	cose, err := cbor.Marshal(map[int64]any{1: int64(2), 3: int64(-7), -1: int64(1),
		-2: a.Key.X.FillBytes(make([]byte, 32)), -3: a.Key.Y.FillBytes(make([]byte, 32))})
	if err != nil {
		t.Fatal(err)
	}
	attested := make([]byte, 16) // AAGUID zero
	attested = binary.BigEndian.AppendUint16(attested, uint16(len(a.CredID)))
	attested = append(append(attested, a.CredID...), cose...)
	att, err := cbor.Marshal(map[string]any{"fmt": "none", "attStmt": map[string]any{}, "authData": a.authData(FlagUP|FlagUV|FlagAT, attested)})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]any{"id": b64u(a.CredID), "rawId": b64u(a.CredID), "type": "public-key",
		"response": map[string]any{"attestationObject": b64u(att), "clientDataJSON": b64u(a.clientData("webauthn.create", challenge)),
			"transports": []string{"internal"}}})
	return b
}

// Get answers navigator.credentials.get() for challenge: the assertion JSON, signed with key
// (a.Key, or another to forge one) and the given flags.
func (a *SoftAuthenticator) Get(t testing.TB, challenge string, key *ecdsa.PrivateKey, flags byte) []byte {
	t.Helper()
	a.Count++
	ad := a.authData(flags, nil)
	cd := a.clientData("webauthn.get", challenge)
	ch := sha256.Sum256(cd)
	digest := sha256.Sum256(append(append([]byte{}, ad...), ch[:]...))
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]any{"id": b64u(a.CredID), "rawId": b64u(a.CredID), "type": "public-key",
		"response": map[string]any{"authenticatorData": b64u(ad), "clientDataJSON": b64u(cd), "signature": b64u(sig), "userHandle": b64u(a.UserHandle)}})
	return b
}
