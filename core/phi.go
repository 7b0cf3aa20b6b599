package core

import "context"

// PHISealer protects patient identifying data (PHI) at rest: envelope encryption for the
// sealed columns and an HMAC blind index for exact-match lookups. It is owned by core and
// satisfied by the keys package's PHI helper (*keys.PHI, Vault Transit or the local ring).
//
// Seal MUST bind the ciphertext to aad (core passes "patient/<id>/phi") so that a sealed value
// copied to another row fails to open, and the ciphertext MUST identify the key version that
// sealed it (rotation, rewrap). Open MUST fail, never return garbage, for a tampered
// ciphertext or the wrong aad, and MUST open values sealed by any key version still held.
// BlindIndex MUST be deterministic for a value and MUST NOT be reversible without the key.
// All methods MUST be safe for concurrent use.
type PHISealer interface {
	Seal(ctx context.Context, plaintext, aad []byte) ([]byte, error)
	Open(ctx context.Context, sealed, aad []byte) ([]byte, error)
	BlindIndex(ctx context.Context, value []byte) ([]byte, error)
}
