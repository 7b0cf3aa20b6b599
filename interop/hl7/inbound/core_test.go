package inbound_test

import (
	"context"
	"errors"
	"testing"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/interop/hl7"
	"github.com/vigilhealth/vigil/interop/hl7/inbound"
	"github.com/vigilhealth/vigil/interop/interoptest"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// CoreApplier on the real clinical core: A01 admits on the named ward (case aside) or
// re-admits a discharged patient, A02 moves, A03 discharges, A08 updates the demographics it
// gives, A11 cancels an admission, A13 a discharge; a re-sent message changes nothing; an
// unknown ward, an unknown patient and events that do not fit the patient's state are refused
// with the coded errors answered AE; each change is audited by core with the sender as actor.
// Verifies: REQ-INT-026, REQ-INT-040, REQ-INT-041
func TestCoreApplier(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	rec := interoptest.Recorder(t, pool)
	cs, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: keystest.LocalRing(t, nil).PHI()})
	if err != nil {
		t.Fatal(err)
	}
	by := audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "setup", AuthMethod: "internal"}, RequestID: "setup"}
	site, _ := cs.CreateSite(ctx, by, "General")
	icu, err := cs.CreateWard(ctx, by, site.ID, "ICU")
	if err != nil {
		t.Fatal(err)
	}
	ccu, err := cs.CreateWard(ctx, by, site.ID, "CCU")
	if err != nil {
		t.Fatal(err)
	}
	a := inbound.CoreApplier{Core: cs}
	sender := audit.Actor{Kind: audit.ActorService, ID: "hl7:EPIC@GENHOSP", AuthMethod: "none"}
	pat := hl7.ADTPatient{MRN: "MRN-1", FamilyName: "Doe", GivenName: "Jane", BirthDate: "1980-02-15"}
	cmd := func(kind hl7.ADTKind, ev, ctl, ward string) hl7.ADT {
		p := pat
		if kind == hl7.ADTUpdate {
			p.GivenName, p.BirthDate = "Janet", "" // an empty field keeps the stored value
		}
		return hl7.ADT{Kind: kind, Event: ev, ControlID: ctl, SendingFacility: "GENHOSP", Patient: p, Location: hl7.Location{PointOfCare: ward}}
	}
	wardOf := func() (string, bool) {
		p, err := cs.PatientByMRN(ctx, "MRN-1")
		if err != nil {
			t.Fatalf("PatientByMRN = %v", err)
		}
		switch {
		case p.WardID == nil:
			return "", p.DischargedAt != nil
		case *p.WardID == icu.ID:
			return "ICU", p.DischargedAt != nil
		case *p.WardID == ccu.ID:
			return "CCU", p.DischargedAt != nil
		}
		return "?", p.DischargedAt != nil
	}
	steps := []struct {
		cmd        hl7.ADT
		err        error
		ward       string
		discharged bool
	}{
		{cmd(hl7.ADTTransfer, "A02", "C0", "ICU"), inbound.ErrUnknownPatient, "", false},
		{cmd(hl7.ADTAdmit, "A01", "C1", "nowhere"), inbound.ErrUnknownLocation, "", false},
		{cmd(hl7.ADTAdmit, "A01", "C2", "icu"), nil, "ICU", false},
		{cmd(hl7.ADTAdmit, "A01", "C2", "icu"), nil, "ICU", false}, // re-sent: nothing changes
		{cmd(hl7.ADTTransfer, "A02", "C3", "CCU"), nil, "CCU", false},
		{cmd(hl7.ADTTransfer, "A02", "C3", "CCU"), nil, "CCU", false},
		{cmd(hl7.ADTUpdate, "A08", "C4", ""), nil, "CCU", false},
		{cmd(hl7.ADTCancelDischarge, "A13", "C5", ""), core.ErrPatientNotDischarged, "CCU", false},
		{cmd(hl7.ADTDischarge, "A03", "C6", ""), nil, "CCU", true},
		{cmd(hl7.ADTDischarge, "A03", "C6", ""), nil, "CCU", true},
		{cmd(hl7.ADTTransfer, "A02", "C8", "ICU"), inbound.ErrPatientState, "CCU", true},
		{cmd(hl7.ADTCancelAdmit, "A11", "C9", ""), core.ErrPatientDischarged, "CCU", true},
		{cmd(hl7.ADTCancelDischarge, "A13", "C10", ""), nil, "CCU", false},
		{cmd(hl7.ADTCancelDischarge, "A13", "C10", ""), nil, "CCU", false}, // re-sent: applied already
		{cmd(hl7.ADTDischarge, "A03", "C11", ""), nil, "CCU", true},
		{cmd(hl7.ADTAdmit, "A01", "C12", "ICU"), nil, "ICU", false}, // re-admission
		{cmd(hl7.ADTCancelAdmit, "A11", "C13", ""), nil, "ICU", true},
		{cmd(hl7.ADTCancelAdmit, "A11", "C13", ""), nil, "ICU", true},                            // re-sent
		{cmd(hl7.ADTCancelDischarge, "A13", "C14", ""), core.ErrAdmissionCancelled, "ICU", true}, // no discharge to cancel
	}
	for i, s := range steps {
		err := a.ApplyADT(ctx, sender, s.cmd)
		var se *inbound.StateError
		var want *core.StateError
		switch {
		case errors.As(s.err, &want):
			if !errors.As(err, &se) || se.Code != want.Code || !errors.Is(err, inbound.ErrPatientState) {
				t.Fatalf("step %d %s: ApplyADT = %v, want a StateError %s", i, s.cmd.Event, err, want.Code)
			}
		case !errors.Is(err, s.err) || (s.err == nil && err != nil):
			t.Fatalf("step %d %s %s: ApplyADT = %v, want %v", i, s.cmd.Event, s.cmd.Location.PointOfCare, err, s.err)
		}
		if s.ward == "" {
			if _, err := cs.PatientByMRN(ctx, "MRN-1"); !errors.Is(err, core.ErrNotFound) {
				t.Fatalf("step %d: patient exists (%v), want none yet", i, err)
			}
			continue
		}
		if w, d := wardOf(); w != s.ward || d != s.discharged {
			t.Fatalf("step %d %s: patient on %s discharged %v, want %s %v", i, s.cmd.Event, w, d, s.ward, s.discharged)
		}
	}
	if p, err := cs.PatientByMRN(ctx, "MRN-1"); err != nil || p.PHI.GivenName != "Janet" || p.PHI.BirthDate != "1980-02-15" {
		t.Errorf("after A08: PHI %+v (%v), want given name Janet, birth date kept", p.PHI, err)
	}
	for action, want := range map[string]int{"patient.created": 1, "patient.moved": 1, "patient.discharged": 2, "patient.updated": 1,
		"patient.discharge_cancelled": 1, "patient.readmitted": 1, "patient.admission_cancelled": 1} {
		n := 0
		for _, e := range interoptest.Events(t, pool, action) {
			if e.ActorID == sender.ID {
				n++
			}
		}
		if n != want {
			t.Errorf("%s events by the sender = %d, want %d", action, n, want)
		}
	}
}
