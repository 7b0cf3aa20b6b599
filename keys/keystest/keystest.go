// Package keystest is the conformance suite of keys.Backend implementations: every backend
// (keys.Local, keys.Vault) runs Run against the real thing, through a keys.Ring, so that the
// contracts of the keys package hold whatever holds the keys. It also starts a real Vault dev
// server for tests (StartVault).
package keystest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/internal/testclock"
	"github.com/vigilhealth/vigil/keys"
)

// Factory returns a new, empty backend (no keys) for one subtest; the suite closes it.
type Factory func(t *testing.T) keys.Backend

// Clock is the tests' controlled clock (internal/testclock).
type Clock = testclock.Clock

// NewClock returns a clock at a fixed instant.
func NewClock() *Clock { return testclock.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) }

// counting wraps a backend and counts data-key generations and unwraps (a decorator, the
// real backend does the work).
type counting struct {
	keys.Backend
	generated atomic.Int64
	unwrapped atomic.Int64
	rewrapped atomic.Int64
}

func (c *counting) RewrapDataKey(ctx context.Context, name string, w []byte) ([]byte, error) {
	c.rewrapped.Add(1)
	return c.Backend.RewrapDataKey(ctx, name, w)
}

func (c *counting) GenerateDataKey(ctx context.Context, name string) ([]byte, []byte, error) {
	c.generated.Add(1)
	return c.Backend.GenerateDataKey(ctx, name)
}

func (c *counting) UnwrapDataKeys(ctx context.Context, name string, w [][]byte) ([][]byte, error) {
	c.unwrapped.Add(int64(len(w)))
	return c.Backend.UnwrapDataKeys(ctx, name, w)
}

type recorder struct {
	mu   sync.Mutex
	ops  []keys.Operation
	fail error
}

func (r *recorder) hook(_ context.Context, op keys.Operation) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, op)
	return r.fail
}

func (r *recorder) count(kind keys.OpKind) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, op := range r.ops {
		if op.Kind == kind {
			n++
		}
	}
	return n
}

func (r *recorder) setFail(err error) { r.mu.Lock(); r.fail = err; r.mu.Unlock() }

type env struct {
	ring  *keys.Ring
	b     *counting
	clock *Clock
	rec   *recorder
}

func setup(t *testing.T, f Factory, mod func(*keys.Config)) *env {
	t.Helper()
	b := &counting{Backend: f(t)}
	t.Cleanup(func() { _ = b.Close() })
	e := &env{b: b, clock: NewClock(), rec: &recorder{}}
	cfg := keys.Config{Backend: b, Now: e.clock.Now, OnOperation: e.rec.hook, DataKeyMaxUses: 3, DataKeyMaxAge: time.Minute}
	if mod != nil {
		mod(&cfg)
	}
	r, err := keys.NewRing(cfg)
	if err != nil {
		t.Fatalf("NewRing() = %v", err)
	}
	e.ring = r
	if _, err := r.EnsureKeys(context.Background()); err != nil {
		t.Fatalf("EnsureKeys() = %v", err)
	}
	return e
}

// Run runs the conformance suite. Each subtest gets a fresh backend from f.
func Run(t *testing.T, f Factory) {
	ctx := context.Background()

	t.Run("MissingKeys", func(t *testing.T) {
		b := f(t)
		defer b.Close()
		r, err := keys.NewRing(keys.Config{Backend: b})
		if err != nil {
			t.Fatal(err)
		}
		s, err := r.Signer(ctx, keys.AuditCheckpoint)
		if !errors.Is(err, keys.ErrKeyNotFound) || s != nil {
			t.Errorf("Signer(no keys) = %v, %v, want nil, ErrKeyNotFound", s, err)
		}
		env, err := r.Envelope(keys.PHIEncryption)
		if err != nil {
			t.Fatal(err)
		}
		ct, err := env.Encrypt(ctx, []byte("x"), nil)
		if !errors.Is(err, keys.ErrKeyNotFound) || ct != nil {
			t.Errorf("Encrypt(no keys) = %x, %v, want nil, ErrKeyNotFound", ct, err)
		}
		if _, err := r.Rotate(ctx, keys.ReceiptSigning); !errors.Is(err, keys.ErrKeyNotFound) {
			t.Errorf("Rotate(no keys) = %v, want ErrKeyNotFound", err)
		}
		if _, err := r.Info(ctx, keys.WebhookHMAC); !errors.Is(err, keys.ErrKeyNotFound) {
			t.Errorf("Info(no keys) = %v, want ErrKeyNotFound", err)
		}
	})

	t.Run("EnsureKeys", func(t *testing.T) {
		e := setup(t, f, nil)
		if n := e.rec.count(keys.OpCreate); n != len(keys.Purposes) {
			t.Errorf("OpCreate reports = %d, want %d", n, len(keys.Purposes))
		}
		created, err := e.ring.EnsureKeys(ctx)
		if err != nil || len(created) != 0 {
			t.Errorf("EnsureKeys() again = %v, %v, want none created", created, err)
		}
		for _, p := range keys.Purposes {
			ki, err := e.ring.Info(ctx, p)
			if err != nil {
				t.Fatalf("Info(%s) = %v", p, err)
			}
			if ki.Algorithm != p.Algorithm() || ki.Latest != 1 {
				t.Errorf("Info(%s) = %s v%d, want %s v1", p, ki.Algorithm, ki.Latest, p.Algorithm())
			}
		}
	})

	t.Run("SignAndVerify", func(t *testing.T) {
		e := setup(t, f, nil)
		msg := []byte("vigil.example/log\n42\nq0Kl7cQH4ZbIqiXjThAPbgiPz/s6AdFXtwH87Yt7n9A=\n")
		for _, p := range []keys.Purpose{keys.AuditCheckpoint, keys.ReceiptSigning, keys.ReleaseSigning} {
			s, err := e.ring.Signer(ctx, p)
			if err != nil {
				t.Fatalf("Signer(%s) = %v", p, err)
			}
			if s.KeyID() != keys.KeyID(p, 1) {
				t.Errorf("Signer(%s).KeyID() = %q, want %q", p, s.KeyID(), keys.KeyID(p, 1))
			}
			sig, err := s.Sign(ctx, msg)
			if err != nil || len(sig) == 0 {
				t.Fatalf("Sign(%s) = %x, %v", p, sig, err)
			}
			// The signature is usable with the standard library alone.
			switch pub := s.Public().(type) {
			case ed25519.PublicKey:
				if p.Algorithm() != keys.Ed25519 || !ed25519.Verify(pub, msg, sig) {
					t.Errorf("ed25519.Verify(%s) = false, want true", p)
				}
			case *ecdsa.PublicKey:
				h := sha256.Sum256(msg)
				if p.Algorithm() != keys.ECDSAP256 || !ecdsa.VerifyASN1(pub, h[:], sig) {
					t.Errorf("ecdsa.VerifyASN1(%s) = false, want true", p)
				}
			default:
				t.Errorf("Signer(%s).Public() = %T", p, pub)
			}
			v, err := e.ring.Verifier(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := v.Verify(ctx, s.KeyID(), msg, sig); err != nil {
				t.Errorf("Verify(%s, good) = %v, want nil", p, err)
			}
			bad := append([]byte(nil), sig...)
			bad[len(bad)/2] ^= 1
			var ise *keys.InvalidSignatureError
			if err := v.Verify(ctx, s.KeyID(), msg, bad); !errors.As(err, &ise) || !errors.Is(err, keys.ErrInvalidSignature) {
				t.Errorf("Verify(%s, altered sig) = %v, want *InvalidSignatureError", p, err)
			}
			if err := v.Verify(ctx, s.KeyID(), append(msg, 'x'), sig); !errors.Is(err, keys.ErrInvalidSignature) {
				t.Errorf("Verify(%s, altered msg) = %v, want ErrInvalidSignature", p, err)
			}
			if err := v.Verify(ctx, keys.KeyID(p, 9), msg, sig); !errors.Is(err, keys.ErrKeyNotFound) {
				t.Errorf("Verify(%s, version 9) = %v, want ErrKeyNotFound", p, err)
			}
			if err := v.Verify(ctx, "garbage", msg, sig); !errors.Is(err, keys.ErrInvalidSignature) {
				t.Errorf("Verify(%s, bad key id) = %v, want ErrInvalidSignature", p, err)
			}
			sigs, err := s.SignBatch(ctx, [][]byte{[]byte("a"), []byte("b"), []byte("c")})
			if err != nil || len(sigs) != 3 {
				t.Fatalf("SignBatch(%s) = %d, %v, want 3 signatures", p, len(sigs), err)
			}
			for i, m := range []string{"a", "b", "c"} {
				if err := v.Verify(ctx, s.KeyID(), []byte(m), sigs[i]); err != nil {
					t.Errorf("Verify(%s, batch item %d) = %v", p, i, err)
				}
			}
		}
		if n := e.rec.count(keys.OpReleaseSign); n != 4 {
			t.Errorf("OpReleaseSign reports = %d, want 4 (1 + batch of 3)", n)
		}
	})

	t.Run("SignDigest", func(t *testing.T) {
		// A release-signing key signs a SHA-256 digest computed by the caller: the signature
		// is the one of the message (the message verifier accepts it), the backend sees only
		// 32 bytes, the hook gets the digest, and an old Signer keeps its version.
		e := setup(t, f, nil)
		old, err := e.ring.Signer(ctx, keys.ReleaseSigning)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.ring.Rotate(ctx, keys.ReleaseSigning); err != nil {
			t.Fatal(err)
		}
		cur, err := e.ring.Signer(ctx, keys.ReleaseSigning)
		if err != nil {
			t.Fatal(err)
		}
		v, err := e.ring.Verifier(keys.ReleaseSigning)
		if err != nil {
			t.Fatal(err)
		}
		msg := []byte("vigil release manifest\n")
		d := sha256.Sum256(msg)
		for _, s := range []*keys.KeySigner{old, cur} {
			var ds keys.DigestSigner = s
			sig, err := ds.SignDigest(ctx, d[:])
			if err != nil {
				t.Fatalf("SignDigest(%s) = %v", s.KeyID(), err)
			}
			if err := v.Verify(ctx, s.KeyID(), msg, sig); err != nil {
				t.Errorf("Verify(%s, message, signature of its digest) = %v, want nil", s.KeyID(), err)
			}
			if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
				t.Errorf("ecdsa.VerifyASN1(%s, digest) = false", s.KeyID())
			}
			if err := v.Verify(ctx, s.KeyID(), append(msg, 'x'), sig); !errors.Is(err, keys.ErrInvalidSignature) {
				t.Errorf("Verify(%s, other message) = %v, want ErrInvalidSignature", s.KeyID(), err)
			}
		}
		other := keys.KeyID(keys.ReleaseSigning, 2)
		if sig, _ := old.SignDigest(ctx, d[:]); v.Verify(ctx, other, msg, sig) == nil {
			t.Errorf("a v1 digest signature verifies as %s", other)
		}
		sigs, err := cur.SignDigests(ctx, [][]byte{d[:], d[:]})
		if err != nil || len(sigs) != 2 {
			t.Fatalf("SignDigests(2) = %d, %v", len(sigs), err)
		}
		for i, sig := range sigs {
			if err := v.Verify(ctx, cur.KeyID(), msg, sig); err != nil {
				t.Errorf("Verify(batch item %d) = %v", i, err)
			}
		}
		e.rec.mu.Lock()
		var digests int
		for _, op := range e.rec.ops {
			if op.Kind == keys.OpReleaseSign && bytes.Equal(op.Digest, d[:]) {
				digests++
			}
		}
		e.rec.mu.Unlock()
		if digests != 5 {
			t.Errorf("OpReleaseSign reports with the digest = %d, want 5 (old, cur, old again, batch of 2)", digests)
		}
		for _, bad := range [][]byte{nil, d[:31], append(d[:], 0)} {
			if sig, err := cur.SignDigest(ctx, bad); err == nil || sig != nil {
				t.Errorf("SignDigest(%d bytes) = %x, %v, want an error", len(bad), sig, err)
			}
		}
		ed, err := e.ring.Signer(ctx, keys.AuditCheckpoint)
		if err != nil {
			t.Fatal(err)
		}
		if sig, err := ed.SignDigest(ctx, d[:]); !errors.Is(err, keys.ErrWrongPurpose) || sig != nil {
			t.Errorf("SignDigest(ed25519 key) = %x, %v, want ErrWrongPurpose", sig, err)
		}
		// The backend itself refuses too (an Ed25519 key signs messages only).
		if sigs, _, err := e.b.SignDigests(ctx, string(keys.AuditCheckpoint), 0, [][]byte{d[:]}); !errors.Is(err, keys.ErrWrongPurpose) || sigs != nil {
			t.Errorf("Backend.SignDigests(ed25519 key) = %x, %v, want ErrWrongPurpose", sigs, err)
		}
		if sigs, _, err := e.b.SignDigests(ctx, string(keys.ReleaseSigning), 0, [][]byte{[]byte("short")}); err == nil || sigs != nil {
			t.Errorf("Backend.SignDigests(5-byte digest) = %x, %v, want an error", sigs, err)
		}
	})

	t.Run("WrongPurpose", func(t *testing.T) {
		e := setup(t, f, nil)
		for _, p := range []keys.Purpose{keys.PHIEncryption, keys.WebhookHMAC, keys.PHIBlindIndex, "nonsense"} {
			if s, err := e.ring.Signer(ctx, p); !errors.Is(err, keys.ErrWrongPurpose) || s != nil {
				t.Errorf("Signer(%q) = %v, %v, want ErrWrongPurpose", p, s, err)
			}
		}
		if _, err := e.ring.Envelope(keys.AuditCheckpoint); !errors.Is(err, keys.ErrWrongPurpose) {
			t.Errorf("Envelope(audit-checkpoint) = %v, want ErrWrongPurpose", err)
		}
		if _, err := e.ring.Rotate(ctx, keys.PHIBlindIndex); !errors.Is(err, keys.ErrWrongPurpose) {
			t.Errorf("Rotate(phi-blind-index) = %v, want ErrWrongPurpose", err)
		}
		if _, _, err := e.ring.MAC(ctx, keys.ReceiptSigning, []byte("x")); !errors.Is(err, keys.ErrWrongPurpose) {
			t.Errorf("MAC(receipt-signing) = %v, want ErrWrongPurpose", err)
		}
	})

	t.Run("RotateSigning", func(t *testing.T) {
		e := setup(t, f, nil)
		for _, p := range []keys.Purpose{keys.AuditCheckpoint, keys.ReleaseSigning} {
			old, err := e.ring.Signer(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			oldSig, err := old.Sign(ctx, []byte("before"))
			if err != nil {
				t.Fatal(err)
			}
			v, err := e.ring.Rotate(ctx, p)
			if err != nil || v != 2 {
				t.Fatalf("Rotate(%s) = %d, %v, want 2", p, v, err)
			}
			cur, err := e.ring.Signer(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			if cur.KeyID() != keys.KeyID(p, 2) {
				t.Errorf("Signer(%s) after rotate: KeyID() = %q, want %q", p, cur.KeyID(), keys.KeyID(p, 2))
			}
			if fmt.Sprint(cur.Public()) == fmt.Sprint(old.Public()) {
				t.Errorf("Signer(%s) after rotate: same public key as version 1", p)
			}
			// An old Signer keeps its version.
			if old.KeyID() != keys.KeyID(p, 1) {
				t.Errorf("old Signer(%s).KeyID() = %q after rotate, want v1", p, old.KeyID())
			}
			again, err := old.Sign(ctx, []byte("after"))
			if err != nil {
				t.Fatal(err)
			}
			ver, _ := e.ring.Verifier(p)
			newSig, err := cur.Sign(ctx, []byte("new"))
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				id       string
				msg, sig []byte
			}{{old.KeyID(), []byte("before"), oldSig}, {old.KeyID(), []byte("after"), again}, {cur.KeyID(), []byte("new"), newSig}} {
				if err := ver.Verify(ctx, c.id, c.msg, c.sig); err != nil {
					t.Errorf("Verify(%s, %q) after rotate = %v, want nil", c.id, c.msg, err)
				}
			}
			if err := ver.Verify(ctx, cur.KeyID(), []byte("before"), oldSig); !errors.Is(err, keys.ErrInvalidSignature) {
				t.Errorf("Verify(v1 signature as v2) = %v, want ErrInvalidSignature", err)
			}
			pks, err := e.ring.PublicKeys(ctx, p)
			if err != nil || len(pks) != 2 || pks[0].KeyID != keys.KeyID(p, 1) || pks[1].KeyID != keys.KeyID(p, 2) {
				t.Errorf("PublicKeys(%s) = %v, %v, want v1 and v2", p, pks, err)
			}
		}
		if n := e.rec.count(keys.OpRotate); n != 2 {
			t.Errorf("OpRotate reports = %d, want 2", n)
		}
	})

	t.Run("Envelope", func(t *testing.T) {
		e := setup(t, f, nil)
		enc, err := e.ring.Envelope(keys.PHIEncryption)
		if err != nil {
			t.Fatal(err)
		}
		pt, aad := []byte("Ada Lovelace, MRN 12345"), []byte("patient/1/name")
		c1, err := enc.Encrypt(ctx, pt, aad)
		if err != nil {
			t.Fatalf("Encrypt() = %v", err)
		}
		c2, err := enc.Encrypt(ctx, pt, aad)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(c1, c2) || bytes.Contains(c1, pt) {
			t.Errorf("Encrypt() twice gave equal ciphertexts or plaintext visible")
		}
		for _, c := range [][]byte{c1, c2} {
			got, err := enc.Decrypt(ctx, c, aad)
			if err != nil || !bytes.Equal(got, pt) {
				t.Errorf("Decrypt() = %q, %v, want %q", got, err, pt)
			}
		}
		if got, err := enc.Decrypt(ctx, c1, []byte("patient/2/name")); !errors.Is(err, keys.ErrDecrypt) || got != nil {
			t.Errorf("Decrypt(other aad) = %q, %v, want nil, ErrDecrypt", got, err)
		}
		for _, i := range []int{0, 1, len(c1) / 2, len(c1) - 1} {
			bad := append([]byte(nil), c1...)
			bad[i] ^= 0x20
			if got, err := enc.Decrypt(ctx, bad, aad); err == nil || got != nil {
				t.Errorf("Decrypt(byte %d altered) = %q, %v, want an error", i, got, err)
			}
		}
		for _, bad := range [][]byte{nil, {}, {1}, {1, 200}, c1[:20]} {
			if got, err := enc.Decrypt(ctx, bad, aad); !errors.Is(err, keys.ErrDecrypt) || got != nil {
				t.Errorf("Decrypt(%x) = %q, %v, want ErrDecrypt", bad, got, err)
			}
		}
		// Empty plaintext and aad work.
		c3, err := enc.Encrypt(ctx, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := enc.Decrypt(ctx, c3, nil); err != nil || len(got) != 0 {
			t.Errorf("Decrypt(empty) = %q, %v", got, err)
		}
	})

	t.Run("DataKeyCacheBounds", func(t *testing.T) {
		e := setup(t, f, nil) // DataKeyMaxUses 3, DataKeyMaxAge 1m
		enc, _ := e.ring.Envelope(keys.PHIEncryption)
		var cts [][]byte
		for i := 0; i < 7; i++ {
			c, err := enc.Encrypt(ctx, []byte{byte(i)}, nil)
			if err != nil {
				t.Fatal(err)
			}
			cts = append(cts, c)
		}
		if n := e.b.generated.Load(); n != 3 {
			t.Errorf("data keys generated for 7 writes with max 3 uses = %d, want 3", n)
		}
		// Decryption reuses cached data keys: the generated ones are already known.
		before := e.b.unwrapped.Load()
		for _, c := range cts {
			if _, err := enc.Decrypt(ctx, c, nil); err != nil {
				t.Fatal(err)
			}
		}
		if n := e.b.unwrapped.Load() - before; n != 0 {
			t.Errorf("unwraps for cached data keys = %d, want 0", n)
		}
		e.clock.Advance(61 * time.Second)
		if _, err := enc.Encrypt(ctx, []byte("late"), nil); err != nil {
			t.Fatal(err)
		}
		if n := e.b.generated.Load(); n != 4 {
			t.Errorf("data keys generated after max age = %d, want 4", n)
		}
		// Cached unwrapped keys expire too.
		before = e.b.unwrapped.Load()
		if _, err := enc.Decrypt(ctx, cts[0], nil); err != nil {
			t.Fatal(err)
		}
		if n := e.b.unwrapped.Load() - before; n != 1 {
			t.Errorf("unwraps after the cache TTL = %d, want 1", n)
		}
		// A ring without caching unwraps once per distinct data key, batched.
		r2, _ := keys.NewRing(keys.Config{Backend: e.b, Now: e.clock.Now, UnwrapCacheSize: -1})
		enc2, _ := r2.Envelope(keys.PHIEncryption)
		items := make([]keys.Sealed, len(cts))
		for i, c := range cts {
			items[i] = keys.Sealed{Ciphertext: c}
		}
		before = e.b.unwrapped.Load()
		out, err := enc2.DecryptBatch(ctx, items)
		if err != nil || len(out) != len(cts) {
			t.Fatalf("DecryptBatch() = %d, %v", len(out), err)
		}
		for i := range out {
			if !bytes.Equal(out[i], []byte{byte(i)}) {
				t.Errorf("DecryptBatch()[%d] = %x, want %x", i, out[i], []byte{byte(i)})
			}
		}
		if n := e.b.unwrapped.Load() - before; n != 3 {
			t.Errorf("unwraps for 7 ciphertexts under 3 data keys = %d, want 3", n)
		}
	})

	t.Run("RotateEnvelope", func(t *testing.T) {
		e := setup(t, f, nil)
		enc, _ := e.ring.Envelope(keys.PHIEncryption)
		aad := []byte("a")
		old, err := enc.Encrypt(ctx, []byte("old"), aad)
		if err != nil {
			t.Fatal(err)
		}
		if v, err := keys.CiphertextVersion(old); err != nil || v != 1 {
			t.Errorf("CiphertextVersion(before rotate) = %d, %v, want 1", v, err)
		}
		if _, err := e.ring.Rotate(ctx, keys.PHIEncryption); err != nil {
			t.Fatal(err)
		}
		nw, err := enc.Encrypt(ctx, []byte("new"), aad)
		if err != nil {
			t.Fatal(err)
		}
		if v, err := keys.CiphertextVersion(nw); err != nil || v != 2 {
			t.Errorf("CiphertextVersion(after rotate) = %d, %v, want 2 (new work uses the newest version)", v, err)
		}
		// A fresh ring (no cache) still decrypts the old one.
		r2, _ := keys.NewRing(keys.Config{Backend: e.b, UnwrapCacheSize: -1})
		enc2, _ := r2.Envelope(keys.PHIEncryption)
		if got, err := enc2.Decrypt(ctx, old, aad); err != nil || string(got) != "old" {
			t.Errorf("Decrypt(v1 ciphertext after rotate) = %q, %v, want old", got, err)
		}
		re, err := enc2.Rewrap(ctx, old)
		if err != nil {
			t.Fatalf("Rewrap() = %v", err)
		}
		if v, err := keys.CiphertextVersion(re); err != nil || v != 2 {
			t.Errorf("CiphertextVersion(rewrapped) = %d, %v, want 2", v, err)
		}
		if got, err := enc2.Decrypt(ctx, re, aad); err != nil || string(got) != "old" {
			t.Errorf("Decrypt(rewrapped) = %q, %v, want old", got, err)
		}
		if got, err := enc2.Decrypt(ctx, re, []byte("b")); !errors.Is(err, keys.ErrDecrypt) {
			t.Errorf("Decrypt(rewrapped, other aad) = %q, %v, want ErrDecrypt", got, err)
		}
	})

	t.Run("RewrapAll", func(t *testing.T) {
		e := setup(t, f, nil)
		enc, _ := e.ring.Envelope(keys.PHIEncryption)
		st := &memStore{}
		for i := 0; i < 25; i++ {
			c, err := enc.Encrypt(ctx, []byte(fmt.Sprint(i)), []byte(fmt.Sprint("row", i)))
			if err != nil {
				t.Fatal(err)
			}
			st.rows = append(st.rows, c)
		}
		if _, err := e.ring.Rotate(ctx, keys.PHIEncryption); err != nil {
			t.Fatal(err)
		}
		n, err := enc.RewrapAll(ctx, st, 10)
		if err != nil || n != 25 {
			t.Fatalf("RewrapAll() = %d, %v, want 25", n, err)
		}
		if c := e.b.rewrapped.Load(); c != 9 {
			t.Errorf("backend re-wraps for 25 values under 9 data keys = %d, want 9", c)
		}
		for i, c := range st.rows {
			if v, _ := keys.CiphertextVersion(c); v != 2 {
				t.Errorf("row %d version after RewrapAll = %d, want 2", i, v)
			}
			if got, err := enc.Decrypt(ctx, c, []byte(fmt.Sprint("row", i))); err != nil || string(got) != fmt.Sprint(i) {
				t.Errorf("Decrypt(row %d) = %q, %v", i, got, err)
			}
		}
		if n, err := enc.RewrapAll(ctx, st, 10); err != nil || n != 0 {
			t.Errorf("RewrapAll() again = %d, %v, want 0", n, err)
		}
		if c := e.rec.count(keys.OpRewrap); c != 2 {
			t.Errorf("OpRewrap reports = %d, want 2", c)
		}
	})

	t.Run("MAC", func(t *testing.T) {
		e := setup(t, f, nil)
		m1, id1, err := e.ring.MAC(ctx, keys.WebhookHMAC, []byte("body"))
		if err != nil || len(m1) != 32 || id1 != keys.KeyID(keys.WebhookHMAC, 1) {
			t.Fatalf("MAC() = %x, %q, %v", m1, id1, err)
		}
		if err := e.ring.VerifyMAC(ctx, id1, []byte("body"), m1); err != nil {
			t.Errorf("VerifyMAC(good) = %v", err)
		}
		if err := e.ring.VerifyMAC(ctx, id1, []byte("body2"), m1); !errors.Is(err, keys.ErrInvalidSignature) {
			t.Errorf("VerifyMAC(other body) = %v, want ErrInvalidSignature", err)
		}
		if _, err := e.ring.Rotate(ctx, keys.WebhookHMAC); err != nil {
			t.Fatal(err)
		}
		m2, id2, err := e.ring.MAC(ctx, keys.WebhookHMAC, []byte("body"))
		if err != nil || id2 != keys.KeyID(keys.WebhookHMAC, 2) || bytes.Equal(m1, m2) {
			t.Errorf("MAC() after rotate = %x, %q, %v, want a v2 MAC different from v1", m2, id2, err)
		}
		if err := e.ring.VerifyMAC(ctx, id1, []byte("body"), m1); err != nil {
			t.Errorf("VerifyMAC(v1 after rotate) = %v", err)
		}
	})

	t.Run("PHI", func(t *testing.T) {
		e := setup(t, f, nil)
		phi := e.ring.PHI()
		i1, err := phi.BlindIndex(ctx, []byte("MRN-0001"))
		if err != nil || len(i1) != 32 {
			t.Fatalf("BlindIndex() = %x, %v", i1, err)
		}
		i2, _ := phi.BlindIndex(ctx, []byte("MRN-0001"))
		i3, _ := phi.BlindIndex(ctx, []byte("MRN-0002"))
		if !bytes.Equal(i1, i2) || bytes.Equal(i1, i3) {
			t.Errorf("BlindIndex: equal values gave %x, %x; different gave %x", i1, i2, i3)
		}
		if _, err := e.ring.Rotate(ctx, keys.PHIEncryption); err != nil {
			t.Fatal(err)
		}
		if i4, _ := phi.BlindIndex(ctx, []byte("MRN-0001")); !bytes.Equal(i1, i4) {
			t.Errorf("BlindIndex changed after rotating phi-encryption: %x, want %x", i4, i1)
		}
		var items []keys.Sealed
		for i := 0; i < 5; i++ {
			aad := []byte(fmt.Sprint("patient/", i, "/name"))
			c, err := phi.Seal(ctx, []byte(fmt.Sprint("name", i)), aad)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := phi.Open(ctx, c, aad); err != nil || string(got) != fmt.Sprint("name", i) {
				t.Errorf("Open() = %q, %v", got, err)
			}
			items = append(items, keys.Sealed{Ciphertext: c, AAD: aad})
		}
		out, err := phi.OpenBulk(ctx, items)
		if err != nil || len(out) != 5 || string(out[4]) != "name4" {
			t.Errorf("OpenBulk() = %q, %v", out, err)
		}
		if n := e.rec.count(keys.OpBulkDecrypt); n != 1 {
			t.Errorf("OpBulkDecrypt reports = %d, want 1", n)
		}
		// If the audit hook fails, nothing is returned.
		e.rec.setFail(errors.New("audit down"))
		if out, err := phi.OpenBulk(ctx, items); err == nil || out != nil {
			t.Errorf("OpenBulk(hook fails) = %q, %v, want nil and an error", out, err)
		}
		s, _ := e.ring.Signer(ctx, keys.ReleaseSigning)
		if sig, err := s.Sign(ctx, []byte("release")); err == nil || sig != nil {
			t.Errorf("Sign(release, hook fails) = %x, %v, want nil and an error", sig, err)
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		e := setup(t, f, nil)
		enc, _ := e.ring.Envelope(keys.PHIEncryption)
		s, err := e.ring.Signer(ctx, keys.ReceiptSigning)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := e.ring.Verifier(keys.ReceiptSigning)
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				for i := 0; i < 5; i++ {
					msg := []byte(fmt.Sprint(g, "/", i))
					c, err := enc.Encrypt(ctx, msg, msg)
					if err != nil {
						errs <- err
						return
					}
					got, err := enc.Decrypt(ctx, c, msg)
					if err != nil || !bytes.Equal(got, msg) {
						errs <- fmt.Errorf("Decrypt = %q, %v, want %q", got, err, msg)
						return
					}
					sig, err := s.Sign(ctx, msg)
					if err == nil {
						err = v.Verify(ctx, s.KeyID(), msg, sig)
					}
					if err != nil {
						errs <- err
						return
					}
				}
			}(g)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

// memStore is an in-memory keys.RewrapStore over a slice (ids are indexes).
type memStore struct {
	mu   sync.Mutex
	rows [][]byte
}

func (m *memStore) NextSealed(_ context.Context, after string, limit int) ([]keys.StoredCiphertext, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	start := 0
	if after != "" {
		n, err := strconv.Atoi(after)
		if err != nil {
			return nil, err
		}
		start = n + 1
	}
	var out []keys.StoredCiphertext
	for i := start; i < len(m.rows) && len(out) < limit; i++ {
		out = append(out, keys.StoredCiphertext{ID: fmt.Sprintf("%06d", i), Old: m.rows[i]})
	}
	return out, nil
}

func (m *memStore) ReplaceSealed(_ context.Context, items []keys.StoredCiphertext) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, it := range items {
		i, err := strconv.Atoi(it.ID)
		if err != nil {
			return err
		}
		if bytes.Equal(m.rows[i], it.Old) {
			m.rows[i] = it.New
		}
	}
	return nil
}
