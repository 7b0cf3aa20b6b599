package inbound_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/interop/hl7"
	"github.com/vigilhealth/vigil/interop/hl7/inbound"
	"github.com/vigilhealth/vigil/interop/interoptest"
)

// The whole admission lifecycle from an EHR, sent with Debian's mllp_send to the receiver
// wired to the real clinical core: admit, a cancelled discharge of an admitted patient (AE
// patient_not_discharged), discharge, re-admission, demographics update, cancelled
// re-admission, a cancelled discharge of a cancelled admission (AE admission_cancelled),
// re-admission, a stored upload, then a cancelled admission refused (AE
// admission_has_observations), a discharge and its cancellation. Each ACK carries its code
// in ERR-5, each change its own core audit event, and the patient's state follows.
// Verifies: REQ-INT-040, REQ-INT-041, REQ-INT-042
func TestADTLifecycleFromMLLPSend(t *testing.T) {
	interoptest.RequireTool(t, "mllp_send")
	f := newCoreFixture(t, "ICU")
	ctx, pool, cs := context.Background(), f.pool, f.core
	_, addr := start(t, inbound.Config{Applier: inbound.CoreApplier{Core: cs}, Audit: f.rec})

	pv1 := `PV1|1|I|ICU^1^A`
	type step struct {
		msg  string
		ack  hl7.AckCode
		code string
	}
	first := []step{
		{adt("A01^ADT_A01", "L1", pidJane, pv1), hl7.AA, ""},
		{adt("A13^ADT_A01", "L2", pidJane), hl7.AE, "patient_not_discharged"},
		{adt("A03^ADT_A03", "L3", pidJane), hl7.AA, ""},
		{adt("A01^ADT_A01", "L4", pidJane, pv1), hl7.AA, ""},
		{adt("A08^ADT_A01", "L5", `PID|1||MRN100^^^GENHOSP^MR||Doe-Smith^Jane||19800215|F`), hl7.AA, ""},
		{adt("A11^ADT_A09", "L6", pidJane), hl7.AA, ""},
		{adt("A11^ADT_A09", "L6", pidJane), hl7.AA, ""}, // re-sent after a lost ACK: applied already
		{adt("A13^ADT_A01", "L7", pidJane), hl7.AE, "admission_cancelled"},
		{adt("A01^ADT_A01", "L8", pidJane, pv1), hl7.AA, ""},
	}
	check := func(steps []step) {
		t.Helper()
		var msgs []string
		for _, s := range steps {
			msgs = append(msgs, s.msg)
		}
		acks := interoptest.MLLPSend(t, addr, msgs)
		for i, s := range steps {
			code, _, errs, err := hl7.ParseAck(acks[i])
			got := ""
			if len(errs) > 0 {
				got = errs[0]
			}
			if err != nil || code != s.ack || got != s.code {
				t.Errorf("%s: ACK = %s %v (%v), want %s %s", strings.SplitN(s.msg, "\r", 2)[0], code, errs, err, s.ack, s.code)
			}
		}
	}
	check(first)
	p, err := cs.PatientByMRN(ctx, "MRN100")
	if err != nil {
		t.Fatal(err)
	}
	if p.DischargedAt != nil || p.PHI.FamilyName != "Doe-Smith" {
		t.Fatalf("after re-admission: discharged %v, family name %q; want admitted, Doe-Smith", p.DischargedAt, p.PHI.FamilyName)
	}
	if _, err := cs.Ingest(ctx, core.Batch{PatientID: p.ID, Provenance: core.Provenance{DeviceID: "dev-1", KeyID: "dev-1/1",
		UploadHash: [32]byte{1}, Sequence: 1, Transport: "http"},
		Samples: []core.Sample{{Code: "8867-4", Value: 72, Unit: "/min", Time: time.Now().Add(-time.Second)}}}); err != nil {
		t.Fatal(err)
	}
	second := []step{
		{adt("A11^ADT_A09", "L9", pidJane), hl7.AE, "admission_has_observations"},
		{adt("A03^ADT_A03", "L10", pidJane), hl7.AA, ""},
		{adt("A13^ADT_A01", "L11", pidJane), hl7.AA, ""},
	}
	check(second)
	if p, err = cs.PatientByMRN(ctx, "MRN100"); err != nil || p.DischargedAt != nil {
		t.Fatalf("after A13: discharged %v (%v), want admitted", p.DischargedAt, err)
	}
	for action, want := range map[string]int{"patient.created": 1, "patient.discharged": 2, "patient.readmitted": 2, "patient.updated": 1,
		"patient.admission_cancelled": 1, "patient.discharge_cancelled": 1} {
		n := 0
		for _, e := range interoptest.Events(t, pool, action) {
			if e.ActorID == "hl7:EPIC@GENHOSP" {
				n++
			}
		}
		if n != want {
			t.Errorf("%s events by the sender = %d, want %d", action, n, want)
		}
	}
	refused := 0
	for _, e := range interoptest.Events(t, pool, inbound.ActionRefused) {
		if e.Reason == "patient_not_discharged" || e.Reason == "admission_cancelled" || e.Reason == "admission_has_observations" {
			refused++
		}
	}
	if refused != 3 {
		t.Errorf("%d refusals audited with their code, want 3", refused)
	}
}
