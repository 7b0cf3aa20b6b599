package envelope

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func vectorSeeds(f *testing.F) {
	b, err := os.ReadFile(filepath.Join("testdata", "vectors.json"))
	if err != nil {
		f.Fatal(err)
	}
	var vs []Vector
	if err := json.Unmarshal(b, &vs); err != nil {
		f.Fatal(err)
	}
	for _, v := range vs {
		raw, _ := hex.DecodeString(v.Envelope)
		f.Add(raw)
	}
}

// Verifies: REQ-DEV-011
// FuzzOpen feeds arbitrary bytes to the envelope parser and signature verifier: they must
// never panic, and whatever they accept must be canonical (re-encoding gives the same bytes)
// and valid.
func FuzzOpen(f *testing.F) {
	vectorSeeds(f)
	pub := testKey(7).Public().(ed25519.PublicKey)
	f.Fuzz(func(t *testing.T, raw []byte) {
		env, err := ParseEnvelope(raw, Limits{})
		if err != nil {
			return
		}
		u, err := ParseUpload(env.Body, Limits{})
		if err != nil {
			return
		}
		again, err := Canonical(u)
		if err != nil || !bytes.Equal(again, env.Body) {
			t.Fatalf("accepted body is not canonical: %x vs %x (%v)", env.Body, again, err)
		}
		if err := u.Validate(); err != nil {
			t.Fatalf("accepted upload does not validate: %v", err)
		}
		_ = VerifySignature(pub, env.Body, env.Sig)
	})
}

// Verifies: REQ-DEV-011
// FuzzParseMessages feeds arbitrary bytes to the enrollment, rotation and receipt parsers.
func FuzzParseMessages(f *testing.F) {
	vectorSeeds(f)
	k1, k2 := testKey(1), testKey(2)
	if raw, err := SignEnroll("vet_token", k1, testTime); err == nil {
		f.Add(raw)
	}
	if raw, err := SignRotate(testDevice, 1, k1, k2, testTime); err == nil {
		f.Add(raw)
	}
	// The published message vectors (enrollment, rotation, receipts) as seeds.
	if b, err := os.ReadFile(filepath.Join("testdata", "message-vectors.json")); err == nil {
		var vs []MessageVector
		if json.Unmarshal(b, &vs) == nil {
			for _, v := range vs {
				if raw, err := hex.DecodeString(v.Wire); err == nil {
					f.Add(raw)
				}
			}
		}
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if e, err := ParseEnroll(raw); err == nil && len(e.PublicKey) != ed25519.PublicKeySize {
			t.Fatalf("ParseEnroll accepted a %d-byte key", len(e.PublicKey))
		}
		if r, env, err := ParseRotate(raw); err == nil && (r == nil || env == nil) {
			t.Fatal("ParseRotate returned nil without error")
		}
		if sr, r, err := ParseSignedReceipt(raw); err == nil {
			_ = VerifyReceipt(k1.Public(), sr)
			if r.Type != TypeReceipt {
				t.Fatalf("ParseSignedReceipt accepted type %q", r.Type)
			}
		}
	})
}
