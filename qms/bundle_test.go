package qms_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/vigilhealth/vigil/internal/sigstorecheck"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/keys/keystest"
	"github.com/vigilhealth/vigil/keys/sigstorekeys"
	"github.com/vigilhealth/vigil/qms"
)

// cosignBinary returns bin/cosign of the module or cosign on PATH if there is one, else "":
// stock cosign is an extra check when present; sigstore-go (internal/sigstorecheck, the
// library cosign verifies with) is the one that always runs.
func cosignBinary() string {
	if p, err := filepath.Abs(filepath.Join("..", "bin", "cosign")); err == nil {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	if p, err := exec.LookPath("cosign"); err == nil {
		return p
	}
	return ""
}

// An artefact larger than Vault's request limit (32 MiB by default; the release binary is
// about 50 MB) is signed through Vault Transit: only its SHA-256 digest goes to Vault
// (prehashed signing), the bundle verifies with Vigil's verifier and with sigstore-go as
// `cosign verify-blob` does (and with stock cosign when there is one), and one byte changed
// in the artefact fails each. Sending the artefact itself, as releases did
// before (ANOM-002), is refused by the same Vault.
//
// Verifies: REQ-QMS-020, REQ-KEY-020
func TestSignBundleLargeArtefactThroughVault(t *testing.T) {
	t.Parallel()
	vs := keystest.StartVault(t)
	ctx := context.Background()
	v, err := keys.NewVault(ctx, keys.VaultConfig{Address: vs.Addr, Token: vs.Token, KeyPrefix: "bundle-"})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex
		signed [][]byte
		onOp   = func(_ context.Context, op keys.Operation) error {
			if op.Kind == keys.OpReleaseSign {
				mu.Lock()
				signed = append(signed, op.Digest)
				mu.Unlock()
			}
			return nil
		}
	)
	ring, err := keys.NewRing(keys.Config{Backend: v, OnOperation: onOp})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ring.Close() })
	if _, err := ring.EnsureKeys(ctx); err != nil {
		t.Fatal(err)
	}
	sv, err := sigstorekeys.New(ctx, ring, keys.ReleaseSigning)
	if err != nil {
		t.Fatal(err)
	}

	const size = 40 << 20 // > Vault's default max_request_size of 32 MiB
	artefact := bytes.Repeat([]byte("vigil release binary "), size/21+1)[:size]
	copy(artefact[size-8:], "the end!")
	digest := sha256.Sum256(artefact)

	// The message itself does not fit in a Transit request: the anomaly this change removes.
	ks, err := ring.Signer(ctx, keys.ReleaseSigning)
	if err != nil {
		t.Fatal(err)
	}
	if sig, err := ks.Sign(ctx, artefact); err == nil || sig != nil {
		t.Fatalf("Sign(40 MiB message through Vault) = %d bytes, %v; want Vault to refuse the request", len(sig), err)
	}

	bundle, err := qms.SignBundle(ctx, sv, sv.KeyID(), artefact)
	if err != nil {
		t.Fatalf("SignBundle(40 MiB through Vault) = %v", err)
	}
	pub, err := qms.PublicKeyPEM(ks.Public())
	if err != nil {
		t.Fatal(err)
	}
	if err := qms.VerifyBundle(bundle, artefact, pub); err != nil {
		t.Errorf("VerifyBundle() = %v", err)
	}
	mu.Lock()
	if len(signed) != 1 || !bytes.Equal(signed[0], digest[:]) {
		t.Errorf("release signatures reported = %x, want one with the artefact's SHA-256 %x", signed, digest)
	}
	mu.Unlock()

	dir := t.TempDir()
	files := map[string][]byte{"vigil": artefact, "vigil.sigstore.json": bundle, "release-signing.pub": pub}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pubPath, bundlePath, artPath := filepath.Join(dir, "release-signing.pub"), filepath.Join(dir, "vigil.sigstore.json"), filepath.Join(dir, "vigil")
	cosign := cosignBinary()
	verify := func() error {
		if err := sigstorecheck.VerifyBlob(pubPath, bundlePath, artPath); err != nil {
			return fmt.Errorf("sigstore-go: %w", err)
		}
		if cosign == "" {
			return nil
		}
		if out, err := exec.Command(cosign, "verify-blob", "--key", pubPath, "--bundle", bundlePath, "--insecure-ignore-tlog", artPath).CombinedOutput(); err != nil {
			return fmt.Errorf("cosign verify-blob: %w\n%s", err, out)
		}
		return nil
	}
	if err := verify(); err != nil {
		t.Fatalf("verify-blob (40 MiB, signed through Vault) = %v", err)
	}

	artefact[size/2] ^= 1
	if err := qms.VerifyBundle(bundle, artefact, pub); !errors.Is(err, qms.ErrSignatureInvalid) {
		t.Errorf("VerifyBundle(one byte changed) = %v, want ErrSignatureInvalid", err)
	}
	if err := os.WriteFile(artPath, artefact, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sigstorecheck.VerifyBlob(pubPath, bundlePath, artPath); err == nil {
		t.Error("sigstore-go verified the artefact with one byte changed")
	}
	if cosign != "" {
		if out, err := exec.Command(cosign, "verify-blob", "--key", pubPath, "--bundle", bundlePath, "--insecure-ignore-tlog", artPath).CombinedOutput(); err == nil {
			t.Errorf("cosign verify-blob with one byte changed succeeded:\n%s", out)
		}
	}
}
