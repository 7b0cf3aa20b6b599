package keys_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/keys/keystest"
)

var testPass = []byte("correct horse battery staple")

func openLocal(t *testing.T, dir string, pass []byte) (*keys.Local, error) {
	t.Helper()
	return keys.NewLocal(keys.LocalConfig{Dir: dir, Passphrase: pass, ScryptN: 1 << 10})
}

// Verifies: REQ-KEY-001, REQ-KEY-002, REQ-KEY-003, REQ-KEY-004, REQ-KEY-006, REQ-KEY-007, REQ-KEY-020
func TestLocalConformance(t *testing.T) {
	keystest.Run(t, func(t *testing.T) keys.Backend {
		l, err := openLocal(t, t.TempDir(), testPass)
		if err != nil {
			t.Fatal(err)
		}
		return l
	})
}

// Verifies: REQ-KEY-005
func TestLocalFilesSealed(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "keys")
	l, err := openLocal(t, dir, testPass)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := keys.NewRing(keys.Config{Backend: l})
	if _, err := r.EnsureKeys(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := r.Signer(ctx, keys.AuditCheckpoint)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()

	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("key ring dir mode = %v, %v, want 0700", st.Mode().Perm(), err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		fi, _ := e.Info()
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode = %v, want 0600", e.Name(), fi.Mode().Perm())
		}
	}
	raw, err := os.ReadFile(filepath.Join(dir, keys.LocalFile))
	if err != nil {
		t.Fatal(err)
	}
	// The public key must not appear either: the whole ring is sealed.
	if pub := s.Public().(ed25519.PublicKey); containsBytes(raw, pub) || containsBytes(raw, []byte(base64.StdEncoding.EncodeToString(pub)[:20])) {
		t.Errorf("key ring file contains the public key in clear")
	}

	// Wrong passphrase: a clear typed error, nothing opened.
	if l2, err := openLocal(t, dir, []byte("wrong passphrase!!")); !errors.Is(err, keys.ErrWrongPassphrase) || l2 != nil {
		t.Errorf("NewLocal(wrong passphrase) = %v, %v, want nil, ErrWrongPassphrase", l2, err)
	}
	// Right passphrase: the same keys.
	l3, err := openLocal(t, dir, testPass)
	if err != nil {
		t.Fatal(err)
	}
	defer l3.Close()
	r3, _ := keys.NewRing(keys.Config{Backend: l3})
	s3, err := r3.Signer(ctx, keys.AuditCheckpoint)
	if err != nil || s3.KeyID() != s.KeyID() || !s3.Public().(ed25519.PublicKey).Equal(s.Public()) {
		t.Errorf("reopened Signer = %v, %v, want the same key %s", s3, err, s.KeyID())
	}
	// An altered file is refused.
	raw[len(raw)/2] ^= 1
	if err := os.WriteFile(filepath.Join(dir, keys.LocalFile), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openLocal(t, dir, testPass); err == nil {
		t.Errorf("NewLocal(altered file) = nil error, want an error")
	}
}

// Verifies: REQ-KEY-004
func TestLocalSharedBetweenProcesses(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, err := openLocal(t, dir, testPass)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ra, _ := keys.NewRing(keys.Config{Backend: a})
	if _, err := ra.EnsureKeys(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := openLocal(t, dir, testPass) // e.g. `vigil keys rotate` while the server runs
	if err != nil {
		t.Fatal(err)
	}
	rb, _ := keys.NewRing(keys.Config{Backend: b})
	if v, err := rb.Rotate(ctx, keys.ReceiptSigning); err != nil || v != 2 {
		t.Fatalf("Rotate() = %d, %v, want 2", v, err)
	}
	b.Close()
	s, err := ra.Signer(ctx, keys.ReceiptSigning)
	if err != nil || s.KeyID() != keys.KeyID(keys.ReceiptSigning, 2) {
		t.Errorf("Signer() in the other process after rotate = %v, %v, want v2", s, err)
	}
}

func containsBytes(h, n []byte) bool {
	for i := 0; i+len(n) <= len(h); i++ {
		if string(h[i:i+len(n)]) == string(n) {
			return true
		}
	}
	return false
}
