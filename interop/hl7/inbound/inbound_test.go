package inbound_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/interop/hl7"
	"github.com/vigilhealth/vigil/interop/hl7/inbound"
	"github.com/vigilhealth/vigil/interop/interoptest"
	"github.com/vigilhealth/vigil/interop/mllp"
)

// applier stands in for the core side (wired next): it records the commands it is given
// and refuses the MRNs the test names.
type applier struct {
	mu   sync.Mutex
	cmds []hl7.ADT
	by   []audit.Actor
}

func (a *applier) ApplyADT(_ context.Context, by audit.Actor, cmd hl7.ADT) error {
	switch cmd.Patient.MRN {
	case "UNKNOWN":
		return inbound.ErrUnknownPatient
	case "NOWARD":
		return inbound.ErrUnknownLocation
	case "BROKEN":
		return errors.New("database unavailable")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cmds = append(a.cmds, cmd)
	a.by = append(a.by, by)
	return nil
}

func adt(event, ctl, pid string, more ...string) string {
	segs := append([]string{
		`MSH|^~\&|EPIC|GENHOSP|VIGIL|GENHOSP|20260102030405||ADT^` + event + `|` + ctl + `|P|2.5.1`,
		`EVN|` + strings.SplitN(event, "^", 2)[0] + `|20260102030000`,
	}, pid)
	return strings.Join(append(segs, more...), "\r") + "\r"
}

const pidJane = `PID|1||MRN100^^^GENHOSP^MR||Doe^Jane||19800215|F`

func start(t *testing.T, cfg inbound.Config) (*inbound.Receiver, string) {
	t.Helper()
	rcv, err := inbound.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return rcv, interoptest.ServeMLLP(t, rcv)
}

// expectAck sends msg on c and checks the ACK's code and, when code is not empty, its first
// ERR-5.
func expectAck(t *testing.T, ctx context.Context, c *mllp.Client, name, msg string, ack hl7.AckCode, code string) {
	t.Helper()
	raw, err := c.Send(ctx, []byte(msg))
	if err != nil {
		t.Fatalf("%s: Send = %v", name, err)
	}
	got, _, errs, err := hl7.ParseAck(raw)
	if err != nil || got != ack || (code != "" && (len(errs) == 0 || errs[0] != code)) {
		t.Errorf("%s: ACK = %s %v %v, want %s %s", name, got, errs, err, ack, code)
	}
}

// TestADTFromMLLPSend sends a batch of ADT messages with Debian's python3-hl7 mllp_send, an
// independent MLLP sender, and checks every ACK, what was applied and what was audited.
//
// Verifies: REQ-INT-002, REQ-INT-003, REQ-INT-004, REQ-INT-005
func TestADTFromMLLPSend(t *testing.T) {
	interoptest.RequireTool(t, "mllp_send")
	pool := testdb.New(t)
	app := &applier{}
	rcv, addr := start(t, inbound.Config{Applier: app, Audit: interoptest.Recorder(t, pool), Facility: "ICU-GW",
		Now: func() time.Time { return time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC) }})

	msgs := []struct {
		msg  string
		ack  hl7.AckCode
		code string // first ERR-5
	}{
		{adt("A01^ADT_A01", "C1", pidJane, `PV1|1|I|ICU^1^A`), hl7.AA, ""},
		{adt("A02^ADT_A02", "C2", pidJane, `PV1|1|I|CCU^2^B|||ICU^1^A`), hl7.AA, ""},
		{adt("A01^ADT_A01", "C3", `NK1|1|Doe^John`, `PV1|1|I|ICU^1^A`), hl7.AE, "missing_pid"},
		{adt("A99", "C4", pidJane), hl7.AR, "unsupported_event"},
		{strings.Replace(adt("A08^ADT_A01", "C5", pidJane), `MSH|^~\&|`, `MSH|^~\&#|`, 1), hl7.AR, "unsupported_encoding_characters"},
		{strings.Replace(adt("A08^ADT_A01", "C6", pidJane), `MSH|^~\&|`, `MSH|*~\&|`, 1), hl7.AR, "unsupported_encoding_characters"},
		{"ZZZ|garbage\r", hl7.AR, "missing_msh"},
		{adt("A03^ADT_A03", "C8", `PID|1||UNKNOWN^^^GENHOSP^MR`), hl7.AE, "unknown_patient"},
		{adt("A01^ADT_A01", "C9", `PID|1||NOWARD^^^GENHOSP^MR||Roe^Ann`, `PV1|1|I|NOWARD`), hl7.AE, "unknown_location"},
		{adt("A08^ADT_A01", "C10", `PID|1||BROKEN^^^GENHOSP^MR||Roe^Ann`), hl7.AR, "internal_error"},
		{adt("A08^ADT_A01", "C11", `PID|1||MRN100^^^GENHOSP^MR||Doe-Smith^Jane||19800215|F`), hl7.AA, ""},
		{adt("A11^ADT_A09", "C12", pidJane), hl7.AA, ""},
		{adt("A13^ADT_A01", "C13", pidJane), hl7.AA, ""},
	}
	var wire []string
	for _, m := range msgs {
		wire = append(wire, m.msg)
	}
	acks := interoptest.MLLPSend(t, addr, wire)
	for i, m := range msgs {
		code, ctl, errs, err := hl7.ParseAck(acks[i])
		first := ""
		if len(errs) > 0 {
			first = errs[0]
		}
		if err != nil || code != m.ack || first != m.code {
			t.Errorf("message %d: ACK = %s %v (%v), want %s %s\n%q", i, code, errs, err, m.ack, m.code, acks[i])
		}
		if wantCtl := "C" + strconv.Itoa(i+1); m.code != "missing_msh" && !strings.HasPrefix(m.code, "unsupported_encoding") && ctl != wantCtl {
			t.Errorf("message %d: MSA-2 = %q, want %q", i, ctl, wantCtl)
		}
	}

	// Only the accepted messages reached the applier, in order, from the named sender.
	var kinds []string
	for _, c := range app.cmds {
		kinds = append(kinds, string(c.Kind)+":"+c.ControlID)
	}
	if got, want := strings.Join(kinds, " "), "admit:C1 transfer:C2 update:C11 cancel_admit:C12 cancel_discharge:C13"; got != want {
		t.Errorf("applied = %s, want %s", got, want)
	}
	if app.by[0].ID != "hl7:EPIC@GENHOSP" || app.by[0].Kind != audit.ActorService {
		t.Errorf("actor = %+v, want service hl7:EPIC@GENHOSP", app.by[0])
	}
	if got := rcv.Stats(); got != (inbound.Stats{Accepted: 5, Errors: 3, Rejected: 5}) {
		t.Errorf("Stats = %+v, want 5 accepted, 3 AE, 5 AR", got)
	}

	// Every message was audited, with its hash and its answer, and without its content.
	evs := interoptest.Events(t, pool, "hl7.adt.")
	if len(evs) != len(msgs) {
		t.Fatalf("%d audit events, want %d", len(evs), len(msgs))
	}
	for i, m := range msgs {
		e := evs[i]
		wantAction, wantOutcome := inbound.ActionAccepted, "success"
		if m.ack != hl7.AA {
			wantAction, wantOutcome = inbound.ActionRefused, "rejected"
		}
		if m.code == "internal_error" {
			wantOutcome = "failure"
		}
		if e.Action != wantAction || e.Outcome != wantOutcome || e.Reason != m.code || e.Payload["ack"] != string(m.ack) {
			t.Errorf("audit event %d = %s %s %q ack %v, want %s %s %q %s", i, e.Action, e.Outcome, e.Reason, e.Payload["ack"], wantAction, wantOutcome, m.code, m.ack)
		}
		if h, _ := e.Payload["sha256"].(string); len(h) != 64 {
			t.Errorf("audit event %d sha256 = %q, want a SHA-256", i, h)
		}
		if !strings.HasPrefix(e.SourceAddr, "127.0.0.1:") {
			t.Errorf("audit event %d source = %q, want the peer", i, e.SourceAddr)
		}
		for _, v := range e.Payload {
			if s, ok := v.(string); ok && (strings.Contains(s, "Doe") || strings.Contains(s, "Jane")) {
				t.Errorf("audit event %d payload holds PHI: %v", i, e.Payload)
			}
		}
	}
}

// Verifies: REQ-INT-004
func TestRefusalsOverTheWire(t *testing.T) {
	pool := testdb.New(t)
	app := &applier{}
	_, addr := start(t, inbound.Config{Applier: app, Audit: interoptest.Recorder(t, pool),
		Authenticate: func(_ context.Context, _ net.Addr, appName, _ string) (audit.Actor, error) {
			if appName != "EPIC" {
				return audit.Actor{}, errors.New("not on the allow list")
			}
			return audit.Actor{Kind: audit.ActorService, ID: "hl7:EPIC", AuthMethod: "allowlist"}, nil
		}})
	c, err := mllp.NewClient(mllp.ClientConfig{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name string
		msg  string
		ack  hl7.AckCode
		code string
	}{
		{"unknown sender", strings.Replace(adt("A01^ADT_A01", "X1", pidJane, `PV1|1|I|ICU`), "|EPIC|", "|ROGUE|", 1), hl7.AR, "unauthorized"},
		{"too large", adt("A08^ADT_A01", "X2", pidJane, strings.Repeat("NTE|1|L|"+strings.Repeat("x", 1000)+"\r", 1100)), hl7.AR, "message_too_large"},
		{"accepted", adt("A08^ADT_A01", "X3", pidJane), hl7.AA, ""},
	} {
		expectAck(t, ctx, c, tc.name, tc.msg, tc.ack, tc.code)
	}
	if len(app.cmds) != 1 || app.by[0].AuthMethod != "allowlist" {
		t.Errorf("applied %d commands by %+v, want 1 by the authenticated sender", len(app.cmds), app.by)
	}
	evs := interoptest.Events(t, pool, "hl7.adt.")
	if len(evs) != 3 || evs[0].Reason != "unauthorized" || evs[1].Reason != "message_too_large" || evs[2].ActorID != "hl7:EPIC" {
		t.Errorf("audit events = %+v", evs)
	}
}

// A refusal that cannot be audited is answered AR (the sender retries); an applied message
// stays AA (answering AR would make the sender apply it twice).
//
// Verifies: REQ-INT-005
func TestAuditFailure(t *testing.T) {
	broken := testdb.New(t)
	rec := interoptest.Recorder(t, broken)
	broken.Close() // the audit database is gone: every RecordNow fails
	app := &applier{}
	rcv, addr := start(t, inbound.Config{Applier: app, Audit: rec})
	c, err := mllp.NewClient(mllp.ClientConfig{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		msg  string
		ack  hl7.AckCode
		code string
	}{
		{adt("A01^ADT_A01", "F1", `NK1|1`, `PV1|1|I|ICU`), hl7.AR, "internal_error"},
		{adt("A08^ADT_A01", "F2", pidJane), hl7.AA, ""},
	} {
		expectAck(t, ctx, c, strings.SplitN(tc.msg, "\r", 2)[0], tc.msg, tc.ack, tc.code)
	}
	if st := rcv.Stats(); st.AuditFailures != 2 || st.Accepted != 1 || st.Rejected != 1 {
		t.Errorf("Stats = %+v, want 2 audit failures, 1 accepted, 1 rejected", st)
	}
	if len(app.cmds) != 1 {
		t.Errorf("applied %d commands, want 1", len(app.cmds))
	}
}
