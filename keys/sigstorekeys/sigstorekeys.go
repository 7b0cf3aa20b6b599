// Package sigstorekeys adapts a keys.Ring signing key to sigstore's signature.SignerVerifier,
// so releases can be signed by either backend (Vault Transit or the local key ring) and
// verified by sigstore/cosign tooling.
package sigstorekeys

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/vigilhealth/vigil/keys"
)

// MaxMessage is the largest message SignMessage reads for an Ed25519 key, which signs the
// message itself. ECDSA P-256 keys (the release-signing key) sign the SHA-256 digest, which
// SignMessage computes while it reads: their messages have no size limit and never reach the
// backend. 64 MiB.
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
// Ed25519 over the message. A context passed with options.WithContext is used.
//
// An ECDSA key signs the digest (keys.DigestSigner): SignMessage hashes the message as it
// reads it and sends only the 32-byte digest to the backend (Vault Transit prehashed
// signing), so an artefact of any size signs in one small request; a SHA-256 digest given
// with options.WithDigest is signed as is (the message is then not read). The signature is
// the same standard one either way: what cosign verify-blob checks against the file.
// Ed25519 keys sign the message itself (at most MaxMessage bytes) and refuse a digest.
func (sv *SignerVerifier) SignMessage(message io.Reader, opts ...signature.SignOption) ([]byte, error) {
	ctx := context.Background()
	var digest []byte
	for _, o := range opts {
		o.ApplyContext(&ctx)
		o.ApplyDigest(&digest)
	}
	if ds, ok := sv.signer.(keys.DigestSigner); ok && isECDSA(sv.signer.Public()) {
		if digest == nil {
			if message == nil {
				return nil, errors.New("sigstorekeys: nil message")
			}
			h := sha256.New()
			if _, err := io.Copy(h, message); err != nil {
				return nil, fmt.Errorf("sigstorekeys: read message: %w", err)
			}
			digest = h.Sum(nil)
		} else if len(digest) != sha256.Size {
			return nil, fmt.Errorf("sigstorekeys: digest of %d bytes, want SHA-256 (%d)", len(digest), sha256.Size)
		}
		return ds.SignDigest(ctx, digest)
	}
	if digest != nil {
		return nil, errors.New("sigstorekeys: this key signs the message itself, not a precomputed digest; pass the message")
	}
	msg, err := readAll(message)
	if err != nil {
		return nil, err
	}
	return sv.signer.Sign(ctx, msg)
}

func isECDSA(pub crypto.PublicKey) bool {
	_, ok := pub.(*ecdsa.PublicKey)
	return ok
}

// VerifySignature implements signature.Verifier with sigstore's verifier for the public key.
func (sv *SignerVerifier) VerifySignature(sig, message io.Reader, opts ...signature.VerifyOption) error {
	return sv.verifier.VerifySignature(sig, message, opts...)
}
