package keys

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"time"
)

// OpKind names a key operation reported to [Config.OnOperation].
type OpKind string

// The key operations reported to the hook.
const (
	OpCreate      OpKind = "key.create"       // a key was created (EnsureKeys)
	OpRotate      OpKind = "key.rotate"       // a new key version was made
	OpReleaseSign OpKind = "key.release_sign" // a release-signing signature was made
	OpBulkDecrypt OpKind = "phi.bulk_decrypt" // several PHI fields were decrypted in one call
	OpRewrap      OpKind = "key.rewrap"       // stored data keys were re-wrapped to the newest version
)

// Operation is one key operation that matters for the audit trail. It never carries key
// material or plaintext.
type Operation struct {
	Kind    OpKind
	Purpose Purpose
	KeyID   string // the key version concerned, "<purpose>:v<n>"
	// Count is the number of items (signatures, decrypted fields, re-wrapped ciphertexts).
	Count int
	// Digest is SHA-256 of the signed message for OpReleaseSign.
	Digest []byte
	At     time.Time
}

// OnOperation is the hook type of [Config.OnOperation].
type OnOperation func(ctx context.Context, op Operation) error

// Config configures a [Ring]. Zero values take the documented defaults.
type Config struct {
	// Backend holds the keys (required): [NewLocal] or [NewVault].
	Backend Backend
	// Now is the clock (default time.Now).
	Now func() time.Time
	// DataKeyMaxAge bounds how long one data key keeps encrypting new values (default 10m).
	DataKeyMaxAge time.Duration
	// DataKeyMaxUses bounds how many values one data key encrypts (default 100000; 1 means
	// a fresh data key for every value, i.e. no caching).
	DataKeyMaxUses int
	// UnwrapCacheSize bounds how many unwrapped data keys are kept for decryption
	// (default 4096; negative: none are kept).
	UnwrapCacheSize int
	// UnwrapCacheTTL bounds how long an unwrapped data key is kept (default DataKeyMaxAge).
	UnwrapCacheTTL time.Duration
	// OnOperation, if set, is called for every operation listed under [OpKind], after the
	// backend did it and before the result is returned. If it returns an error the ring
	// returns that error and withholds the result (signature, plaintext): no audit record,
	// no release signature, no bulk decryption. cmd/vigil connects it to the audit chain.
	// It MUST be safe for concurrent use and MUST NOT call back into the Ring.
	OnOperation OnOperation
}

func (c Config) withDefaults() Config {
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.DataKeyMaxAge <= 0 {
		c.DataKeyMaxAge = 10 * time.Minute
	}
	if c.DataKeyMaxUses <= 0 {
		c.DataKeyMaxUses = 100000
	}
	if c.UnwrapCacheSize == 0 {
		c.UnwrapCacheSize = 4096
	}
	if c.UnwrapCacheTTL <= 0 {
		c.UnwrapCacheTTL = c.DataKeyMaxAge
	}
	return c
}

// Ring is Vigil's key ring: keys named by [Purpose] on one [Backend]. It is safe for
// concurrent use.
type Ring struct {
	cfg Config
	b   Backend

	mu        sync.Mutex
	verifiers map[Purpose]*ringVerifier
	envelopes map[Purpose]*Envelope
}

// NewRing returns a key ring on cfg.Backend. It does no I/O; call [Ring.EnsureKeys] to
// create missing keys.
func NewRing(cfg Config) (*Ring, error) {
	if cfg.Backend == nil {
		return nil, errors.New("keys: Config.Backend is required")
	}
	cfg = cfg.withDefaults()
	return &Ring{cfg: cfg, b: cfg.Backend, verifiers: map[Purpose]*ringVerifier{}, envelopes: map[Purpose]*Envelope{}}, nil
}

// Backend returns the ring's backend.
func (r *Ring) Backend() Backend { return r.b }

// Close closes the backend.
func (r *Ring) Close() error { return r.b.Close() }

func (r *Ring) report(ctx context.Context, op Operation) error {
	if r.cfg.OnOperation == nil {
		return nil
	}
	op.At = r.cfg.Now()
	if err := r.cfg.OnOperation(ctx, op); err != nil {
		return fmt.Errorf("keys: audit hook for %s %s: %w", op.Kind, op.KeyID, err)
	}
	return nil
}

func checkPurpose(p Purpose, want func(Algorithm) bool, what string) error {
	if !p.Valid() {
		return fmt.Errorf("%w: unknown purpose %q", ErrWrongPurpose, p)
	}
	if !want(p.Algorithm()) {
		return fmt.Errorf("%w: %s cannot %s", ErrWrongPurpose, p, what)
	}
	return nil
}

// EnsureKeys creates every key in [Purposes] that does not exist yet, reporting each
// creation, and returns the purposes created.
func (r *Ring) EnsureKeys(ctx context.Context) ([]Purpose, error) {
	var created []Purpose
	for _, p := range Purposes {
		ok, err := r.b.CreateKey(ctx, string(p), p.Algorithm())
		if err != nil {
			return created, fmt.Errorf("keys: ensure %s: %w", p, err)
		}
		if ok {
			created = append(created, p)
			if err := r.report(ctx, Operation{Kind: OpCreate, Purpose: p, KeyID: KeyID(p, 1), Count: 1}); err != nil {
				return created, err
			}
		}
	}
	return created, nil
}

// Rotate adds a version to the purpose's key; new work uses it, old versions still verify
// and decrypt. The blind-index key cannot be rotated (it would orphan every index).
func (r *Ring) Rotate(ctx context.Context, p Purpose) (int, error) {
	if !p.Valid() {
		return 0, fmt.Errorf("%w: unknown purpose %q", ErrWrongPurpose, p)
	}
	if p == PHIBlindIndex {
		return 0, fmt.Errorf("%w: %s is never rotated", ErrWrongPurpose, p)
	}
	v, err := r.b.Rotate(ctx, string(p))
	if err != nil {
		return 0, fmt.Errorf("keys: rotate %s: %w", p, err)
	}
	r.mu.Lock()
	env := r.envelopes[p]
	r.mu.Unlock()
	if env != nil {
		env.dropCurrent()
	}
	if err := r.report(ctx, Operation{Kind: OpRotate, Purpose: p, KeyID: KeyID(p, v), Count: 1}); err != nil {
		return v, err
	}
	return v, nil
}

// Info describes the purpose's key.
func (r *Ring) Info(ctx context.Context, p Purpose) (KeyInfo, error) {
	if !p.Valid() {
		return KeyInfo{}, fmt.Errorf("%w: unknown purpose %q", ErrWrongPurpose, p)
	}
	ki, err := r.b.Key(ctx, string(p))
	if err != nil {
		return KeyInfo{}, fmt.Errorf("keys: describe %s: %w", p, err)
	}
	return ki, nil
}

// Signer returns a signer for the latest version of the purpose's key at the time of the
// call. It keeps signing with that version after a rotation; ask again to follow it.
func (r *Ring) Signer(ctx context.Context, p Purpose) (*KeySigner, error) {
	if err := checkPurpose(p, Algorithm.Signs, "sign"); err != nil {
		return nil, err
	}
	ki, err := r.b.Key(ctx, string(p))
	if err != nil {
		return nil, fmt.Errorf("keys: signer %s: %w", p, err)
	}
	pub, ok := ki.Public[ki.Latest]
	if !ok || pub == nil {
		return nil, fmt.Errorf("keys: signer %s: %w: no public key for version %d", p, ErrKeyNotFound, ki.Latest)
	}
	return &KeySigner{r: r, p: p, version: ki.Latest, pub: pub}, nil
}

// KeySigner is the [Signer] of one version of one key, made by [Ring.Signer].
type KeySigner struct {
	r       *Ring
	p       Purpose
	version int
	pub     crypto.PublicKey
}

var (
	_ BatchSigner  = (*KeySigner)(nil)
	_ DigestSigner = (*KeySigner)(nil)
)

// KeyID returns "<purpose>:v<version>".
func (s *KeySigner) KeyID() string { return KeyID(s.p, s.version) }

// Purpose returns the key's purpose.
func (s *KeySigner) Purpose() Purpose { return s.p }

// Version returns the key version.
func (s *KeySigner) Version() int { return s.version }

// Public returns ed25519.PublicKey or *ecdsa.PublicKey.
func (s *KeySigner) Public() crypto.PublicKey { return s.pub }

// Sign signs msg (see [Signer]).
func (s *KeySigner) Sign(ctx context.Context, msg []byte) ([]byte, error) {
	sigs, err := s.SignBatch(ctx, [][]byte{msg})
	if err != nil {
		return nil, err
	}
	return sigs[0], nil
}

// SignBatch signs several messages in one backend call (one Vault request).
func (s *KeySigner) SignBatch(ctx context.Context, msgs [][]byte) ([][]byte, error) {
	if len(msgs) == 0 {
		return [][]byte{}, nil
	}
	sigs, _, err := s.r.b.Sign(ctx, string(s.p), s.version, msgs)
	if err != nil {
		return nil, fmt.Errorf("keys: sign with %s: %w", s.KeyID(), err)
	}
	if len(sigs) != len(msgs) {
		return nil, fmt.Errorf("keys: sign with %s: backend returned %d signatures for %d messages", s.KeyID(), len(sigs), len(msgs))
	}
	// Never hand out a signature that does not verify (a faulty or compromised remote
	// backend); in-process signatures are made with the key the public key comes from.
	for i, sig := range sigs {
		if ip, ok := s.r.b.(interface{ inProcess() bool }); ok && ip.inProcess() {
			break
		}
		if !verifySig(s.pub, msgs[i], sig) {
			return nil, fmt.Errorf("keys: sign with %s: backend signature does not verify: %w", s.KeyID(), &InvalidSignatureError{KeyID: s.KeyID()})
		}
	}
	if s.p == ReleaseSigning {
		for _, m := range msgs {
			d := sha256.Sum256(m)
			if err := s.r.report(ctx, Operation{Kind: OpReleaseSign, Purpose: s.p, KeyID: s.KeyID(), Count: 1, Digest: d[:]}); err != nil {
				return nil, err
			}
		}
	}
	return sigs, nil
}

// SignDigest signs a SHA-256 digest with an ECDSA P-256 key (see [DigestSigner]).
func (s *KeySigner) SignDigest(ctx context.Context, digest []byte) ([]byte, error) {
	sigs, err := s.SignDigests(ctx, [][]byte{digest})
	if err != nil {
		return nil, err
	}
	return sigs[0], nil
}

// SignDigests signs several SHA-256 digests in one backend call: each signature is the one
// Sign makes of the message whose digest it is. Only ECDSA P-256 keys sign digests (Ed25519
// signs the message itself): for others the error wraps [ErrWrongPurpose]. Release-signing
// signatures are reported to the hook with the digest, as Sign reports them.
func (s *KeySigner) SignDigests(ctx context.Context, digests [][]byte) ([][]byte, error) {
	pub, ok := s.pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("keys: sign digest with %s: %w: only ECDSA P-256 keys sign digests", s.KeyID(), ErrWrongPurpose)
	}
	if err := checkDigests(digests); err != nil {
		return nil, fmt.Errorf("keys: sign digest with %s: %w", s.KeyID(), err)
	}
	if len(digests) == 0 {
		return [][]byte{}, nil
	}
	sigs, _, err := s.r.b.SignDigests(ctx, string(s.p), s.version, digests)
	if err != nil {
		return nil, fmt.Errorf("keys: sign digest with %s: %w", s.KeyID(), err)
	}
	if len(sigs) != len(digests) {
		return nil, fmt.Errorf("keys: sign digest with %s: backend returned %d signatures for %d digests", s.KeyID(), len(sigs), len(digests))
	}
	// As SignBatch: a remote backend's signature is checked before it is handed out.
	if ip, ok := s.r.b.(interface{ inProcess() bool }); !ok || !ip.inProcess() {
		for i, sig := range sigs {
			if !ecdsa.VerifyASN1(pub, digests[i], sig) {
				return nil, fmt.Errorf("keys: sign digest with %s: backend signature does not verify: %w", s.KeyID(), &InvalidSignatureError{KeyID: s.KeyID()})
			}
		}
	}
	if s.p == ReleaseSigning {
		for _, d := range digests {
			if err := s.r.report(ctx, Operation{Kind: OpReleaseSign, Purpose: s.p, KeyID: s.KeyID(), Count: 1, Digest: append([]byte(nil), d...)}); err != nil {
				return nil, err
			}
		}
	}
	return sigs, nil
}

// VerifySignature checks sig over msg with pub: raw Ed25519 for ed25519.PublicKey,
// ASN.1 ECDSA over SHA-256(msg) for *ecdsa.PublicKey.
func VerifySignature(pub crypto.PublicKey, msg, sig []byte) bool { return verifySig(pub, msg, sig) }

func verifySig(pub crypto.PublicKey, msg, sig []byte) bool {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return len(k) == ed25519.PublicKeySize && ed25519.Verify(k, msg, sig)
	case *ecdsa.PublicKey:
		d := sha256.Sum256(msg)
		return ecdsa.VerifyASN1(k, d[:], sig)
	}
	return false
}

// Verifier returns the verifier of the purpose's signatures, over every live key version.
// Public keys are fetched from the backend once and cached (they never change for a
// version); an unknown newer version triggers at most one refresh per second.
func (r *Ring) Verifier(p Purpose) (Verifier, error) {
	if err := checkPurpose(p, Algorithm.Signs, "verify"); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	v := r.verifiers[p]
	if v == nil {
		v = &ringVerifier{r: r, p: p, pubs: map[int]crypto.PublicKey{}}
		r.verifiers[p] = v
	}
	return v, nil
}

type ringVerifier struct {
	r *Ring
	p Purpose

	mu      sync.Mutex
	pubs    map[int]crypto.PublicKey
	min     int
	latest  int
	fetched time.Time
}

func (v *ringVerifier) Verify(ctx context.Context, keyID string, msg, sig []byte) error {
	p, ver, err := ParseKeyID(keyID)
	if err != nil {
		return &InvalidSignatureError{KeyID: keyID}
	}
	if p != v.p {
		return fmt.Errorf("keys: verify %s with %s verifier: %w", keyID, v.p, &InvalidSignatureError{KeyID: keyID})
	}
	pub, err := v.public(ctx, ver)
	if err != nil {
		return err
	}
	if !verifySig(pub, msg, sig) {
		return &InvalidSignatureError{KeyID: keyID}
	}
	return nil
}

func (v *ringVerifier) public(ctx context.Context, ver int) (crypto.PublicKey, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if pub, ok := v.pubs[ver]; ok && ver >= v.min {
		return pub, nil
	}
	now := v.r.cfg.Now()
	if v.fetched.IsZero() || now.Sub(v.fetched) >= time.Second {
		ki, err := v.r.b.Key(ctx, string(v.p))
		if err != nil {
			return nil, fmt.Errorf("keys: verify %s: %w", KeyID(v.p, ver), err)
		}
		v.fetched = now
		v.min, v.latest = ki.MinDecrypt, ki.Latest
		v.pubs = make(map[int]crypto.PublicKey, len(ki.Public))
		for k, pk := range ki.Public {
			v.pubs[k] = pk
		}
	}
	if pub, ok := v.pubs[ver]; ok && ver >= v.min {
		return pub, nil
	}
	return nil, fmt.Errorf("keys: verify: %w: %s", ErrKeyNotFound, KeyID(v.p, ver))
}

// MAC returns HMAC-SHA-256 of msg under the latest version of a MAC purpose
// ([WebhookHMAC]) and the key id to send along.
func (r *Ring) MAC(ctx context.Context, p Purpose, msg []byte) (mac []byte, keyID string, err error) {
	if err := checkPurpose(p, func(a Algorithm) bool { return a == HMACSHA256 }, "MAC"); err != nil {
		return nil, "", err
	}
	m, v, err := r.b.MAC(ctx, string(p), 0, msg)
	if err != nil {
		return nil, "", fmt.Errorf("keys: mac %s: %w", p, err)
	}
	return m, KeyID(p, v), nil
}

// VerifyMAC checks a MAC made by [Ring.MAC] in constant time; a mismatch is an
// *[InvalidSignatureError].
func (r *Ring) VerifyMAC(ctx context.Context, keyID string, msg, mac []byte) error {
	p, ver, err := ParseKeyID(keyID)
	if err != nil {
		return &InvalidSignatureError{KeyID: keyID}
	}
	if err := checkPurpose(p, func(a Algorithm) bool { return a == HMACSHA256 }, "MAC"); err != nil {
		return err
	}
	want, _, err := r.b.MAC(ctx, string(p), ver, msg)
	if err != nil {
		return fmt.Errorf("keys: verify mac %s: %w", keyID, err)
	}
	if !hmac.Equal(want, mac) {
		return &InvalidSignatureError{KeyID: keyID}
	}
	return nil
}

// PublicKey is the public key of one version of a signing key.
type PublicKey struct {
	KeyID   string
	Version int
	Key     crypto.PublicKey // ed25519.PublicKey or *ecdsa.PublicKey
}

// PublicKeys returns the public keys of every live version of a signing key, oldest first
// (for publishing them, e.g. the audit log's verifier keys).
func (r *Ring) PublicKeys(ctx context.Context, p Purpose) ([]PublicKey, error) {
	if err := checkPurpose(p, Algorithm.Signs, "sign"); err != nil {
		return nil, err
	}
	ki, err := r.b.Key(ctx, string(p))
	if err != nil {
		return nil, fmt.Errorf("keys: public keys %s: %w", p, err)
	}
	var out []PublicKey
	for v := ki.MinDecrypt; v <= ki.Latest; v++ {
		if pk, ok := ki.Public[v]; ok && pk != nil {
			out = append(out, PublicKey{KeyID: KeyID(p, v), Version: v, Key: pk})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("keys: public keys %s: %w", p, ErrKeyNotFound)
	}
	return out, nil
}

// checkDigests refuses digests that are not SHA-256 digests (32 bytes).
func checkDigests(digests [][]byte) error {
	for i, d := range digests {
		if len(d) != sha256.Size {
			return fmt.Errorf("digest %d is %d bytes, want a SHA-256 digest (%d bytes)", i, len(d), sha256.Size)
		}
	}
	return nil
}
