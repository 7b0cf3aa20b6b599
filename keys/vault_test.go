package keys_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/keys/keystest"
)

func randomPrefix(t testing.TB) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "t" + hex.EncodeToString(b) + "-"
}

func newVault(t testing.TB, vs *keystest.VaultServer, prefix string) *keys.Vault {
	t.Helper()
	v, err := keys.NewVault(context.Background(), keys.VaultConfig{Address: vs.Addr, Token: vs.Token, KeyPrefix: prefix})
	if err != nil {
		t.Fatalf("NewVault() = %v", err)
	}
	return v
}

// TestVault runs the conformance suite and the Vault-specific checks against a real Vault
// dev server (started here, stopped after).
//
// Verifies: REQ-KEY-001, REQ-KEY-002, REQ-KEY-003, REQ-KEY-004, REQ-KEY-006, REQ-KEY-007, REQ-KEY-008, REQ-KEY-020
func TestVault(t *testing.T) {
	vs := keystest.StartVault(t)
	ctx := context.Background()

	t.Run("Conformance", func(t *testing.T) {
		keystest.Run(t, func(t *testing.T) keys.Backend { return newVault(t, vs, randomPrefix(t)) })
	})

	t.Run("KeysCreatedInVault", func(t *testing.T) {
		prefix := randomPrefix(t)
		r, _ := keys.NewRing(keys.Config{Backend: newVault(t, vs, prefix)})
		if _, err := r.EnsureKeys(ctx); err != nil {
			t.Fatal(err)
		}
		for _, p := range keys.Purposes {
			d, err := vs.Do(ctx, "GET", "/v1/transit/keys/"+prefix+string(p), "")
			if err != nil {
				t.Fatalf("read transit key %s: %v", p, err)
			}
			if d["type"] != string(p.Algorithm()) || d["exportable"] != false {
				t.Errorf("transit key %s: type %v exportable %v, want %s, false", p, d["type"], d["exportable"], p.Algorithm())
			}
		}
	})

	t.Run("TypedErrors", func(t *testing.T) {
		// Missing key.
		r, _ := keys.NewRing(keys.Config{Backend: newVault(t, vs, randomPrefix(t))})
		if _, err := r.Signer(ctx, keys.ReceiptSigning); !errors.Is(err, keys.ErrKeyNotFound) {
			t.Errorf("Signer(missing key) = %v, want ErrKeyNotFound", err)
		}
		// Bad token.
		if v, err := keys.NewVault(ctx, keys.VaultConfig{Address: vs.Addr, Token: "not-a-token"}); !errors.Is(err, keys.ErrPermissionDenied) || v != nil {
			t.Errorf("NewVault(bad token) = %v, %v, want ErrPermissionDenied", v, err)
		}
		// Unreachable: a closed port.
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := "http://" + l.Addr().String()
		l.Close()
		v, err := keys.NewVault(ctx, keys.VaultConfig{Address: addr, Token: "x", MaxRetries: -1, Timeout: 2 * time.Second})
		var be *keys.BackendError
		if !errors.Is(err, keys.ErrUnavailable) || !errors.As(err, &be) || v != nil {
			t.Errorf("NewVault(closed port) = %v, %v, want *BackendError wrapping ErrUnavailable", v, err)
		}
		// Plain http to a remote host is refused.
		if _, err := keys.NewVault(ctx, keys.VaultConfig{Address: "http://vault.example:8200", Token: "x"}); err == nil {
			t.Errorf("NewVault(http to a remote host) = nil error, want an error")
		}
		// A wrapped key from another backend is a decryption error, not a crash.
		vb := newVault(t, vs, randomPrefix(t))
		r2, _ := keys.NewRing(keys.Config{Backend: vb})
		if _, err := r2.EnsureKeys(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := vb.UnwrapDataKeys(ctx, string(keys.PHIEncryption), [][]byte{[]byte("vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==")}); !errors.Is(err, keys.ErrDecrypt) {
			t.Errorf("UnwrapDataKeys(forged) = %v, want ErrDecrypt", err)
		}
	})

	t.Run("AppRole", func(t *testing.T) {
		prefix := randomPrefix(t)
		policy := fmt.Sprintf(`path "transit/keys/%[1]s*" { capabilities = ["read", "create", "update"] }
path "transit/sign/%[1]s*" { capabilities = ["update"] }`, prefix)
		steps := []struct{ method, path, body string }{
			{"POST", "/v1/sys/auth/approle", `{"type":"approle"}`},
			{"PUT", "/v1/sys/policies/acl/vigil-test", fmt.Sprintf(`{"policy":%q}`, policy)},
			{"POST", "/v1/auth/approle/role/vigil", `{"token_policies":["vigil-test"],"token_ttl":"5m"}`},
		}
		for _, s := range steps {
			if _, err := vs.Do(ctx, s.method, s.path, s.body); err != nil {
				t.Fatal(err)
			}
		}
		rid, err := vs.Do(ctx, "GET", "/v1/auth/approle/role/vigil/role-id", "")
		if err != nil {
			t.Fatal(err)
		}
		sid, err := vs.Do(ctx, "POST", "/v1/auth/approle/role/vigil/secret-id", "{}")
		if err != nil {
			t.Fatal(err)
		}
		v, err := keys.NewVault(ctx, keys.VaultConfig{Address: vs.Addr, AppRoleID: fmt.Sprint(rid["role_id"]), AppRoleSecretID: fmt.Sprint(sid["secret_id"]), KeyPrefix: prefix})
		if err != nil {
			t.Fatalf("NewVault(AppRole) = %v", err)
		}
		defer v.Close()
		r, _ := keys.NewRing(keys.Config{Backend: v})
		if _, err := v.CreateKey(ctx, string(keys.AuditCheckpoint), keys.Ed25519); err != nil {
			t.Fatalf("CreateKey with AppRole = %v", err)
		}
		s, err := r.Signer(ctx, keys.AuditCheckpoint)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Sign(ctx, []byte("m")); err != nil {
			t.Errorf("Sign with AppRole token = %v", err)
		}
		// The policy allows no encryption: a typed permission error.
		if _, _, err := v.GenerateDataKey(ctx, string(keys.PHIEncryption)); !errors.Is(err, keys.ErrPermissionDenied) {
			t.Errorf("GenerateDataKey outside the policy = %v, want ErrPermissionDenied", err)
		}
	})

	t.Run("TokenFileReread", func(t *testing.T) {
		if _, err := vs.Do(ctx, "PUT", "/v1/sys/policies/acl/transit-all", `{"policy":"path \"transit/*\" { capabilities = [\"create\", \"read\", \"update\"] }"}`); err != nil {
			t.Fatal(err)
		}
		tok1, err := vs.CreateToken(ctx, "transit-all")
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(file, []byte(tok1+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		v, err := keys.NewVault(ctx, keys.VaultConfig{Address: vs.Addr, TokenFile: file, KeyPrefix: randomPrefix(t)})
		if err != nil {
			t.Fatalf("NewVault(TokenFile) = %v", err)
		}
		defer v.Close()
		r, _ := keys.NewRing(keys.Config{Backend: v})
		if _, err := r.EnsureKeys(ctx); err != nil {
			t.Fatal(err)
		}
		// The agent replaces the token and the old one is revoked: the next call re-reads the file.
		tok2, err := vs.CreateToken(ctx, "transit-all")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, []byte(tok2), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := vs.Do(ctx, "POST", "/v1/auth/token/revoke", fmt.Sprintf(`{"token":%q}`, tok1)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := r.MAC(ctx, keys.WebhookHMAC, []byte("m")); err != nil {
			t.Errorf("MAC() after token replaced in file = %v, want nil", err)
		}
	})

	// Last: sealing stops the server from serving anything.
	t.Run("Sealed", func(t *testing.T) {
		v := newVault(t, vs, randomPrefix(t))
		r, _ := keys.NewRing(keys.Config{Backend: v})
		if _, err := r.EnsureKeys(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := vs.Do(ctx, "PUT", "/v1/sys/seal", ""); err != nil {
			t.Fatal(err)
		}
		_, err := r.Signer(ctx, keys.AuditCheckpoint)
		var be *keys.BackendError
		if !errors.Is(err, keys.ErrSealed) || !errors.As(err, &be) {
			t.Errorf("Signer(sealed vault) = %v, want *BackendError wrapping ErrSealed", err)
		}
		env, _ := r.Envelope(keys.PHIEncryption)
		if ct, err := env.Encrypt(ctx, []byte("x"), nil); !errors.Is(err, keys.ErrSealed) || ct != nil {
			t.Errorf("Encrypt(sealed vault) = %x, %v, want nil, ErrSealed", ct, err)
		}
	})
}

// TLS to Vault: trusted with the configured CA, refused without it.
//
// Verifies: REQ-KEY-008
func TestVaultTLS(t *testing.T) {
	vs := keystest.StartVaultTLS(t)
	ctx := context.Background()
	v, err := keys.NewVault(ctx, keys.VaultConfig{Address: vs.Addr, Token: vs.Token, CACert: vs.CACert, KeyPrefix: randomPrefix(t)})
	if err != nil {
		t.Fatalf("NewVault(https, CA) = %v", err)
	}
	defer v.Close()
	r, _ := keys.NewRing(keys.Config{Backend: v})
	if _, err := r.EnsureKeys(ctx); err != nil {
		t.Fatalf("EnsureKeys over TLS = %v", err)
	}
	s, err := r.Signer(ctx, keys.ReceiptSigning)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sign(ctx, []byte("m")); err != nil {
		t.Errorf("Sign over TLS = %v", err)
	}
	// Without the CA (system roots only) the certificate is not trusted, even with VAULT_CACERT
	// pointing at it: Vigil's configuration alone decides.
	t.Setenv("VAULT_CACERT", vs.CACert)
	t.Setenv("VAULT_SKIP_VERIFY", "true")
	if v2, err := keys.NewVault(ctx, keys.VaultConfig{Address: vs.Addr, Token: vs.Token, MaxRetries: -1}); !errors.Is(err, keys.ErrUnavailable) || v2 != nil {
		t.Errorf("NewVault(https, untrusted CA) = %v, %v, want ErrUnavailable", v2, err)
	}
}
