package sigstorecheck_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/vigilhealth/vigil/internal/sigstorecheck"
	"github.com/vigilhealth/vigil/qms"
)

// A bundle made by Vigil's release signing verifies with sigstore-go given only the PEM
// public key, and is rejected with one byte of the artefact changed, another key, or one byte
// of the signature changed.
// Verifies: REQ-KEY-009
func TestBundleVerifiesWithSigstoreGo(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyPair := func() (signature.Signer, string) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		s, err := signature.LoadSigner(k, crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		pemKey, err := qms.PublicKeyPEM(k.Public())
		if err != nil {
			t.Fatal(err)
		}
		return s, string(pemKey)
	}
	signer, pubPEM := keyPair()
	_, otherPEM := keyPair()
	artefact := make([]byte, 1<<20)
	if _, err := rand.Read(artefact); err != nil {
		t.Fatal(err)
	}
	b, err := qms.SignBundle(context.Background(), signer, "release-signing", artefact)
	if err != nil {
		t.Fatal(err)
	}
	art, bun, pub, other := write("a.bin", artefact), write("a.bin.sigstore.json", b), write("k.pub", []byte(pubPEM)), write("o.pub", []byte(otherPEM))
	if err := sigstorecheck.VerifyBlob(pub, bun, art); err != nil {
		t.Fatalf("a release bundle does not verify: %v", err)
	}
	changed := append([]byte(nil), artefact...)
	changed[len(changed)/2] ^= 1
	if err := sigstorecheck.VerifyBlob(pub, bun, write("changed.bin", changed)); err == nil {
		t.Error("a changed artefact verified")
	}
	if err := sigstorecheck.VerifyBlob(other, bun, art); err == nil {
		t.Error("another key verified the bundle")
	}
	// One byte of the signature changed (the bundle stays well-formed JSON).
	bad, err := qms.SignBundle(context.Background(), signer, "release-signing", changed)
	if err != nil {
		t.Fatal(err)
	}
	if err := sigstorecheck.VerifyBlob(pub, write("bad.sigstore.json", bad), art); err == nil {
		t.Error("a bundle over another artefact verified")
	}
}
