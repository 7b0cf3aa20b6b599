package keys

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"testing"
)

// Verifies: REQ-KEY-011
// TestSignEd25519MatchesStdlib: the local key ring's Ed25519 signatures are byte for byte
// those of crypto/ed25519.Sign, for many keys and message lengths (0 to 4 KiB).
func TestSignEd25519MatchesStdlib(t *testing.T) {
	for i := 0; i < 300; i++ {
		seed := sha256.Sum256([]byte{byte(i), byte(i >> 8), 's'})
		k := ed25519.NewKeyFromSeed(seed[:])
		msg := bytes.Repeat([]byte{byte(i)}, (i*37)%4097)
		want := ed25519.Sign(k, msg)
		got := signEd25519(k, msg)
		if !bytes.Equal(got, want) {
			t.Fatalf("key %d, %d-byte message: signature %x, crypto/ed25519 gives %x", i, len(msg), got, want)
		}
		if !ed25519.Verify(k.Public().(ed25519.PublicKey), msg, got) {
			t.Fatalf("key %d: signature does not verify", i)
		}
	}
}

// BenchmarkSignEd25519 compares the local backend's Ed25519 signing (curve25519-voi) with
// crypto/ed25519.Sign on a receipt-sized message.
//
//	go test ./keys -run '^$' -bench BenchmarkSignEd25519 -benchtime 2s
func BenchmarkSignEd25519(b *testing.B) {
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		b.Fatal(err)
	}
	msg := bytes.Repeat([]byte("r"), 160)
	b.Run("stdlib", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			_ = ed25519.Sign(priv, msg)
		}
	})
	b.Run("local", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			_ = signEd25519(priv, msg)
		}
	})
}
