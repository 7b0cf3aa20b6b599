package chain_test

import (
	"errors"
	"testing"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/devices/devicestest"
)

// Admission changes from the EHR (re-admission, demographics update, cancelled admission,
// cancelled discharge) leave patient rows that agree with their events: verify stays clean;
// then a re-admitted patient marked discharged in SQL is a domain_mismatch.
// Verifies: REQ-INT-041
func TestDomainPatientAdmissionChangesVerify(t *testing.T) {
	t.Parallel()
	r := newDomainRig(t)
	ctx, cs := r.env.Ctx, r.env.Core
	by := audit.Event{Actor: devicestest.Admin.Actor, RequestID: "test"}
	site, err := cs.CreateSite(ctx, by, "Main")
	if err != nil {
		t.Fatal(err)
	}
	ward, err := cs.CreateWard(ctx, by, site.ID, "ICU")
	if err != nil {
		t.Fatal(err)
	}
	readmitted := r.env.NewPatient(t)
	if err := cs.DischargePatient(ctx, by, readmitted); err != nil {
		t.Fatal(err)
	}
	if err := cs.ReadmitPatient(ctx, by, readmitted, ward.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.UpdatePatientPHI(ctx, by, readmitted, core.PatientPHI{GivenName: "New", FamilyName: "Name"}); err != nil {
		t.Fatal(err)
	}
	cancelled := r.env.NewPatient(t)
	if err := cs.CancelAdmission(ctx, by, cancelled); err != nil {
		t.Fatal(err)
	}
	if err := cs.CancelDischarge(ctx, by, cancelled); !errors.Is(err, core.ErrAdmissionCancelled) {
		t.Fatalf("CancelDischarge(cancelled admission) = %v, want %v", err, core.ErrAdmissionCancelled)
	}
	back := r.env.NewPatient(t)
	if err := cs.DischargePatient(ctx, by, back); err != nil {
		t.Fatal(err)
	}
	if err := cs.CancelDischarge(ctx, by, back); err != nil {
		t.Fatal(err)
	}
	chaintest.ShipAll(t, r.svc)
	if rep := r.verify(t, false); !rep.OK {
		t.Fatalf("Verify() after admission changes: findings %s", findings(rep))
	}
	r.exec(t, `UPDATE core_patients SET discharged_at = now() WHERE id = $1`, readmitted)
	if rep := r.verify(t, false); !hasFinding(rep, chain.FindingDomainMismatch, "") {
		t.Errorf("Verify() after discharging a re-admitted patient in SQL: findings %s, want %s", findings(rep), chain.FindingDomainMismatch)
	}
}
