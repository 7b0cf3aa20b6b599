package keys_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/vigilhealth/vigil/keys"
)

// Ciphertexts come back from the database (or an export someone edits): whatever the bytes,
// Decrypt, Rewrap and CiphertextVersion return an error or, for a ciphertext made by Encrypt,
// the plaintext; they never panic and never return unauthenticated plaintext.
//
// Verifies: REQ-KEY-003
func FuzzEnvelopeDecrypt(f *testing.F) {
	ctx := context.Background()
	l, err := keys.NewLocal(keys.LocalConfig{Dir: f.TempDir(), Passphrase: []byte("fuzz passphrase 0123"), ScryptN: 1 << 10})
	if err != nil {
		f.Fatal(err)
	}
	r, _ := keys.NewRing(keys.Config{Backend: l})
	if _, err := r.EnsureKeys(ctx); err != nil {
		f.Fatal(err)
	}
	env, _ := r.Envelope(keys.PHIEncryption)
	good, err := env.Encrypt(ctx, []byte("Ada Lovelace"), []byte("aad"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, []byte("aad"))
	f.Add(good[:len(good)-1], []byte("aad"))
	f.Add([]byte{1, 5, 'l', 'o', 'c', 'a', 'l'}, []byte(nil))
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0x0f}, []byte("x"))
	f.Add([]byte("local:v1:AAAA"), []byte(""))
	f.Fuzz(func(t *testing.T, ct, aad []byte) {
		pt, err := env.Decrypt(ctx, ct, aad)
		if err == nil {
			if !bytes.Equal(ct, good) || !bytes.Equal(aad, []byte("aad")) || string(pt) != "Ada Lovelace" {
				t.Fatalf("Decrypt(%x, %q) = %q, nil for a ciphertext Encrypt did not make", ct, aad, pt)
			}
		} else if pt != nil {
			t.Fatalf("Decrypt(%x) = %q, %v: plaintext with an error", ct, pt, err)
		} else if !errors.Is(err, keys.ErrDecrypt) && !errors.Is(err, keys.ErrKeyNotFound) {
			t.Fatalf("Decrypt(%x) = %v, want ErrDecrypt or ErrKeyNotFound", ct, err)
		}
		_, _ = keys.CiphertextVersion(ct)
		if re, err := env.Rewrap(ctx, ct); err == nil {
			if _, err := env.Decrypt(ctx, re, aad); (err == nil) != bytes.Equal(aad, []byte("aad")) && bytes.Equal(ct, good) {
				t.Fatalf("Decrypt(Rewrap(good)) = %v", err)
			}
		}
	})
}
