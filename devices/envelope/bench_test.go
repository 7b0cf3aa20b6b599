package envelope

import (
	"crypto/ed25519"
	"testing"
)

// Verifies: REQ-DEV-010
// BenchmarkParse is the decoding side of the upload path without the signature check:
// strict decode, canonical re-encode, validation (10 samples).
func BenchmarkParse(b *testing.B) {
	raw, _, err := Sign(tenSamples(), testKey(1))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for i := 0; i < b.N; i++ {
		env, err := ParseEnvelope(raw, Limits{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ParseUpload(env.Body, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpen is Parse plus the Ed25519 verification.
func BenchmarkOpen(b *testing.B) {
	priv := testKey(1)
	raw, _, err := Sign(tenSamples(), priv)
	if err != nil {
		b.Fatal(err)
	}
	pub := priv.Public().(ed25519.PublicKey)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, _, err := Open(raw, pub, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSign is the device side: canonical encoding and Ed25519 signature.
func BenchmarkSign(b *testing.B) {
	priv := testKey(1)
	u := tenSamples()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, _, err := Sign(u, priv); err != nil {
			b.Fatal(err)
		}
	}
}

func tenSamples() *Upload {
	u := sampleUpload()
	u.Samples = append(u.Samples, sampleUpload().Samples...)
	return u
}

// BenchmarkVerify compares the server's per-device Verifier (curve25519-voi, expanded key,
// standard-library verdicts) with crypto/ed25519.Verify on the signature of a 10-sample
// upload.
//
//	go test ./devices/envelope -run '^$' -bench BenchmarkVerify -benchtime 2s
func BenchmarkVerify(b *testing.B) {
	priv := testKey(1)
	raw, _, err := Sign(tenSamples(), priv)
	if err != nil {
		b.Fatal(err)
	}
	env, err := ParseEnvelope(raw, Limits{})
	if err != nil {
		b.Fatal(err)
	}
	pub := priv.Public().(ed25519.PublicKey)
	b.Run("stdlib", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if !ed25519.Verify(pub, env.Body, env.Sig) {
				b.Fatal("does not verify")
			}
		}
	})
	b.Run("verifier", func(b *testing.B) {
		v, err := NewVerifier(pub)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if err := v.Verify(env.Body, env.Sig); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("new-verifier", func(b *testing.B) { // the one-off cost when a device's key is loaded
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := NewVerifier(pub); err != nil {
				b.Fatal(err)
			}
		}
	})
}
