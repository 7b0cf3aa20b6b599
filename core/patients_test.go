package core_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// Patient PHI is stored only sealed, found by MRN through the blind index, unique by MRN;
// sites, wards, patients and care teams are audited without PHI in the audit metadata.
// Verifies: REQ-CORE-011
func TestPatientsSealedAndAudited(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	site, err := e.svc.CreateSite(e.ctx, clinician, "St Elsewhere")
	if err != nil {
		t.Fatal(err)
	}
	ward, err := e.svc.CreateWard(e.ctx, clinician, site.ID, "Ward 7")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.CreateWard(e.ctx, clinician, uuid.New(), "Ward 8"); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("CreateWard(unknown site) = %v, want ErrNotFound", err)
	}
	phi := core.PatientPHI{MRN: "mrn-00123", GivenName: "Grace", FamilyName: "Hopper", BirthDate: "1906-12-09"}
	p, err := e.svc.CreatePatient(e.ctx, clinician, phi, &ward.ID)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing identifying in clear in the row.
	var sealed, idx []byte
	if err := e.pool.QueryRow(e.ctx, "SELECT phi_sealed, mrn_index FROM core_patients WHERE id = $1", p.ID).Scan(&sealed, &idx); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"Grace", "Hopper", "00123", "1906"} {
		if bytes.Contains(sealed, []byte(s)) || bytes.Contains(idx, []byte(s)) {
			t.Errorf("stored row contains %q in clear", s)
		}
	}
	// A sealed value moved to another patient does not open.
	other := e.patient(t)
	if _, err := e.pool.Exec(e.ctx, "UPDATE core_patients SET phi_sealed = $1 WHERE id = $2", sealed, other); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Patient(e.ctx, other); err == nil {
		t.Error("Patient(other) opened PHI sealed for another patient")
	}
	got, err := e.svc.PatientByMRN(e.ctx, "MRN 00123")
	if err != nil || got.ID != p.ID || got.PHI != phi || *got.WardID != ward.ID {
		t.Errorf("PatientByMRN() = %+v, %v; want %+v", got, err, phi)
	}
	if _, err := e.svc.CreatePatient(e.ctx, clinician, core.PatientPHI{MRN: "MRN00123"}, nil); !errors.Is(err, core.ErrConflict) {
		t.Errorf("CreatePatient(same MRN) = %v, want ErrConflict", err)
	}
	if _, err := e.svc.Patient(e.ctx, uuid.New()); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("Patient(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := e.svc.AddCareTeamMember(e.ctx, clinician, p.ID, "dr-who", "physician"); err != nil {
		t.Fatal(err)
	}
	mine, err := e.svc.Patients(e.ctx, core.PatientFilter{Clinician: "dr-who"})
	if err != nil || len(mine) != 1 || mine[0].ID != p.ID {
		t.Errorf("Patients(dr-who) = %v, %v; want [%s]", mine, err, p.ID)
	}
	if ids, _ := e.svc.PatientsOf(e.ctx, "dr-who"); len(ids) != 1 || ids[0] != p.ID {
		t.Errorf("PatientsOf(dr-who) = %v, want [%s]", ids, p.ID)
	}
	if err := e.svc.RemoveCareTeamMember(e.ctx, clinician, p.ID, "dr-no"); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("RemoveCareTeamMember(non-member) = %v, want ErrNotFound", err)
	}
	ward2, err := e.svc.CreateWard(e.ctx, clinician, site.ID, "Ward 9")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.svc.MovePatient(e.ctx, clinician, p.ID, ward2.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.MovePatient(e.ctx, clinician, p.ID, uuid.New()); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("MovePatient(unknown ward) = %v, want ErrNotFound", err)
	}
	if moved, _ := e.svc.Patients(e.ctx, core.PatientFilter{WardID: ward2.ID}); len(moved) != 1 {
		t.Errorf("Patients(ward 9) = %d, want 1 after the move", len(moved))
	}
	if err := e.svc.DischargePatient(e.ctx, clinician, p.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.DischargePatient(e.ctx, clinician, p.ID); !errors.Is(err, core.ErrConflict) {
		t.Errorf("DischargePatient(twice) = %v, want ErrConflict", err)
	}
	if list, _ := e.svc.Patients(e.ctx, core.PatientFilter{WardID: ward2.ID}); len(list) != 0 {
		t.Errorf("Patients(ward, admitted only) = %d, want 0 after discharge", len(list))
	}
	for _, action := range []string{"site.created", "ward.created", "patient.created", "care_team.member_added", "patient.moved", "patient.discharged"} {
		if n := e.count(t, "SELECT count(*) FROM audit_events WHERE action = $1 AND actor_id = 'nurse-1' AND request_id = 'req-1'", action); n < 1 {
			t.Errorf("audit events %s = %d, want ≥ 1", action, n)
		}
	}
	if n := e.count(t, "SELECT count(*) FROM audit_events WHERE payload::text LIKE '%Hopper%' OR object_id LIKE '%00123%'"); n != 0 {
		t.Errorf("audit events carrying PHI = %d, want 0", n)
	}
	// Without a sealer the patient API refuses.
	bare, _ := core.New(core.Config{Pool: e.pool, Recorder: e.rec})
	if _, err := bare.CreatePatient(e.ctx, clinician, phi, nil); !errors.Is(err, core.ErrNoPHISealer) {
		t.Errorf("CreatePatient(no sealer) = %v, want ErrNoPHISealer", err)
	}
}

// rewrapStore adapts core's sealed PHI to keys.RewrapStore (as cmd/vigil does).
type rewrapStore struct{ svc *core.Service }

func (r rewrapStore) NextSealed(ctx context.Context, after string, limit int) ([]keys.StoredCiphertext, error) {
	items, err := r.svc.NextSealedPHI(ctx, after, limit)
	out := make([]keys.StoredCiphertext, len(items))
	for i, it := range items {
		out[i] = keys.StoredCiphertext{ID: it.ID, Old: it.Old}
	}
	return out, err
}

func (r rewrapStore) ReplaceSealed(ctx context.Context, items []keys.StoredCiphertext) error {
	in := make([]core.SealedPHI, len(items))
	for i, it := range items {
		in[i] = core.SealedPHI{ID: it.ID, Old: it.Old, New: it.New}
	}
	return r.svc.ReplaceSealedPHI(ctx, in)
}

// After a rotation of the PHI key, every patient's sealed PHI is re-wrapped to the new key
// version in place and still opens.
// Verifies: REQ-CORE-011
func TestPatientPHIRewrap(t *testing.T) {
	t.Parallel()
	ring := keystest.LocalRing(t, nil)
	e := newEnv(t, func(c *core.Config) { c.PHI = ring.PHI() })
	var ids []uuid.UUID
	for i := 0; i < 5; i++ {
		ids = append(ids, e.patient(t))
	}
	if _, err := ring.Rotate(e.ctx, keys.PHIEncryption); err != nil {
		t.Fatal(err)
	}
	n, err := ring.PHI().Envelope().RewrapAll(e.ctx, rewrapStore{e.svc}, 2)
	if err != nil || n != 5 {
		t.Fatalf("RewrapAll() = %d, %v; want 5", n, err)
	}
	for _, id := range ids {
		var sealed []byte
		if err := e.pool.QueryRow(e.ctx, "SELECT phi_sealed FROM core_patients WHERE id = $1", id).Scan(&sealed); err != nil {
			t.Fatal(err)
		}
		if v, err := keys.CiphertextVersion(sealed); err != nil || v != 2 {
			t.Errorf("patient %s sealed with version %d (%v), want 2", id, v, err)
		}
		if p, err := e.svc.Patient(e.ctx, id); err != nil || p.PHI.GivenName != "Ada" {
			t.Errorf("Patient(%s) after rewrap = %+v, %v; want it to open", id, p, err)
		}
	}
	if n := e.count(t, "SELECT count(*) FROM audit_events WHERE action = 'patient.phi_rewrapped'"); n < 1 {
		t.Errorf("patient.phi_rewrapped events = %d, want ≥ 1", n)
	}
}
