package keys_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// The documented least-privilege policies are enough for each role and no more.
// Verifies: REQ-KEY-010
func TestVaultPolicies(t *testing.T) {
	vs := keystest.StartVault(t)
	ctx := context.Background()
	prefix := randomPrefix(t)
	for _, role := range []keys.VaultRole{keys.VaultRoleServer, keys.VaultRoleRelease, keys.VaultRoleAdmin} {
		hcl, err := keys.VaultPolicy(role, "transit", prefix)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(map[string]string{"policy": hcl})
		if _, err := vs.Do(ctx, "PUT", "/v1/sys/policies/acl/vigil-"+string(role), string(body)); err != nil {
			t.Fatalf("install %s policy: %v", role, err)
		}
	}
	if _, err := keys.VaultPolicy("root", "", ""); err == nil {
		t.Errorf("VaultPolicy(root) = nil error, want an error")
	}
	ring := func(role keys.VaultRole) *keys.Ring {
		tok, err := vs.CreateToken(ctx, "vigil-"+string(role))
		if err != nil {
			t.Fatal(err)
		}
		v, err := keys.NewVault(ctx, keys.VaultConfig{Address: vs.Addr, Token: tok, KeyPrefix: prefix})
		if err != nil {
			t.Fatalf("NewVault(%s token) = %v", role, err)
		}
		t.Cleanup(func() { v.Close() })
		r, _ := keys.NewRing(keys.Config{Backend: v})
		return r
	}
	denied := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, keys.ErrPermissionDenied) {
			t.Errorf("%s = %v, want ErrPermissionDenied", what, err)
		}
	}
	allowed := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("%s = %v, want nil", what, err)
		}
	}

	server, release, admin := ring(keys.VaultRoleServer), ring(keys.VaultRoleRelease), ring(keys.VaultRoleAdmin)
	_, err := server.EnsureKeys(ctx)
	denied("server EnsureKeys", err)
	created, err := admin.EnsureKeys(ctx)
	if err != nil || len(created) != len(keys.Purposes) {
		t.Fatalf("admin EnsureKeys() = %v, %v", created, err)
	}

	// Server: signs checkpoints and receipts, MACs, seals and opens PHI.
	for _, p := range []keys.Purpose{keys.AuditCheckpoint, keys.ReceiptSigning} {
		s, err := server.Signer(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Sign(ctx, []byte("m"))
		allowed("server Sign "+string(p), err)
	}
	_, _, err = server.MAC(ctx, keys.WebhookHMAC, []byte("m"))
	allowed("server MAC", err)
	phi := server.PHI()
	_, err = phi.BlindIndex(ctx, []byte("MRN"))
	allowed("server BlindIndex", err)
	c, err := phi.Seal(ctx, []byte("name"), []byte("aad"))
	allowed("server Seal", err)
	srv2 := ring(keys.VaultRoleServer) // no cache: really unwraps
	_, err = srv2.PHI().Open(ctx, c, []byte("aad"))
	allowed("server Open", err)
	rs, err := server.Signer(ctx, keys.ReleaseSigning)
	if err != nil {
		t.Fatal(err)
	}
	_, err = rs.Sign(ctx, []byte("release"))
	denied("server Sign release-signing", err)
	_, err = server.Rotate(ctx, keys.PHIEncryption)
	denied("server Rotate", err)

	// Release: signs releases only.
	rs, err = release.Signer(ctx, keys.ReleaseSigning)
	if err != nil {
		t.Fatal(err)
	}
	_, err = rs.Sign(ctx, []byte("release"))
	allowed("release Sign", err)
	_, err = release.Signer(ctx, keys.AuditCheckpoint)
	denied("release Signer audit-checkpoint", err)

	// Admin: rotates and re-wraps, cannot sign or decrypt.
	_, err = admin.Rotate(ctx, keys.PHIEncryption)
	allowed("admin Rotate", err)
	env, _ := admin.Envelope(keys.PHIEncryption)
	re, err := env.Rewrap(ctx, c)
	allowed("admin Rewrap", err)
	if v, _ := keys.CiphertextVersion(re); v != 2 {
		t.Errorf("CiphertextVersion(rewrapped by admin) = %d, want 2", v)
	}
	_, err = admin.PHI().Open(ctx, c, []byte("aad"))
	denied("admin Open", err)
	as, err := admin.Signer(ctx, keys.AuditCheckpoint)
	if err != nil {
		t.Fatal(err)
	}
	_, err = as.Sign(ctx, []byte("m"))
	denied("admin Sign", err)
}
