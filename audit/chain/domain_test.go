package chain_test

import (
	"context"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/devicestest"
)

// domainRig is the real upload stack (devices, core) and alarm service on one database with
// the audit chain: the rows they leave behind are cross-checked against their events.
type domainRig struct {
	env    *devicestest.Env
	svc    *chain.Service
	alarms *alarms.Service
	dev    *devicestest.Device
	upload uuid.UUID // core_uploads.id = its event's id
	alarm  uuid.UUID
}

func newDomainRig(t *testing.T) *domainRig {
	t.Helper()
	env := devicestest.New(t, nil)
	r := &domainRig{env: env, svc: chaintest.Start(t, env.Pool, env.URL, env.Rec)}
	var err error
	r.alarms, err = alarms.New(alarms.Config{Pool: env.Pool, Recorder: env.Rec, Now: env.Clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	r.dev = env.NewDevice(t)
	rc, err := env.Devices.Accept(env.Ctx, r.dev.Upload(t, env.Clock.Now(), 5), devices.Meta{Transport: "http", RequestID: "r1"})
	if err != nil {
		t.Fatalf("Accept() error = %v", err)
	}
	if err := env.Pool.QueryRow(env.Ctx, `SELECT id FROM core_uploads WHERE upload_hash = $1`, rc.UploadHash[:]).Scan(&r.upload); err != nil {
		t.Fatalf("upload row: %v", err)
	}
	err = pgx.BeginFunc(env.Ctx, env.Pool, func(tx pgx.Tx) error {
		ts, err := r.alarms.Apply(env.Ctx, tx, alarms.Signal{PatientID: env.Patient, RuleID: "hr-high", RuleVersion: 1,
			Raise: true, Severity: alarms.SeverityHigh, Message: "HR high"})
		if err == nil && len(ts) > 0 {
			r.alarm = ts[0].Alarm.ID
		}
		return err
	})
	if err != nil || r.alarm == uuid.Nil {
		t.Fatalf("Apply(raise) = %v (alarm %s)", err, r.alarm)
	}
	nurse := audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "nurse-1", AuthMethod: "password+totp"}}
	if _, err := r.alarms.Acknowledge(env.Ctx, r.alarm, nurse, "seen"); err != nil {
		t.Fatalf("Acknowledge() error = %v", err)
	}
	return r
}

func (r *domainRig) verify(t *testing.T, deep bool) *chain.Report {
	t.Helper()
	rep, err := chain.Verify(context.Background(), chain.VerifyConfig{Pool: r.env.Pool, Log: r.svc.Log(), VerifierKey: r.svc.VerifierKey(),
		Origin: r.svc.Origin(), Keys: audit.NewSessionKeys(r.env.Rec.EventKeys()), Deep: deep})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// Attack 3: domain rows changed behind the system's back — an alarm's state or
// acknowledger, a device's public key, an upload's stored observations — disagree with what
// the log says happened, and verify names each; a domain row whose event was deleted before
// shipping is an unaudited change.
// Sites, wards, patients (ward, discharge), care teams and webhooks too (REQ-AUD-055).
// Verifies: REQ-AUD-044, REQ-AUD-042, REQ-AUD-055
func TestDomainRowsAgainstTheTrail(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		do   func(t *testing.T, r *domainRig)
		kind string
		deep bool
	}{
		{"alarm state", func(t *testing.T, r *domainRig) {
			r.exec(t, `UPDATE alarms SET state = 'resolved' WHERE id = $1`, r.alarm)
		}, chain.FindingDomainMismatch, false},
		{"alarm acknowledger", func(t *testing.T, r *domainRig) {
			r.exec(t, `UPDATE alarms SET acked_by = 'dr-mallory' WHERE id = $1`, r.alarm)
		}, chain.FindingDomainMismatch, false},
		{"device public key", func(t *testing.T, r *domainRig) {
			r.exec(t, `UPDATE devices_keys SET public_key = sha256(public_key) WHERE device_id = $1`, r.dev.ID)
		}, chain.FindingDomainMismatch, false},
		{"device key added", func(t *testing.T, r *domainRig) {
			r.exec(t, `INSERT INTO devices_keys (device_id, version, public_key, created_at) SELECT device_id, version + 10,
				sha256(public_key), created_at FROM devices_keys WHERE device_id = $1`, r.dev.ID)
		}, chain.FindingUnaudited, false},
		{"rule threshold raised (a new version behind the engine's back)", func(t *testing.T, r *domainRig) {
			r.exec(t, `INSERT INTO rules_versions (rule_id, version, name, kind, enabled, definition, created_at, created_by, reason)
				SELECT rule_id, version + 100, name, kind, enabled, jsonb_set(definition, '{levels,0,limit}', '200'), now(), 'admin', 'tuning'
				FROM rules_versions WHERE rule_id = 'hr-high' AND version = 1`)
		}, chain.FindingUnaudited, false},
		{"observation deleted", func(t *testing.T, r *domainRig) {
			r.exec(t, `DELETE FROM core_observations WHERE ctid = (SELECT ctid FROM core_observations WHERE upload_id = $1 LIMIT 1)`, r.upload)
		}, chain.FindingDomainMismatch, true},
		{"patient discharged behind the system's back", func(t *testing.T, r *domainRig) {
			r.exec(t, `UPDATE core_patients SET discharged_at = now() WHERE id = $1`, r.env.Patient)
		}, chain.FindingDomainMismatch, false},
		{"site and ward made in SQL", func(t *testing.T, r *domainRig) {
			r.exec(t, `INSERT INTO core_sites (id, name, created_at) VALUES (gen_random_uuid(), 'Annex', now())`)
		}, chain.FindingUnaudited, false},
		{"patient moved to a ward in SQL", func(t *testing.T, r *domainRig) {
			r.exec(t, `WITH s AS (INSERT INTO core_sites (id, name, created_at) VALUES (gen_random_uuid(), 'Annex', now()) RETURNING id),
				w AS (INSERT INTO core_wards (id, site_id, name, created_at) SELECT gen_random_uuid(), id, 'W9', now() FROM s RETURNING id)
				UPDATE core_patients SET ward_id = (SELECT id FROM w) WHERE id = $1`, r.env.Patient)
		}, chain.FindingDomainMismatch, false},
		{"care team member added in SQL", func(t *testing.T, r *domainRig) {
			r.exec(t, `INSERT INTO core_care_team (patient_id, clinician_id, role, added_at) VALUES ($1, 'dr-mallory', 'physician', now())`, r.env.Patient)
		}, chain.FindingUnaudited, false},
		{"webhook added in SQL", func(t *testing.T, r *domainRig) {
			r.exec(t, `INSERT INTO core_webhooks (id, url, secret, event_types, active, created_at)
				VALUES (gen_random_uuid(), 'https://exfil.example/h', sha256('a') || sha256('b'), '{alarm.raised}', true, now())`)
		}, chain.FindingUnaudited, false},
		{"upload row without its event", func(t *testing.T, r *domainRig) {
			r.exec(t, `INSERT INTO core_uploads (id, received_at, patient_id, device_id, key_id, upload_hash, sequence, transport,
				samples, stored, flagged, duplicates) SELECT $2, received_at, patient_id, device_id, key_id, sha256(upload_hash),
				sequence + 1, transport, samples, stored, flagged, duplicates FROM core_uploads WHERE id = $1`, r.upload, uuid.Must(uuid.NewV7()))
		}, chain.FindingUnaudited, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newDomainRig(t)
			chaintest.ShipAll(t, r.svc)
			if rep := r.verify(t, tc.deep); !rep.OK || rep.DomainRows == 0 {
				t.Fatalf("Verify() before tampering: ok %v, %d domain rows, findings %s", rep.OK, rep.DomainRows, findings(rep))
			}
			tc.do(t, r)
			rep := r.verify(t, tc.deep)
			if !hasFinding(rep, tc.kind, "") {
				t.Errorf("Verify() after %s: findings %s, want %s", tc.name, findings(rep), tc.kind)
			}
		})
	}
}

func (r *domainRig) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := r.env.Pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// A stored observation's value changed in SQL is found by verify --deep, which names the
// observation (patient, code, time and the value now stored) from the digest and the
// fingerprints its upload's event committed to; an observation slipped in under a new upload
// id is an unaudited change. Without --deep the values are not read.
// Verifies: REQ-AUD-050, REQ-AUD-051
func TestObservationValueChangeIsNamed(t *testing.T) {
	t.Parallel()
	r := newDomainRig(t)
	chaintest.ShipAll(t, r.svc)
	if rep := r.verify(t, true); !rep.OK || rep.ObservationsChecked != 5 {
		t.Fatalf("Verify(deep) before tampering: ok %v, %d observations checked (want 5), findings %s", rep.OK, rep.ObservationsChecked, findings(rep))
	}
	var code string
	var old float64
	if err := r.env.Pool.QueryRow(context.Background(), `UPDATE core_observations SET value = value + 0.5
		WHERE ctid = (SELECT ctid FROM core_observations WHERE upload_id = $1 ORDER BY code DESC, effective_at LIMIT 1)
		RETURNING code, value - 0.5`, r.upload).Scan(&code, &old); err != nil {
		t.Fatal(err)
	}
	if rep := r.verify(t, false); !rep.OK {
		t.Errorf("Verify() (not deep) after the change: findings %s; only --deep reads the values", findings(rep))
	}
	rep := r.verify(t, true)
	var got []chain.Finding
	for _, f := range rep.Findings {
		if f.Kind == chain.FindingDomainMismatch {
			got = append(got, f)
		}
	}
	if len(got) != 1 || got[0].EventID != r.upload.String() {
		t.Fatalf("Verify(deep) after changing one value: findings %s, want one domain_mismatch on upload %s", findings(rep), r.upload)
	}
	d := got[0].Detail
	if !strings.Contains(d, "changed: patient "+r.env.Patient.String()+" code "+code) || strings.Count(d, "code ") != 1 {
		t.Errorf("finding %q does not name exactly the changed observation (code %s, was %g)", d, code, old)
	}
	if rep.OK {
		t.Error("report OK with a changed observation")
	}

	// An observation inserted behind the system's back under an upload id of its own.
	r.exec(t, `INSERT INTO core_observations (patient_id, code, effective_at, value, flags, upload_id)
		SELECT patient_id, code, effective_at + interval '1 second', value, flags, $2 FROM core_observations
		WHERE upload_id = $1 LIMIT 1`, r.upload, uuid.Must(uuid.NewV7()))
	if rep := r.verify(t, true); !hasFinding(rep, chain.FindingUnaudited, "") {
		t.Errorf("Verify(deep) after inserting an observation without an upload: findings %s, want %s", findings(rep), chain.FindingUnaudited)
	}
}

// Sites, wards, a patient's moves and discharge, and care-team changes made through the
// services leave rows that agree with their events: verify stays clean; then a care-team
// member removed by its event but put back in SQL is found.
// Verifies: REQ-AUD-055
func TestAuditedPatientAdministrationVerifies(t *testing.T) {
	t.Parallel()
	r := newDomainRig(t)
	ctx, core := r.env.Ctx, r.env.Core
	by := audit.Event{Actor: devicestest.Admin.Actor, RequestID: "test"}
	site, err := core.CreateSite(ctx, by, "Main")
	if err != nil {
		t.Fatal(err)
	}
	ward, err := core.CreateWard(ctx, by, site.ID, "ICU")
	if err != nil {
		t.Fatal(err)
	}
	if err := core.MovePatient(ctx, by, r.env.Patient, ward.ID); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"nurse-1", "dr-who"} {
		if _, err := core.AddCareTeamMember(ctx, by, r.env.Patient, c, "nurse"); err != nil {
			t.Fatal(err)
		}
	}
	if err := core.RemoveCareTeamMember(ctx, by, r.env.Patient, "dr-who"); err != nil {
		t.Fatal(err)
	}
	other := r.env.NewPatient(t)
	if err := core.DischargePatient(ctx, by, other); err != nil {
		t.Fatal(err)
	}
	chaintest.ShipAll(t, r.svc)
	if rep := r.verify(t, false); !rep.OK || rep.DomainRows < 8 {
		t.Fatalf("Verify() after audited administration: ok %v, %d domain rows, findings %s", rep.OK, rep.DomainRows, findings(rep))
	}
	r.exec(t, `INSERT INTO core_care_team (patient_id, clinician_id, role, added_at) VALUES ($1, 'dr-who', 'nurse', now())`, r.env.Patient)
	if rep := r.verify(t, false); !hasFinding(rep, chain.FindingUnaudited, "") {
		t.Errorf("Verify() after putting a removed care-team member back: findings %s, want %s", findings(rep), chain.FindingUnaudited)
	}
}
