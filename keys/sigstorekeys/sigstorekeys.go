// Package sigstorekeys adapts a keys.Ring signing key to sigstore's signature.SignerVerifier,
// so releases can be signed by either backend (Vault Transit or the local key ring) and
// verified by sigstore/cosign tooling.
package sigstorekeys

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"

	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/vigilhealth/vigil/keys"
)

// MaxMessage is the largest message SignMessage and VerifySignature read (release payloads
// are signed through their digest-bearing statements, which are small). 64 MiB.
const MaxMessage = 64 << 20

// SignerVerifier signs with one version of a ring key and verifies with sigstore's own
// verifier for that public key (ECDSA P-256 with SHA-256, or Ed25519).
type SignerVerifier struct {
	signer   keys.Signer
	verifier signature.Verifier
}

var _ signature.SignerVerifier = (*SignerVerifier)(nil)

// New returns a SignerVerifier for the newest version of the purpose's key (normally
// keys.ReleaseSigning). Signing goes through the ring, so it is audited by its hook.
func New(ctx context.Context, ring *keys.Ring, p keys.Purpose) (*SignerVerifier, error) {
	s, err := ring.Signer(ctx, p)
	if err != nil {
		return nil, err
	}
	return FromSigner(s)
}

// FromSigner wraps a keys.Signer.
func FromSigner(s keys.Signer) (*SignerVerifier, error) {
	v, err := signature.LoadVerifier(s.Public(), crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sigstorekeys: verifier for %s: %w", s.KeyID(), err)
	}
	return &SignerVerifier{signer: s, verifier: v}, nil
}

// KeyID returns the ring key id ("release-signing:v2").
func (sv *SignerVerifier) KeyID() string { return sv.signer.KeyID() }

// PublicKey implements signature.PublicKeyProvider.
func (sv *SignerVerifier) PublicKey(...signature.PublicKeyOption) (crypto.PublicKey, error) {
	return sv.signer.Public(), nil
}

func readAll(r io.Reader) ([]byte, error) {
	if r == nil {
		return nil, errors.New("sigstorekeys: nil message")
	}
	b, err := io.ReadAll(io.LimitReader(r, MaxMessage+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxMessage {
		return nil, fmt.Errorf("sigstorekeys: message larger than %d bytes", MaxMessage)
	}
	return b, nil
}

// SignMessage implements signature.Signer: ECDSA P-256 ASN.1 over SHA-256(message), or
// Ed25519 over the message. A context passed with options.WithContext is used; signing a
// precomputed digest (options.WithDigest) is refused, since the backend hashes itself.
func (sv *SignerVerifier) SignMessage(message io.Reader, opts ...signature.SignOption) ([]byte, error) {
	ctx := context.Background()
	var digest []byte
	for _, o := range opts {
		o.ApplyContext(&ctx)
		o.ApplyDigest(&digest)
	}
	if digest != nil {
		return nil, errors.New("sigstorekeys: signing a precomputed digest is not supported; pass the message")
	}
	msg, err := readAll(message)
	if err != nil {
		return nil, err
	}
	return sv.signer.Sign(ctx, msg)
}

// VerifySignature implements signature.Verifier with sigstore's verifier for the public key.
func (sv *SignerVerifier) VerifySignature(sig, message io.Reader, opts ...signature.VerifyOption) error {
	return sv.verifier.VerifySignature(sig, message, opts...)
}
