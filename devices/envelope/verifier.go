package envelope

import (
	"crypto/ed25519"
	"fmt"

	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// Verifier checks Ed25519 signatures under one public key, with the key decoded and its
// lookup tables computed once (curve25519-voi's expanded public key). A server that verifies
// many uploads from the same device keeps one Verifier per device key: on the reference
// machine it verifies in ≈ 39 µs where crypto/ed25519.Verify takes ≈ 66–77 µs (see
// docs/benchmarks.md#devices).
//
// Its verdicts are exactly those of crypto/ed25519.Verify (RFC 8032 with the cofactorless
// equation, canonical S, any encoding of A and R that the standard library accepts): it uses
// voi's VerifyOptionsStdLib, and a test and a fuzz target compare the two on every input.
// A Verifier is safe for concurrent use.
type Verifier struct {
	pub ed25519.PublicKey
	x   *voi.ExpandedPublicKey
}

var stdlibRules = &voi.Options{Verify: voi.VerifyOptionsStdLib}

// NewVerifier prepares pub for verification. It fails only on a key that is not 32 bytes. A
// 32-byte key that voi cannot expand (not a point, or an encoding voi refuses) is checked with
// crypto/ed25519 itself, so the verdicts stay the standard library's in every case.
func NewVerifier(pub ed25519.PublicKey) (*Verifier, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: public key is %d bytes, want %d", ErrMalformed, len(pub), ed25519.PublicKeySize)
	}
	v := &Verifier{pub: append(ed25519.PublicKey(nil), pub...)}
	if x, err := voi.NewExpandedPublicKey(voi.PublicKey(v.pub)); err == nil {
		v.x = x
	}
	return v, nil
}

// Verify reports whether sig is a valid Ed25519 signature of msg by the Verifier's key; it
// returns ErrBadSignature otherwise (including a signature of the wrong size).
func (v *Verifier) Verify(msg, sig []byte) error {
	if len(sig) != ed25519.SignatureSize {
		return ErrBadSignature
	}
	var ok bool
	if v.x != nil {
		ok = voi.VerifyExpandedWithOptions(v.x, msg, sig, stdlibRules)
	} else {
		ok = ed25519.Verify(v.pub, msg, sig)
	}
	if !ok {
		return ErrBadSignature
	}
	return nil
}
