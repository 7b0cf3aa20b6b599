// Package sigstorecheck verifies a Sigstore bundle over a file the way stock cosign
// (`cosign verify-blob --key K --bundle B --insecure-ignore-tlog`) does, with sigstore-go, the
// library cosign itself verifies bundles with. It is used only by tests, as the independent
// check of what Vigil's release signs: it shares no code with Vigil's own signing or
// verification (qms.SignBundle, qms.VerifyBundle), and it is never linked into bin/vigil.
package sigstorecheck

import (
	"crypto"
	"fmt"
	"os"
	"time"

	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
)

// VerifyBlob checks that bundlePath is a valid Sigstore bundle whose message signature over
// the file artefactPath verifies with the PEM public key in publicKeyPath. No transparency
// log entry or timestamp is required (the release is signed offline: cosign's
// --insecure-ignore-tlog).
func VerifyBlob(publicKeyPath, bundlePath, artefactPath string) error {
	pemKey, err := os.ReadFile(publicKeyPath)
	if err != nil {
		return err
	}
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(pemKey)
	if err != nil {
		return fmt.Errorf("public key: %w", err)
	}
	v, err := signature.LoadVerifier(pub, crypto.SHA256)
	if err != nil {
		return fmt.Errorf("public key: %w", err)
	}
	b, err := bundle.LoadJSONFromPath(bundlePath)
	if err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	key := root.NewExpiringKey(v, time.Time{}, time.Time{})
	trusted := root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) { return key, nil })
	verifier, err := verify.NewVerifier(trusted, verify.WithNoObserverTimestamps())
	if err != nil {
		return err
	}
	f, err := os.Open(artefactPath)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := verifier.Verify(b, verify.NewPolicy(verify.WithArtifact(f), verify.WithKey())); err != nil {
		return fmt.Errorf("sigstore-go: %w", err)
	}
	return nil
}
