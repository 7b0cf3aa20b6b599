package keys

import (
	"context"
	"crypto"
	"fmt"
	"strconv"
	"strings"
)

// Purpose names a key by what it is for. A key is used for its purpose only.
type Purpose string

// The purposes of Vigil's keys.
const (
	// AuditCheckpoint signs the audit log's checkpoints (C2SP signed notes). Ed25519.
	AuditCheckpoint Purpose = "audit-checkpoint"
	// ReceiptSigning signs the receipts returned to devices for their uploads. Ed25519.
	ReceiptSigning Purpose = "receipt-signing"
	// ReleaseSigning signs releases and evidence packs: ECDSA P-256 over SHA-256, so
	// sigstore/cosign can verify the signatures.
	ReleaseSigning Purpose = "release-signing"
	// PHIEncryption wraps the data keys that encrypt protected health information.
	// AES-256-GCM key-encryption key; rotated, old versions keep decrypting.
	PHIEncryption Purpose = "phi-encryption"
	// WebhookHMAC authenticates outgoing webhooks. HMAC-SHA-256.
	WebhookHMAC Purpose = "webhook-hmac"
	// PHIBlindIndex keys the blind index of PHI identifiers ([PHI.BlindIndex]). HMAC-SHA-256.
	// It is never rotated: a new key would orphan every stored index.
	PHIBlindIndex Purpose = "phi-blind-index"
)

// Purposes lists every purpose, in a fixed order.
var Purposes = []Purpose{AuditCheckpoint, ReceiptSigning, ReleaseSigning, PHIEncryption, WebhookHMAC, PHIBlindIndex}

// Algorithm is the algorithm of a key.
type Algorithm string

// Key algorithms (names as in Vault Transit).
const (
	Ed25519    Algorithm = "ed25519"
	ECDSAP256  Algorithm = "ecdsa-p256"
	AES256GCM  Algorithm = "aes256-gcm96"
	HMACSHA256 Algorithm = "hmac"
)

// Signs reports whether keys of the algorithm sign.
func (a Algorithm) Signs() bool { return a == Ed25519 || a == ECDSAP256 }

// Algorithm returns the algorithm of the purpose's key, or "" for an unknown purpose.
func (p Purpose) Algorithm() Algorithm {
	switch p {
	case AuditCheckpoint, ReceiptSigning:
		return Ed25519
	case ReleaseSigning:
		return ECDSAP256
	case PHIEncryption:
		return AES256GCM
	case WebhookHMAC, PHIBlindIndex:
		return HMACSHA256
	}
	return ""
}

// Valid reports whether p is one of [Purposes].
func (p Purpose) Valid() bool { return p.Algorithm() != "" }

// KeyID returns the id of one version of a purpose's key, "<purpose>:v<version>", e.g.
// "audit-checkpoint:v2". It is stable, safe to log and to publish.
func KeyID(p Purpose, version int) string { return string(p) + ":v" + strconv.Itoa(version) }

// ParseKeyID splits a key id made by [KeyID].
func ParseKeyID(id string) (Purpose, int, error) {
	name, v, ok := strings.Cut(id, ":v")
	if !ok {
		return "", 0, fmt.Errorf("keys: malformed key id %q", id)
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || !Purpose(name).Valid() {
		return "", 0, fmt.Errorf("keys: malformed key id %q", id)
	}
	return Purpose(name), n, nil
}

// Signer signs with one version of a signing key. [Ring.Signer] makes them.
type Signer interface {
	// KeyID returns the id of the key version this Signer uses ([KeyID]). It MUST NOT change
	// over the Signer's life, even after the key is rotated.
	KeyID() string
	// Public returns the public key of that version: ed25519.PublicKey for Ed25519 keys,
	// *ecdsa.PublicKey for ECDSA P-256 keys. It MUST NOT do I/O.
	Public() crypto.PublicKey
	// Sign signs msg with that version: for Ed25519 the raw 64-byte signature over msg
	// itself (no pre-hash; what C2SP signed notes need), for ECDSA P-256 the ASN.1 DER
	// signature over SHA-256(msg). It MUST return a signature that Public verifies or an
	// error, never (nil, nil), and MUST NOT retain msg.
	Sign(ctx context.Context, msg []byte) ([]byte, error)
}

// BatchSigner is a [Signer] that signs many messages in one backend round trip ([KeySigner]
// is one; on Vault a batch of 64 is 4–5 times faster per signature than single calls).
type BatchSigner interface {
	Signer
	// SignBatch returns one signature per message, in order, each as Sign would make it;
	// on error none is returned.
	SignBatch(ctx context.Context, msgs [][]byte) ([][]byte, error)
}

// DigestSigner is a [Signer] of an ECDSA P-256 key that also signs a SHA-256 digest computed
// by the caller ([KeySigner] is one): SignDigest(ctx, SHA-256(msg)) is a signature Sign(ctx,
// msg) could have made, so the same verifiers (cosign among them) accept it, and a large
// message never travels to the backend.
type DigestSigner interface {
	Signer
	// SignDigest returns the ASN.1 DER ECDSA signature of the 32-byte SHA-256 digest. Other
	// lengths and keys other than ECDSA P-256 are refused.
	SignDigest(ctx context.Context, digest []byte) ([]byte, error)
}

// Verifier checks signatures made by the versions of one signing key.
type Verifier interface {
	// Verify returns nil if sig is a valid signature of msg by the key version keyID
	// ([KeyID]) and that version is live (not retired). A signature that does not verify
	// MUST give an *[InvalidSignatureError] (wrapping [ErrInvalidSignature]); an unknown or
	// retired version an error wrapping [ErrKeyNotFound]; other failures (backend
	// unreachable) MUST NOT wrap ErrInvalidSignature.
	Verify(ctx context.Context, keyID string, msg, sig []byte) error
}

// Encrypter is authenticated encryption with associated data ([Envelope]).
type Encrypter interface {
	// Encrypt returns a self-describing ciphertext of plaintext bound to aad. It MUST use
	// the newest key version (subject to the bounded data-key cache of [Config]) and MUST NOT
	// return the same ciphertext twice.
	Encrypt(ctx context.Context, plaintext, aad []byte) ([]byte, error)
	// Decrypt returns the plaintext of a ciphertext made by Encrypt with the same aad, under
	// any live key version. It MUST fail with an error wrapping [ErrDecrypt] when the
	// ciphertext or aad was altered, and MUST NOT return unauthenticated plaintext.
	Decrypt(ctx context.Context, ciphertext, aad []byte) ([]byte, error)
}
