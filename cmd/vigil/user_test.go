package main

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/internal/testdb"
)

// `vigil user | role | policy` against a real database and local key ring: the first
// administrator with an enrollment link, roles per ward, policy test, MFA reset, disable,
// service accounts and tokens, every change audited with the operator as actor.
// Verifies: REQ-ACC-013
func TestUserRolePolicyCommands(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, url := testdb.NewWithURL(t)
	env := map[string]string{"VIGIL_DATABASE_URL": url, "VIGIL_VAULT_ADDR": "", "VIGIL_KEYRING_PASSPHRASE": "a passphrase for the user cli test"}
	dir := t.TempDir()
	if out, err := executeEnv(t, env, "keys", "init", "--data-dir", dir); err != nil {
		t.Fatalf("keys init = %q, %v", out, err)
	}
	run := func(args ...string) string {
		t.Helper()
		out, err := executeEnv(t, env, append(args, "--data-dir", dir)...)
		if err != nil {
			t.Fatalf("vigil %s = %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	out := run("user", "add", "admin@hospital.example", "--name", "Site Admin", "--admin", "--base-url", "https://vigil.hospital.example")
	if !strings.Contains(out, "https://vigil.hospital.example/enroll#token=vge_") {
		t.Fatalf("user add --admin = %q, want a one-time enrollment link", out)
	}
	if _, err := executeEnv(t, env, "user", "add", "nobody@hospital.example", "--data-dir", dir); err == nil {
		t.Fatal("user add without a role succeeded, want an error")
	}
	wardA, wardB := uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7())
	run("user", "add", "nurse@hospital.example", "--role", "clinician@ward:"+wardA.String())
	var users []struct {
		ID      uuid.UUID
		Profile struct{ Email string }
		Roles   []struct{ Role, Domain string }
	}
	if err := json.Unmarshal([]byte(run("user", "list", "--json")), &users); err != nil || len(users) != 2 {
		t.Fatalf("user list --json = %v, %v", users, err)
	}
	if users[1].Profile.Email != "nurse@hospital.example" || len(users[1].Roles) != 1 || users[1].Roles[0].Domain != "ward:"+wardA.String() {
		t.Fatalf("user list = %+v", users)
	}
	if out := run("policy", "test", "nurse@hospital.example", "observation", "read", "--ward", wardA.String()); !strings.HasPrefix(out, "ALLOW") {
		t.Fatalf("policy test (own ward) = %q, want ALLOW", out)
	}
	out, err := executeEnv(t, env, "policy", "test", "nurse@hospital.example", "observation", "read", "--ward", wardB.String(), "--data-dir", dir)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.HasPrefix(out, "DENY") {
		t.Fatalf("policy test (other ward) = %q, %v; want DENY and exit 1", out, err)
	}
	if out := run("policy", "test", "nurse@hospital.example", "observation", "read", "--ward", wardB.String(), "--care-team"); !strings.Contains(out, "basis care_team") {
		t.Fatalf("policy test (care team) = %q, want allowed on the care_team basis", out)
	}
	run("role", "grant", "nurse@hospital.example", "clinician", "--ward", wardB.String())
	if out := run("role", "grants", "nurse@hospital.example"); strings.Count(out, "clinician") != 2 {
		t.Fatalf("role grants = %q, want two clinician grants", out)
	}
	run("role", "revoke", "nurse@hospital.example", "clinician", "--ward", wardB.String())
	if out := run("policy", "show"); !strings.Contains(out, "role_revoked") || !strings.Contains(strings.Join(strings.Fields(out), " "), "clinician observation read ward") {
		t.Fatalf("policy show = %q", out)
	}
	if out := run("user", "reset-mfa", "nurse@hospital.example"); !strings.Contains(out, "enroll#token=vge_") {
		t.Fatalf("user reset-mfa = %q, want a new enrollment link", out)
	}
	run("user", "disable", "nurse@hospital.example")
	run("user", "service", "add", "ci-pipeline")
	run("role", "grant", "svc:ci-pipeline", "quality")
	if out := run("user", "service", "token", "ci-pipeline", "--name", "release"); !strings.Contains(out, "vgt_") {
		t.Fatalf("user service token = %q, want the token printed once", out)
	}
	if out := run("role", "list"); !strings.Contains(out, "device_technician") {
		t.Fatalf("role list = %q", out)
	}
	// Every change is audited with the operator as actor; the payloads hold no e-mail address.
	var n, leaked int
	if err := pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE payload::text LIKE '%hospital.example%')
		FROM audit_events WHERE actor_id LIKE 'os:%' AND (action LIKE 'user.%' OR action LIKE 'policy.%' OR action LIKE 'service_account.%')`).Scan(&n, &leaked); err != nil {
		t.Fatal(err)
	}
	if n < 12 || leaked != 0 {
		t.Fatalf("operator's audit events = %d (with an e-mail address: %d), want ≥ 12 and none", n, leaked)
	}
}
