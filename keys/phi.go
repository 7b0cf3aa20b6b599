package keys

import (
	"context"
	"fmt"
)

// PHI encrypts protected health information at rest (patient identifiers, names, free
// text) with the [PHIEncryption] key and computes the keyed blind index used to find a
// record by identifier without storing or querying the plaintext.
//
// Use the record and field as associated data (e.g. "patient/<uuid>/family_name"), so a
// ciphertext copied to another row or column does not decrypt.
type PHI struct {
	r   *Ring
	env *Envelope
}

// blindIndexDomain separates blind-index MACs from any other use of the key.
const blindIndexDomain = "vigil/phi-blind-index/v1\x00"

// PHI returns the PHI helper of the ring.
func (r *Ring) PHI() *PHI {
	env, _ := r.Envelope(PHIEncryption) // PHIEncryption is an encryption purpose
	return &PHI{r: r, env: env}
}

// Envelope returns the underlying envelope encrypter (for [Envelope.RewrapAll]).
func (p *PHI) Envelope() *Envelope { return p.env }

// Seal encrypts one PHI value bound to aad.
func (p *PHI) Seal(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	return p.env.Encrypt(ctx, plaintext, aad)
}

// Open decrypts one PHI value sealed with the same aad.
func (p *PHI) Open(ctx context.Context, ciphertext, aad []byte) ([]byte, error) {
	return p.env.Decrypt(ctx, ciphertext, aad)
}

// OpenBulk decrypts several PHI values at once (an export, a report). It is reported as
// [OpBulkDecrypt] before any plaintext is returned; if the hook fails nothing is returned.
func (p *PHI) OpenBulk(ctx context.Context, items []Sealed) ([][]byte, error) {
	out, err := p.env.DecryptBatch(ctx, items)
	if err != nil {
		return nil, err
	}
	if err := p.r.report(ctx, Operation{Kind: OpBulkDecrypt, Purpose: PHIEncryption, KeyID: string(PHIEncryption), Count: len(items)}); err != nil {
		for _, b := range out {
			clear(b)
		}
		return nil, err
	}
	return out, nil
}

// BlindIndex returns the 32-byte keyed blind index of value: HMAC-SHA-256 under version 1
// of the [PHIBlindIndex] key. Equal values give equal indexes; without the key the index
// reveals nothing about the value. The caller normalises value first (trim, case-fold,
// strip separators) so that lookups match; the normalisation is part of the index.
func (p *PHI) BlindIndex(ctx context.Context, value []byte) ([]byte, error) {
	msg := make([]byte, 0, len(blindIndexDomain)+len(value))
	msg = append(append(msg, blindIndexDomain...), value...)
	mac, _, err := p.r.b.MAC(ctx, string(PHIBlindIndex), 1, msg)
	if err != nil {
		return nil, fmt.Errorf("keys: blind index: %w", err)
	}
	return mac, nil
}
