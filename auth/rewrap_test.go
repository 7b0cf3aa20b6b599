package auth_test

import (
	"testing"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/keys"
)

// After a rotation of the PHI key, auth's sealed columns are re-wrapped and still open.
// Verifies: REQ-ACC-001
func TestSealedColumnsRewrap(t *testing.T) {
	e := newEnv(t, nil)
	_, secret, _ := e.user(t, "rosa@example.org", [2]string{auth.RoleClinician, "*"})
	if _, err := e.ring.Rotate(e.ctx, keys.PHIEncryption); err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, col := range auth.SealedColumns() {
		st, err := auth.RewrapStore(e.pool, e.cfg.Audit, col)
		if err != nil {
			t.Fatal(err)
		}
		n, err := e.ring.PHI().Envelope().RewrapAll(e.ctx, st, 10)
		if err != nil {
			t.Fatalf("RewrapAll(%s) = %v", col, err)
		}
		total += n
	}
	if total != 2 { // the profile and the TOTP secret
		t.Fatalf("re-wrapped %d values, want 2", total)
	}
	var profile, totpSecret []byte
	if err := e.pool.QueryRow(e.ctx, "SELECT profile_sealed, totp_sealed FROM auth_users").Scan(&profile, &totpSecret); err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{profile, totpSecret} {
		if v, err := keys.CiphertextVersion(b); err != nil || v != 2 {
			t.Fatalf("sealed with version %d (%v), want 2", v, err)
		}
	}
	if u, err := e.svc.UserByEmail(e.ctx, "rosa@example.org"); err != nil || u.Profile.Email != "rosa@example.org" {
		t.Fatalf("UserByEmail after rewrap = %+v, %v", u, err)
	}
	e.login(t, "rosa@example.org", secret) // the TOTP secret still opens
	if _, err := auth.RewrapStore(e.pool, e.cfg.Audit, "auth_users.password_hash"); err == nil {
		t.Fatal("RewrapStore(unknown column) = nil error")
	}
}
