package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/devicestest"
	"github.com/vigilhealth/vigil/interop/fhir/fhirtest"
	"github.com/vigilhealth/vigil/interop/hl7"
	"github.com/vigilhealth/vigil/interop/hl7/inbound"
	"github.com/vigilhealth/vigil/interop/hl7/outbound"
	"github.com/vigilhealth/vigil/interop/interoptest"
)

// End to end with independent HL7 peers: an ADT^A01 sent by Debian's python3-hl7 mllp_send
// admits a patient on ward A, who then appears in FHIR (for the ward's clinician too); the
// patient's device uploads signed vitals, and an ORU^R01 for that patient arrives at a
// python3-hl7 MLLP receiver on loopback, which ACKs it.
// Verifies: REQ-INT-026, REQ-INT-027
func TestHL7AdmitToFHIRAndORU(t *testing.T) {
	t.Parallel()
	interoptest.RequireTool(t, "mllp_send")
	py := interoptest.RequireTool(t, "/usr/bin/python3")
	f := newFHIRFixture(t)
	ctx := context.Background()
	env := f.env

	// Inbound ADT listener on the real core.
	rcv, err := inbound.New(inbound.Config{Applier: inbound.CoreApplier{Core: env.Core}, Audit: env.Rec, Facility: "VIGIL"})
	if err != nil {
		t.Fatal(err)
	}
	adtAddr := interoptest.ServeMLLP(t, rcv)

	// Outbound: the python3-hl7 receiver, the sender, the feed.
	out := filepath.Join(t.TempDir(), "received.jsonl")
	cmd := exec.Command(py, "../interop/hl7/outbound/testdata/oru_receiver.py", "--out", out, "--plan", "")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Wait() })
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	var port int
	if _, err := fmt.Sscanf(line, "PORT %d", &port); err != nil {
		t.Fatalf("receiver did not start: %q", line)
	}
	snd, err := outbound.New(outbound.Config{Name: "ehr", Addr: fmt.Sprintf("127.0.0.1:%d", port), Pool: env.Pool,
		Sealer: env.Ring.PHI(), Audit: env.Rec, KeepOnClose: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = snd.Close(context.Background()) })
	feed, err := outbound.NewFeed(outbound.FeedConfig{Core: env.Core, Pool: env.Pool, Sender: snd, Facility: "VIGIL"})
	if err != nil {
		t.Fatal(err)
	}
	fctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = feed.Run(fctx) }()
	t.Cleanup(func() { stop(); <-done })

	// ADT^A01 with mllp_send.
	adt := strings.Join([]string{
		`MSH|^~\&|EPIC|GENHOSP|VIGIL|GENHOSP|20260102030405+0100||ADT^A01^ADT_A01|E2E0001|P|2.5.1`,
		`EVN|A01|20260102030000+0100`,
		`PID|1||E2E-77^^^GENHOSP^MR||Hale^Nora||19750304|F`,
		`PV1|1|I|A^12^B^GENHOSP||||||||||||||||V0042`,
	}, "\r") + "\r"
	if acks := interoptest.MLLPSend(t, adtAddr, []string{adt}); !bytes.Contains(acks[0], []byte("MSA|AA|E2E0001")) {
		t.Fatalf("mllp_send A01: ACK %q, want MSA|AA", acks[0])
	}

	// The patient is in FHIR, on ward A.
	st, b := f.get(t, f.admin, "/fhir/R4/Patient?identifier=E2E-77")
	ms := resourcesOf(b, "match")
	if st != 200 || len(ms) != 1 {
		t.Fatalf("Patient?identifier=E2E-77 = %d %v", st, b)
	}
	pid := ms[0]["id"].(string)
	if st, r := f.get(t, f.clinician, "/fhir/R4/Encounter/"+pid); st != 200 || r["status"] != "in-progress" {
		t.Errorf("ward A clinician Encounter/%s = %d %v", pid, st, r)
	}
	patient, err := env.Core.PatientByMRN(ctx, "E2E-77")
	if err != nil || patient.WardID == nil || *patient.WardID != f.wardA {
		t.Fatalf("admitted patient = %+v, %v; want on ward A", patient, err)
	}

	// Its device uploads; the ORU arrives at the receiver.
	select {
	case <-feed.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("the ORU feed did not start")
	}
	d := env.RegisterDevice(t)
	env.Enroll(t, d)
	if _, err := env.Devices.AssignPatient(ctx, devicestest.Admin, d.ID, &patient.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Devices.Accept(ctx, d.Upload(t, env.Clock.Now(), 5), devices.Meta{Transport: "http"}); err != nil {
		t.Fatalf("Accept = %v", err)
	}
	var got []map[string]any
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && len(got) == 0; time.Sleep(50 * time.Millisecond) {
		raw, _ := os.ReadFile(out)
		for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["mrn"] == "E2E-77" {
				got = append(got, m)
			}
		}
	}
	if len(got) != 1 || !strings.HasPrefix(got[0]["type"].(string), "ORU^R01") || len(got[0]["obx"].([]any)) != 5 {
		t.Fatalf("ORU received for E2E-77 = %v, want one ORU^R01 with 5 OBX", got)
	}
	// An alarm opened for the patient (stored by the alarm service) is sent too.
	as, err := alarms.New(alarms.Config{Pool: env.Pool, Recorder: env.Rec, Now: env.Clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := pgx.BeginFunc(ctx, env.Pool, func(tx pgx.Tx) error {
		_, err := as.Apply(ctx, tx, alarms.Signal{PatientID: patient.ID, RuleID: "news2_high", RuleVersion: 1, Raise: true,
			Severity: alarms.SeverityHigh, Message: "NEWS2 7", At: env.Clock.Now()})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var alarmORU []map[string]any
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && len(alarmORU) == 0; time.Sleep(50 * time.Millisecond) {
		raw, _ := os.ReadFile(out)
		for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["mrn"] == "E2E-77" && strings.Contains(l, "news2_high") {
				alarmORU = append(alarmORU, m)
			}
		}
	}
	if len(alarmORU) != 1 {
		t.Errorf("ORU of the alarm = %v, want one carrying news2_high", alarmORU)
	}
	if err := snd.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	// Every message the receiver acknowledged is audited as delivered, once. (Not just the
	// two of E2E-77: an upload of the fixture that commits after the feed made its cursor,
	// as happens under load, is fed too.)
	raw, _ := os.ReadFile(out)
	ctls := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			ctls[m["control_id"].(string)] = true
		}
	}
	if n := env.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'hl7.oru.delivered'`); n != len(ctls) || n < 2 {
		t.Errorf("hl7.oru.delivered events = %d, want one per message received (%d), at least 2", n, len(ctls))
	}
	if n := env.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'hl7.adt.accepted'`); n != 1 {
		t.Errorf("hl7.adt.accepted events = %d, want 1", n)
	}
}

// An admission cancelled by ADT^A11 is an Encounter with status cancelled (it ended before
// it began), not finished as a discharge is; a re-admission is in-progress again. Both pass
// the external validator.
// Verifies: REQ-INT-047
func TestHL7CancelledAdmissionEncounter(t *testing.T) {
	t.Parallel()
	f := newFHIRFixture(t)
	ctx := context.Background()
	a := inbound.CoreApplier{Core: f.env.Core}
	sender := audit.Actor{Kind: audit.ActorService, ID: "hl7:EPIC@GENHOSP", AuthMethod: "none"}
	apply := func(kind hl7.ADTKind, ev, ctl, mrn string) {
		t.Helper()
		if err := a.ApplyADT(ctx, sender, hl7.ADT{Kind: kind, Event: ev, ControlID: ctl, SendingFacility: "GENHOSP",
			Patient: hl7.ADTPatient{MRN: mrn, FamilyName: "Hale", GivenName: "Nora"}, Location: hl7.Location{PointOfCare: "A"}}); err != nil {
			t.Fatalf("%s %s: %v", ev, mrn, err)
		}
	}
	encounter := func(mrn string) map[string]any {
		t.Helper()
		p, err := f.env.Core.PatientByMRN(ctx, mrn)
		if err != nil {
			t.Fatal(err)
		}
		st, r := f.get(t, f.admin, "/fhir/R4/Encounter/"+p.ID.String())
		if st != 200 {
			t.Fatalf("Encounter of %s = %d %v", mrn, st, r)
		}
		return r
	}
	apply(hl7.ADTAdmit, "A01", "X1", "CXL-1")
	apply(hl7.ADTCancelAdmit, "A11", "X2", "CXL-1")
	apply(hl7.ADTAdmit, "A01", "X3", "DIS-1")
	apply(hl7.ADTDischarge, "A03", "X4", "DIS-1")
	cancelled, finished := encounter("CXL-1"), encounter("DIS-1")
	if cancelled["status"] != "cancelled" {
		t.Errorf("Encounter after A11 status = %v, want cancelled", cancelled["status"])
	}
	if finished["status"] != "finished" {
		t.Errorf("Encounter after A03 status = %v, want finished", finished["status"])
	}
	fhirtest.Validate(t, cancelled, finished)
	apply(hl7.ADTAdmit, "A01", "X5", "CXL-1") // re-admission after the cancel
	if r := encounter("CXL-1"); r["status"] != "in-progress" {
		t.Errorf("Encounter after re-admission status = %v, want in-progress", r["status"])
	}
}
