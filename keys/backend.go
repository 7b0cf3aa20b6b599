package keys

import (
	"context"
	"crypto"
	"fmt"
	"strconv"
	"strings"
)

// Backend is a key store: [Local] or [Vault]. The [Ring] builds the consumer-facing
// interfaces on it; consumers should not need it directly. Key names passed to a Backend
// are purpose names; a backend may map them (Vault adds a prefix).
//
// Private key material MUST NOT leave the backend except data keys handed out by
// GenerateDataKey/UnwrapDataKeys. Errors MUST match the package sentinels where the cause
// is known ([ErrKeyNotFound], [ErrSealed], [ErrUnavailable], [ErrPermissionDenied],
// [ErrDecrypt]). No method returns a nil result with a nil error.
type Backend interface {
	// CreateKey creates the key if it does not exist and reports whether it did. An
	// existing key of another algorithm is an error; an existing key is left untouched.
	CreateKey(ctx context.Context, name string, alg Algorithm) (created bool, err error)
	// Rotate adds a new version to the key and returns it; it becomes the latest.
	Rotate(ctx context.Context, name string) (version int, err error)
	// Key describes the key: its algorithm, its latest version and, for signing keys,
	// the public key of every version that can still verify.
	Key(ctx context.Context, name string) (KeyInfo, error)
	// Sign signs every message with the given version (0: the latest) and returns the
	// signatures in order and the version used. Backends batch where it pays.
	Sign(ctx context.Context, name string, version int, msgs [][]byte) ([][]byte, int, error)
	// SignDigests signs SHA-256 digests (32 bytes each) with an ECDSA P-256 key version
	// (0: the latest): each signature is the ASN.1 DER signature Sign makes of the message
	// whose digest it is, so a verifier of the message accepts it. The message never reaches
	// the backend (Vault Transit: prehashed). Keys of other algorithms refuse with
	// [ErrWrongPurpose], a digest of another length with an error.
	SignDigests(ctx context.Context, name string, version int, digests [][]byte) ([][]byte, int, error)
	// MAC returns HMAC-SHA-256(key version, msg) (version 0: the latest) and the version used.
	MAC(ctx context.Context, name string, version int, msg []byte) ([]byte, int, error)
	// GenerateDataKey returns a fresh random 32-byte data key and that key wrapped
	// (encrypted) under the key's latest version. The wrapped form is printable and
	// carries its version as "<backend>:v<version>:…" (see [WrappedVersion]).
	GenerateDataKey(ctx context.Context, name string) (plaintext, wrapped []byte, err error)
	// UnwrapDataKeys decrypts wrapped data keys, in order. Backends batch where it pays.
	UnwrapDataKeys(ctx context.Context, name string, wrapped [][]byte) ([][]byte, error)
	// RewrapDataKey re-encrypts a wrapped data key under the latest version without
	// returning the plaintext key.
	RewrapDataKey(ctx context.Context, name string, wrapped []byte) ([]byte, error)
	// Close releases resources. The Backend MUST NOT be used afterwards.
	Close() error
}

// KeyInfo describes a key in a backend.
type KeyInfo struct {
	Name      string
	Algorithm Algorithm
	// Latest is the newest version, used for new signatures, MACs and data keys.
	Latest int
	// MinDecrypt is the oldest version that still decrypts/verifies.
	MinDecrypt int
	// Public maps version to public key for signing keys (ed25519.PublicKey or
	// *ecdsa.PublicKey); nil for symmetric keys.
	Public map[int]crypto.PublicKey
}

// WrappedVersion returns the key version a wrapped data key was wrapped with
// ("vault:v3:…" → 3).
func WrappedVersion(wrapped []byte) (int, error) {
	s := string(wrapped)
	_, rest, ok := strings.Cut(s, ":v")
	if !ok {
		return 0, fmt.Errorf("%w: wrapped key without version", ErrDecrypt)
	}
	v, _, ok := strings.Cut(rest, ":")
	if !ok {
		return 0, fmt.Errorf("%w: wrapped key without version", ErrDecrypt)
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%w: wrapped key with bad version", ErrDecrypt)
	}
	return n, nil
}
