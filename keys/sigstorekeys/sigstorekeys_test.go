package sigstorekeys_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/options"

	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/keys/keystest"
	"github.com/vigilhealth/vigil/keys/sigstorekeys"
)

// Verifies: REQ-KEY-009
func TestSignerVerifierBothBackends(t *testing.T) {
	ctx := context.Background()
	vs := keystest.StartVault(t)
	backends := map[string]func(t *testing.T) keys.Backend{
		"local": func(t *testing.T) keys.Backend {
			l, err := keys.NewLocal(keys.LocalConfig{Dir: t.TempDir(), Passphrase: []byte("a passphrase of the test"), ScryptN: 1 << 10})
			if err != nil {
				t.Fatal(err)
			}
			return l
		},
		"vault": func(t *testing.T) keys.Backend {
			v, err := keys.NewVault(ctx, keys.VaultConfig{Address: vs.Addr, Token: vs.Token, KeyPrefix: "sigstore-"})
			if err != nil {
				t.Fatal(err)
			}
			return v
		},
	}
	for name, mk := range backends {
		t.Run(name, func(t *testing.T) {
			b := mk(t)
			defer b.Close()
			audited := 0
			r, _ := keys.NewRing(keys.Config{Backend: b, OnOperation: func(context.Context, keys.Operation) error { audited++; return nil }})
			if _, err := r.EnsureKeys(ctx); err != nil {
				t.Fatal(err)
			}
			sv, err := sigstorekeys.New(ctx, r, keys.ReleaseSigning)
			if err != nil {
				t.Fatal(err)
			}
			var _ signature.SignerVerifier = sv
			msg := []byte(`{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"vigil"}]}`)
			sig, err := sv.SignMessage(bytes.NewReader(msg), options.WithContext(ctx))
			if err != nil {
				t.Fatalf("SignMessage() = %v", err)
			}
			if err := sv.VerifySignature(bytes.NewReader(sig), bytes.NewReader(msg)); err != nil {
				t.Errorf("VerifySignature() = %v", err)
			}
			// What cosign does: load the PEM public key and verify with sigstore's ECDSA verifier.
			pub, _ := sv.PublicKey()
			if _, ok := pub.(*ecdsa.PublicKey); !ok {
				t.Fatalf("PublicKey() = %T, want *ecdsa.PublicKey", pub)
			}
			pemKey, err := cryptoutils.MarshalPublicKeyToPEM(pub)
			if err != nil {
				t.Fatal(err)
			}
			pk, err := cryptoutils.UnmarshalPEMToPublicKey(pemKey)
			if err != nil {
				t.Fatal(err)
			}
			v, err := signature.LoadVerifier(pk, crypto.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			if err := v.VerifySignature(bytes.NewReader(sig), bytes.NewReader(msg)); err != nil {
				t.Errorf("sigstore verifier from PEM: VerifySignature() = %v", err)
			}
			if err := v.VerifySignature(bytes.NewReader(sig), bytes.NewReader(append(msg, ' '))); err == nil {
				t.Errorf("VerifySignature(altered message) = nil, want an error")
			}
			if audited != len(keys.Purposes)+1 {
				t.Errorf("audited operations = %d, want %d (creates + 1 release signature)", audited, len(keys.Purposes)+1)
			}
			// A precomputed SHA-256 digest is signed as is: the same standard signature over
			// the message (the message reader is not read).
			d := sha256.Sum256(msg)
			dsig, err := sv.SignMessage(nil, options.WithDigest(d[:]), options.WithContext(ctx))
			if err != nil {
				t.Fatalf("SignMessage(WithDigest) = %v", err)
			}
			if err := v.VerifySignature(bytes.NewReader(dsig), bytes.NewReader(msg)); err != nil {
				t.Errorf("sigstore verifier: signature of the digest over the message = %v", err)
			}
			if _, err := sv.SignMessage(bytes.NewReader(msg), options.WithDigest([]byte("0123456789abcdef"))); err == nil {
				t.Errorf("SignMessage(WithDigest of 16 bytes) = nil error, want refusal")
			}
			if audited != len(keys.Purposes)+2 {
				t.Errorf("audited operations = %d, want %d (creates + 2 release signatures)", audited, len(keys.Purposes)+2)
			}
			if _, err := sigstorekeys.New(ctx, r, keys.PHIEncryption); !errors.Is(err, keys.ErrWrongPurpose) {
				t.Errorf("New(phi-encryption) = %v, want ErrWrongPurpose", err)
			}
		})
	}
}
