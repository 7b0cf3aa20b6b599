package envelope

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"
)

// Enroll is the signed body a device sends to register its first key. It is signed with
// the private key of PublicKey itself (proof of possession) and carries the one-time
// enrollment token an administrator issued for the device.
type Enroll struct {
	Type      string `cbor:"type" json:"type"`   // TypeEnroll
	Token     string `cbor:"token" json:"token"` // the enrollment token, as issued
	PublicKey []byte `cbor:"pub" json:"pub"`     // the device's new Ed25519 public key (32 bytes)
	T         int64  `cbor:"t" json:"t"`         // when the device signed it, ms since the Unix epoch
}

// Rotate is the signed body of a key rotation: the device's current key (Device, KeyVersion)
// signs it in Envelope.Sig, and the new key signs the same body in RotateEnvelope.NewSig
// (proof of possession of the new key). On success the new key gets KeyVersion+1 and the old
// key stops being accepted at once.
type Rotate struct {
	Type         string `cbor:"type" json:"type"`       // TypeRotate
	Device       string `cbor:"device" json:"device"`   // the device's registry id
	KeyVersion   uint64 `cbor:"kv" json:"kv"`           // version of the current key, which signs Sig
	NewPublicKey []byte `cbor:"new_pub" json:"new_pub"` // the new Ed25519 public key (32 bytes)
	T            int64  `cbor:"t" json:"t"`             // when the device signed it, ms since the Unix epoch
}

// RotateEnvelope is the wire form of a rotation: the body, the current key's signature and
// the new key's signature over the same body.
type RotateEnvelope struct {
	Body   []byte `cbor:"body" json:"body"`
	Sig    []byte `cbor:"sig" json:"sig"`
	NewSig []byte `cbor:"new_sig" json:"new_sig"`
}

// SignEnroll builds and signs an enrollment request with the device's new key.
func SignEnroll(token string, priv ed25519.PrivateKey, t time.Time) ([]byte, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, errors.New("sign enroll: not an Ed25519 private key")
	}
	e := Enroll{Type: TypeEnroll, Token: token, PublicKey: []byte(priv.Public().(ed25519.PublicKey)), T: t.UnixMilli()}
	raw, _, err := sign(&e, priv)
	return raw, err
}

// ParseEnroll decodes an enrollment envelope and checks its proof of possession: the body
// must be signed by the very key it registers. The token is not checked here.
func ParseEnroll(raw []byte) (*Enroll, error) {
	env, err := ParseEnvelope(raw, Limits{MaxEnvelopeBytes: 4096})
	if err != nil {
		return nil, err
	}
	if t := peekType(env.Body); t != TypeEnroll {
		return nil, fmt.Errorf("%w: body type %q, want %q", ErrMalformed, t, TypeEnroll)
	}
	var e Enroll
	if err := decodeCanonical(env.Body, &e, "enroll body"); err != nil {
		return nil, err
	}
	if len(e.PublicKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: public key is %d bytes, want %d", ErrMalformed, len(e.PublicKey), ed25519.PublicKeySize)
	}
	if e.Token == "" || len(e.Token) > 128 {
		return nil, fmt.Errorf("%w: token must be 1..128 bytes", ErrMalformed)
	}
	if err := VerifySignature(e.PublicKey, env.Body, env.Sig); err != nil {
		return nil, fmt.Errorf("enroll proof of possession: %w", err)
	}
	return &e, nil
}

// SignRotate builds a rotation request signed by the current key and the new key.
func SignRotate(device string, keyVersion uint64, oldPriv, newPriv ed25519.PrivateKey, t time.Time) ([]byte, error) {
	if len(oldPriv) != ed25519.PrivateKeySize || len(newPriv) != ed25519.PrivateKeySize {
		return nil, errors.New("sign rotate: not an Ed25519 private key")
	}
	r := Rotate{Type: TypeRotate, Device: device, KeyVersion: keyVersion,
		NewPublicKey: []byte(newPriv.Public().(ed25519.PublicKey)), T: t.UnixMilli()}
	body, err := Canonical(&r)
	if err != nil {
		return nil, err
	}
	env := RotateEnvelope{Body: body, Sig: ed25519.Sign(oldPriv, body), NewSig: ed25519.Sign(newPriv, body)}
	return Canonical(&env)
}

// ParseRotate decodes a rotation request and checks the new key's proof of possession. The
// current key's signature (Sig over Body) is checked by the caller, who knows the key.
func ParseRotate(raw []byte) (*Rotate, *RotateEnvelope, error) {
	if len(raw) > 4096 {
		return nil, nil, fmt.Errorf("%w: %d bytes, limit 4096", ErrTooLarge, len(raw))
	}
	var env RotateEnvelope
	if err := decodeCanonical(raw, &env, "rotate envelope"); err != nil {
		return nil, nil, err
	}
	if t := peekType(env.Body); t != TypeRotate {
		return nil, nil, fmt.Errorf("%w: body type %q, want %q", ErrMalformed, t, TypeRotate)
	}
	var r Rotate
	if err := decodeCanonical(env.Body, &r, "rotate body"); err != nil {
		return nil, nil, err
	}
	if !validUUID(r.Device) || r.KeyVersion == 0 {
		return nil, nil, fmt.Errorf("%w: bad device id or key version", ErrMalformed)
	}
	if len(r.NewPublicKey) != ed25519.PublicKeySize {
		return nil, nil, fmt.Errorf("%w: new public key is %d bytes, want %d", ErrMalformed, len(r.NewPublicKey), ed25519.PublicKeySize)
	}
	if err := VerifySignature(r.NewPublicKey, env.Body, env.NewSig); err != nil {
		return nil, nil, fmt.Errorf("rotate proof of possession of the new key: %w", err)
	}
	return &r, &env, nil
}

// Receipt is the body Vigil signs for each accepted upload.
type Receipt struct {
	Type       string `cbor:"type" json:"type"`                                 // TypeReceipt
	Upload     []byte `cbor:"upload" json:"upload"`                             // SHA-256 of the upload's canonical body
	Device     string `cbor:"device" json:"device"`                             // the device's registry id
	Seq        uint64 `cbor:"seq" json:"seq"`                                   // the upload's sequence number
	ServerTime int64  `cbor:"server_time" json:"server_time"`                   // when Vigil accepted it, ms since the Unix epoch
	AuditEvent string `cbor:"audit_event" json:"audit_event"`                   // id (UUID) of the upload's audit event
	LeafIndex  *int64 `cbor:"leaf_index,omitempty" json:"leaf_index,omitempty"` // the audit log leaf holding the event, once known
}

// SignedReceipt is the wire form of a receipt: the canonical receipt body, the signature of
// Vigil's receipt-signing key over it, and that key's id.
type SignedReceipt struct {
	Body  []byte `cbor:"body" json:"body"`
	Sig   []byte `cbor:"sig" json:"sig"`
	KeyID string `cbor:"kid" json:"kid"`
}

// Marshal returns the signed receipt's wire bytes.
func (r *SignedReceipt) Marshal() ([]byte, error) { return Canonical(r) }

// ParseSignedReceipt decodes a signed receipt and its body, without checking the signature.
func ParseSignedReceipt(raw []byte) (*SignedReceipt, *Receipt, error) {
	if len(raw) > 4096 {
		return nil, nil, fmt.Errorf("%w: receipt of %d bytes", ErrTooLarge, len(raw))
	}
	var sr SignedReceipt
	if err := decodeCanonical(raw, &sr, "signed receipt"); err != nil {
		return nil, nil, err
	}
	var r Receipt
	if err := decodeCanonical(sr.Body, &r, "receipt body"); err != nil {
		return nil, nil, err
	}
	if r.Type != TypeReceipt || len(r.Upload) != sha256.Size {
		return nil, nil, fmt.Errorf("%w: not a %s", ErrMalformed, TypeReceipt)
	}
	return &sr, &r, nil
}

// VerifyReceipt checks a receipt signature with Vigil's receipt-signing public key: Ed25519
// over the body, or ECDSA (ASN.1) over the SHA-256 of the body.
func VerifyReceipt(pub crypto.PublicKey, sr *SignedReceipt) error {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return VerifySignature(k, sr.Body, sr.Sig)
	case *ecdsa.PublicKey:
		d := sha256.Sum256(sr.Body)
		if !ecdsa.VerifyASN1(k, d[:], sr.Sig) {
			return ErrBadSignature
		}
		return nil
	default:
		return fmt.Errorf("verify receipt: unsupported key type %T", pub)
	}
}
