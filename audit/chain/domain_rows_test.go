package chain_test

import (
	"context"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/devicestest"
	"github.com/vigilhealth/vigil/keys"
)

// rowsRig is domainRig plus the auth area on the same database: a user with a role, a
// second patient, and a device assignment history.
type rowsRig struct {
	*domainRig
	auth  *auth.Service
	user  uuid.UUID
	other uuid.UUID // a second patient
	token uuid.UUID // an API token of a service account with the quality role
}

var authAdmin = auth.Origin{Actor: audit.Actor{Kind: audit.ActorUser, ID: "admin-1", AuthMethod: "password+totp"}, RequestID: "test"}

func newRowsRig(t *testing.T) *rowsRig {
	t.Helper()
	r := &rowsRig{domainRig: newDomainRig(t)}
	env := r.env
	var err error
	r.auth, err = auth.New(env.Ctx, auth.Config{Pool: env.Pool, Sealer: env.Ring.PHI(), Audit: env.Rec, Now: env.Clock.Now,
		Password: auth.PasswordConfig{Time: 1, MemoryKiB: 8 * 1024, Threads: 1}})
	if err != nil {
		t.Fatalf("auth.New = %v", err)
	}
	u, err := r.auth.CreateUser(env.Ctx, authAdmin, auth.Profile{Email: "rosa@example.org", DisplayName: "Rosa"})
	if err != nil {
		t.Fatal(err)
	}
	r.user = u.ID
	if err := r.auth.GrantRole(env.Ctx, authAdmin, auth.UserSubject(u.ID), auth.RoleClinician, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	sa, err := r.auth.CreateServiceAccount(env.Ctx, authAdmin, "ci-evidence")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.auth.GrantRole(env.Ctx, authAdmin, auth.ServiceSubject(sa.ID), auth.RoleQuality, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	tok, err := r.auth.IssueAPIToken(env.Ctx, authAdmin, sa.ID, "ci", []string{auth.RoleQuality}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r.token = tok.ID
	r.other = env.NewPatient(t)
	if _, err := env.Devices.AssignPatient(env.Ctx, devicestest.Admin, r.dev.ID, &r.other); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Devices.AssignPatient(env.Ctx, devicestest.Admin, r.dev.ID, &env.Patient); err != nil {
		t.Fatal(err)
	}
	return r
}

// Device status and assignment, every assignment, patients' sealed PHI, users (status,
// password, second factors), the policy lines, service accounts and API tokens are tied to the event that last wrote them:
// each change made behind the system's back is named by verify, whichever way it goes (a
// row with no event, a row that differs from its event, a row an event wrote that is gone, a
// row an event deleted that is back). None of these was found before the rows carried their
// events.
// Verifies: REQ-AUD-060, REQ-AUD-061, REQ-AUD-062, REQ-AUD-063, REQ-AUD-064
func TestRowsTiedToTheirEvents(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, r *rowsRig) // audited actions before tampering
		do    func(t *testing.T, r *rowsRig)
		kind  string
		names string // in the finding's detail
	}{
		{"suspended device reactivated in SQL", func(t *testing.T, r *rowsRig) {
			if _, err := r.env.Devices.SetStatus(r.env.Ctx, devicestest.Admin, r.dev.ID, devices.StatusSuspended, "lost"); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, r *rowsRig) {
			r.exec(t, `UPDATE devices_devices SET status = 'active' WHERE id = $1`, r.dev.ID)
		}, chain.FindingDomainMismatch, "devices_devices "},
		{"device's data redirected to another patient in SQL", nil, func(t *testing.T, r *rowsRig) {
			r.exec(t, `UPDATE devices_devices SET patient_id = $2 WHERE id = $1`, r.dev.ID, r.other)
		}, chain.FindingDomainMismatch, "devices_devices "},
		{"assignment history rewritten", nil, func(t *testing.T, r *rowsRig) {
			r.exec(t, `UPDATE devices_assignments SET patient_id = $2 WHERE device_id = $1 AND patient_id = $3`, r.dev.ID, r.env.Patient, r.other)
		}, chain.FindingDomainMismatch, "devices_assignments "},
		{"assignment inserted in SQL", nil, func(t *testing.T, r *rowsRig) {
			r.exec(t, `INSERT INTO devices_assignments (device_id, patient_id, started_at, ended_at, actor_id)
				VALUES ($1, $2, now() - interval '1 day', now() - interval '23 hours', 'admin-1')`, r.dev.ID, r.other)
		}, chain.FindingUnaudited, "devices_assignments "},
		{"patient's sealed PHI swapped for another's", nil, func(t *testing.T, r *rowsRig) {
			r.exec(t, `UPDATE core_patients SET phi_sealed = (SELECT phi_sealed FROM core_patients WHERE id = $2) WHERE id = $1`, r.env.Patient, r.other)
		}, chain.FindingDomainMismatch, "core_patients " + ""},
		{"disabled user re-enabled in SQL", func(t *testing.T, r *rowsRig) {
			if err := r.auth.DisableUser(r.env.Ctx, authAdmin, r.user); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, r *rowsRig) {
			r.exec(t, `UPDATE auth_users SET status = 'active', disabled_at = NULL WHERE id = $1`, r.user)
		}, chain.FindingDomainMismatch, "auth_users "},
		{"password hash set in SQL", nil, func(t *testing.T, r *rowsRig) {
			r.exec(t, `UPDATE auth_users SET password_hash = '$argon2id$v=19$m=8192,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo' WHERE id = $1`, r.user)
		}, chain.FindingDomainMismatch, "auth_users "},
		{"recovery code added in SQL (second factor)", nil, func(t *testing.T, r *rowsRig) {
			sum := sha256.Sum256([]byte("AAAABBBBCCCCDDDD"))
			r.exec(t, `INSERT INTO auth_recovery_codes (user_id, code_hash, created_at) VALUES ($1, $2, now())`, r.user, sum[:])
		}, chain.FindingDomainMismatch, "auth_users "},
		{"user inserted in SQL", nil, func(t *testing.T, r *rowsRig) {
			r.exec(t, `INSERT INTO auth_users (id, email_index, profile_sealed, status, created_at, updated_at)
				SELECT $2, sha256(email_index), profile_sealed, 'active', now(), now() FROM auth_users WHERE id = $1`, r.user, uuid.Must(uuid.NewV7()))
		}, chain.FindingUnaudited, "auth_users "},
		{"admin role granted in SQL", nil, func(t *testing.T, r *rowsRig) {
			r.exec(t, `INSERT INTO auth_policy_rules (ptype, v0, v1, v2, source, version) VALUES ('g', $1, 'admin', '*', 'admin', 1)`, auth.UserSubject(r.user))
		}, chain.FindingUnaudited, "auth_policy_rules g|user:"},
		{"role taken away in SQL", nil, func(t *testing.T, r *rowsRig) {
			r.exec(t, `DELETE FROM auth_policy_rules WHERE ptype = 'g' AND v0 = $1`, auth.UserSubject(r.user))
		}, chain.FindingDomainMismatch, "is gone"},
		{"revoked role put back with its old event", func(t *testing.T, r *rowsRig) {
			r.exec(t, `CREATE TABLE saved_grant AS SELECT * FROM auth_policy_rules WHERE ptype = 'g' AND v0 = $1`, auth.UserSubject(r.user))
			if err := r.auth.RevokeRole(r.env.Ctx, authAdmin, auth.UserSubject(r.user), auth.RoleClinician, auth.AllDomains); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, r *rowsRig) {
			r.exec(t, `INSERT INTO auth_policy_rules (ptype, v0, v1, v2, v3, source, version, audit_event_id, audit_digest)
				SELECT ptype, v0, v1, v2, v3, source, version, audit_event_id, audit_digest FROM saved_grant`)
		}, chain.FindingDomainMismatch, "was deleted by its last event (policy.role_revoked"},
		{"expired API token's expiry extended in SQL", nil, func(t *testing.T, r *rowsRig) {
			r.exec(t, `UPDATE auth_api_tokens SET expires_at = expires_at + interval '10 years' WHERE id = $1`, r.token)
		}, chain.FindingDomainMismatch, "auth_api_tokens "},
		{"API token's hash replaced by one the insider knows", nil, func(t *testing.T, r *rowsRig) {
			r.exec(t, `UPDATE auth_api_tokens SET token_hash = sha256('vgt_mine') WHERE id = $1`, r.token)
		}, chain.FindingDomainMismatch, "auth_api_tokens "},
		{"disabled service account re-enabled in SQL", func(t *testing.T, r *rowsRig) {
			var sa uuid.UUID
			if err := r.env.Pool.QueryRow(r.env.Ctx, `SELECT service_account_id FROM auth_api_tokens WHERE id = $1`, r.token).Scan(&sa); err != nil {
				t.Fatal(err)
			}
			if err := r.auth.DisableServiceAccount(r.env.Ctx, authAdmin, sa); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, r *rowsRig) {
			r.exec(t, `UPDATE auth_service_accounts SET status = 'active', disabled_at = NULL`)
			r.exec(t, `UPDATE auth_api_tokens SET revoked_at = NULL`)
		}, chain.FindingDomainMismatch, "auth_service_accounts "},
		{"policy rule widened in SQL", nil, func(t *testing.T, r *rowsRig) {
			r.exec(t, `UPDATE auth_policy_rules SET v3 = 'global' WHERE id = (SELECT a.id FROM auth_policy_rules a
				WHERE a.ptype = 'p' AND a.v0 = 'clinician' AND a.v3 <> 'global' AND NOT EXISTS (SELECT 1 FROM auth_policy_rules b
				WHERE b.ptype = 'p' AND b.v0 = a.v0 AND b.v1 = a.v1 AND b.v2 = a.v2 AND b.v3 = 'global') ORDER BY a.id LIMIT 1)`)
		}, chain.FindingDomainMismatch, "auth_policy_rules p|clinician"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newRowsRig(t)
			if tc.setup != nil {
				tc.setup(t, r)
			}
			chaintest.ShipAll(t, r.svc)
			if rep := r.verify(t, false); !rep.OK || rep.DomainRows == 0 {
				t.Fatalf("Verify() before tampering: ok %v, %d domain rows, findings %s", rep.OK, rep.DomainRows, findings(rep))
			}
			tc.do(t, r)
			wantFinding(t, r.verify(t, false), tc.name, tc.kind, tc.names)
		})
	}
}

// Every audited action on these rows leaves them agreeing with their events, re-wrapping
// the sealed PHI and the users' sealed secrets after a key rotation included: verify is
// clean (no false finding).
// Verifies: REQ-AUD-060, REQ-AUD-063, REQ-AUD-064
func TestAuditedRowChangesVerifyClean(t *testing.T) {
	t.Parallel()
	r := newRowsRig(t)
	ctx, env := r.env.Ctx, r.env
	if _, err := env.Devices.SetStatus(ctx, devicestest.Admin, r.dev.ID, devices.StatusSuspended, "check"); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Devices.SetStatus(ctx, devicestest.Admin, r.dev.ID, devices.StatusActive, "ok"); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Devices.AssignPatient(ctx, devicestest.Admin, r.dev.ID, nil); err != nil {
		t.Fatal(err)
	}
	gone := env.RegisterDevice(t)
	env.Enroll(t, gone)
	if _, err := env.Devices.AssignPatient(ctx, devicestest.Admin, gone.ID, &r.other); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Devices.SetStatus(ctx, devicestest.Admin, gone.ID, devices.StatusDecommissioned, "broken"); err != nil {
		t.Fatal(err)
	}
	by := audit.Event{Actor: devicestest.Admin.Actor, RequestID: "test"}
	if err := env.Core.DischargePatient(ctx, by, r.other); err != nil {
		t.Fatal(err)
	}
	if err := r.auth.DisableUser(ctx, authAdmin, r.user); err != nil {
		t.Fatal(err)
	}
	if err := r.auth.EnableUser(ctx, authAdmin, r.user); err != nil {
		t.Fatal(err)
	}
	if _, err := r.auth.ResetMFA(ctx, authAdmin, r.user); err != nil {
		t.Fatal(err)
	}
	if err := r.auth.RevokeRole(ctx, authAdmin, auth.UserSubject(r.user), auth.RoleClinician, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	if err := r.auth.AddRule(ctx, authAdmin, auth.Rule{Role: auth.RoleQuality, Object: auth.ObjDevice, Action: "read", Scope: auth.ScopeGlobal}); err != nil {
		t.Fatal(err)
	}
	// A key rotation re-wraps the sealed PHI and the users' sealed profiles.
	if _, err := env.Ring.Rotate(ctx, keys.PHIEncryption); err != nil {
		t.Fatal(err)
	}
	if n, err := env.Ring.PHI().Envelope().RewrapAll(ctx, patientPHI{env.Core}, 2); err != nil || n < 2 {
		t.Fatalf("RewrapAll(patients) = %d, %v", n, err)
	}
	for _, col := range auth.SealedColumns() {
		st, err := auth.RewrapStore(env.Pool, env.Rec, col)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := env.Ring.PHI().Envelope().RewrapAll(ctx, st, 10); err != nil {
			t.Fatalf("RewrapAll(%s) = %v", col, err)
		}
	}
	chaintest.ShipAll(t, r.svc)
	rep := r.verify(t, true)
	if !rep.OK || rep.DomainRows < 10 {
		t.Fatalf("Verify(deep) after audited changes: ok %v, %d domain rows, findings %s", rep.OK, rep.DomainRows, findings(rep))
	}
	var stamped int
	if err := env.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM core_patients WHERE audit_event_id IS NOT NULL)
		+ (SELECT count(*) FROM auth_users WHERE audit_event_id IS NOT NULL)`).Scan(&stamped); err != nil || stamped < 3 {
		t.Fatalf("stamped rows = %d, %v", stamped, err)
	}
}

// patientPHI adapts core's sealed PHI to keys.RewrapStore (as cmd/vigil does).
type patientPHI struct{ svc *core.Service }

func (p patientPHI) NextSealed(ctx context.Context, after string, limit int) ([]keys.StoredCiphertext, error) {
	items, err := p.svc.NextSealedPHI(ctx, after, limit)
	out := make([]keys.StoredCiphertext, len(items))
	for i, it := range items {
		out[i] = keys.StoredCiphertext{ID: it.ID, Old: it.Old}
	}
	return out, err
}

func (p patientPHI) ReplaceSealed(ctx context.Context, items []keys.StoredCiphertext) error {
	in := make([]core.SealedPHI, len(items))
	for i, it := range items {
		in[i] = core.SealedPHI{ID: it.ID, Old: it.Old, New: it.New}
	}
	return p.svc.ReplaceSealedPHI(ctx, in)
}
