package inbound_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/interop"
	"github.com/vigilhealth/vigil/interop/hl7"
	"github.com/vigilhealth/vigil/interop/hl7/inbound"
	"github.com/vigilhealth/vigil/interop/interoptest"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// coreFixture is the real clinical core on the test's own database, with the audit recorder
// every service gets and one site of the named wards: what the tests of CoreApplier share.
type coreFixture struct {
	pool  *pgxpool.Pool
	rec   interop.Recorder
	core  *core.Service
	by    audit.Event // the set-up's actor
	wards map[string]uuid.UUID
}

func newCoreFixture(t *testing.T, wards ...string) coreFixture {
	t.Helper()
	pool := testdb.New(t)
	ctx := context.Background()
	rec := interoptest.Recorder(t, pool)
	cs, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: keystest.LocalRing(t, nil).PHI()})
	if err != nil {
		t.Fatal(err)
	}
	f := coreFixture{pool: pool, rec: rec, core: cs, wards: map[string]uuid.UUID{},
		by: audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "setup", AuthMethod: "internal"}, RequestID: "setup"}}
	site, err := cs.CreateSite(ctx, f.by, "General")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range wards {
		w, err := cs.CreateWard(ctx, f.by, site.ID, name)
		if err != nil {
			t.Fatal(err)
		}
		f.wards[name] = w.ID
	}
	return f
}

// CoreApplier on the real clinical core: A01 admits on the named ward (case aside) or
// re-admits a discharged patient, A02 moves, A03 discharges, A08 updates the demographics it
// gives, A11 cancels an admission, A13 a discharge; a re-sent message changes nothing; an
// unknown ward, an unknown patient and events that do not fit the patient's state are refused
// with the coded errors answered AE; each change is audited by core with the sender as actor.
// Verifies: REQ-INT-026, REQ-INT-040, REQ-INT-041
func TestCoreApplier(t *testing.T) {
	t.Parallel()
	f := newCoreFixture(t, "ICU", "CCU")
	ctx, pool, cs := context.Background(), f.pool, f.core
	icu, ccu := f.wards["ICU"], f.wards["CCU"]
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
		case *p.WardID == icu:
			return "ICU", p.DischargedAt != nil
		case *p.WardID == ccu:
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

// The A11 (cancel admit) check — did anything get stored for the patient since the admission
// (core.Service.CancelAdmission) — reads the patient's own uploads through an index
// (migration 00711), not every upload since the admission: with sequential scans disabled,
// its plan finds the patient by an index condition. The query is core's, word for word. The
// cancel itself still works.
// Verifies: REQ-INT-046
func TestCancelAdmitCheckUsesPatientIndex(t *testing.T) {
	t.Parallel()
	f := newCoreFixture(t, "ICU")
	ctx := context.Background()
	a := inbound.CoreApplier{Core: f.core}
	sender := audit.Actor{Kind: audit.ActorService, ID: "hl7:EPIC@GENHOSP", AuthMethod: "none"}
	admit := func(mrn, ctl string) core.Patient {
		t.Helper()
		if err := a.ApplyADT(ctx, sender, hl7.ADT{Kind: hl7.ADTAdmit, Event: "A01", ControlID: ctl, SendingFacility: "GENHOSP",
			Patient: hl7.ADTPatient{MRN: mrn, FamilyName: "Doe", GivenName: "Jane"}, Location: hl7.Location{PointOfCare: "ICU"}}); err != nil {
			t.Fatal(err)
		}
		p, err := f.core.PatientByMRN(ctx, mrn)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	other, p := admit("MRN-OTHER", "I1"), admit("MRN-1", "I2")
	// Another patient's upload makes today's partition (an empty table has no plan to check).
	if _, err := f.core.Ingest(ctx, core.Batch{PatientID: other.ID, Provenance: core.Provenance{DeviceID: "dev-1", KeyID: "dev-1/1",
		UploadHash: [32]byte{1}, Sequence: 1, Transport: "http"},
		Samples: []core.Sample{{Code: "8867-4", Value: 72, Unit: "/min", Time: time.Now().Add(-time.Second)}}}); err != nil {
		t.Fatal(err)
	}
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "SET LOCAL enable_seqscan = off"); err != nil {
		t.Fatal(err)
	}
	rows, err := tx.Query(ctx, `EXPLAIN SELECT EXISTS (SELECT 1 FROM core_uploads WHERE patient_id = $1 AND received_at >= $2 AND stored > 0)`,
		p.ID, p.AdmittedAt)
	if err != nil {
		t.Fatal(err)
	}
	var plan []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, line)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	// Without the index the planner still avoids the sequential scan, through the primary key
	// (id, received_at) with received_at as its condition: every upload since the admission.
	byPatient := false
	for _, l := range plan {
		if strings.Contains(l, "Index Cond:") && strings.Contains(l, "patient_id =") {
			byPatient = true
		}
	}
	if all := strings.Join(plan, "\n"); !byPatient || strings.Contains(all, "Seq Scan") {
		t.Errorf("A11 check plan does not look the patient up in an index of the uploads:\n%s", all)
	}
	if err := a.ApplyADT(ctx, sender, hl7.ADT{Kind: hl7.ADTCancelAdmit, Event: "A11", ControlID: "I3", SendingFacility: "GENHOSP",
		Patient: hl7.ADTPatient{MRN: "MRN-1"}}); err != nil {
		t.Errorf("A11 of a patient with nothing stored = %v, want applied", err)
	}
}
