package outbound_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/interop/hl7"
	"github.com/vigilhealth/vigil/interop/hl7/outbound"
	"github.com/vigilhealth/vigil/interop/interoptest"
	"github.com/vigilhealth/vigil/interop/mllp"
	"github.com/vigilhealth/vigil/keys"
)

func sealer(t testing.TB) outbound.Sealer {
	t.Helper()
	local, err := keys.NewLocal(keys.LocalConfig{Dir: t.TempDir(), Passphrase: []byte("interop test passphrase"), ScryptN: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	ring, err := keys.NewRing(keys.Config{Backend: local})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ring.Close() })
	if _, err := ring.EnsureKeys(context.Background()); err != nil {
		t.Fatal(err)
	}
	return ring.PHI()
}

// receiver runs testdata/oru_receiver.py (Debian's python3-hl7, no Vigil code) and returns
// its address and a function reading what it received so far.
type received struct {
	ControlID string `json:"control_id"`
	Type      string `json:"type"`
	Version   string `json:"version"`
	MRN       string `json:"mrn"`
	Answered  string `json:"answered"`
	OBX       []struct {
		Type, Code, System, Value, Unit string
		UnitSystem                      string `json:"unit_system"`
	} `json:"obx"`
}

func startReceiver(t testing.TB, plan string) (addr string, read func() []received) {
	t.Helper()
	interoptest.RequireTool(t, "mllp_send") // python3-hl7 is installed with it
	py := interoptest.RequireTool(t, "/usr/bin/python3")
	out := filepath.Join(t.TempDir(), "received.jsonl")
	cmd := exec.Command(py, "testdata/oru_receiver.py", "--out", out, "--plan", plan)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	var port int
	if _, serr := fmt.Sscanf(line, "PORT %d", &port); err != nil || serr != nil {
		t.Fatalf("receiver did not start: %q %v %v", line, err, serr)
	}
	return fmt.Sprintf("127.0.0.1:%d", port), func() []received {
		b, err := os.ReadFile(out)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		var rs []received
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if l == "" {
				continue
			}
			var r received
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				t.Fatalf("receiver output %q: %v", l, err)
			}
			rs = append(rs, r)
		}
		return rs
	}
}

// backoffs records the back-off waits asked for and fires at once (no sleeping).
type backoffs struct {
	mu    sync.Mutex
	waits []time.Duration
	block bool // never fire (a lane stays in back-off until Close)
}

func (b *backoffs) after(d time.Duration) <-chan time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.waits = append(b.waits, d)
	if b.block {
		return nil
	}
	c := make(chan time.Time, 1)
	c <- time.Time{}
	return c
}

func oru(t testing.TB, ctl, mrn string, n int) outbound.Message {
	t.Helper()
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	o := hl7.ORU{ControlID: ctl, Time: at, Patient: hl7.ORUPatient{ID: "p-" + mrn, MRN: mrn, FamilyName: "Doe", GivenName: "Jane", Ward: "ICU"}}
	for i := 0; i < n; i++ {
		o.Observations = append(o.Observations, hl7.ORUObservation{Code: "8867-4", Display: "Heart rate", Value: float64(60 + i), Unit: "/min", Time: at.Add(time.Duration(i) * time.Second), DeviceID: "dev-1"})
	}
	o.Observations = append(o.Observations, hl7.ORUObservation{Code: "8480-6", Display: "Systolic blood pressure", Value: 120.5, Unit: "mm[Hg]", Time: at})
	b, err := hl7.BuildORU(o)
	if err != nil {
		t.Fatal(err)
	}
	return outbound.Message{PatientKey: "p-" + mrn, ControlID: ctl, Bytes: b}
}

func newSender(t testing.TB, pool *pgxpool.Pool, addr string, mod func(*outbound.Config)) *outbound.Sender {
	t.Helper()
	cfg := outbound.Config{Name: "ehr-test", Addr: addr, Pool: pool, Sealer: sealer(t), Audit: interoptest.Recorder(t, pool), Lanes: 2, AckTimeout: 30 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	s, err := outbound.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

// TestDeliveryToIndependentReceiver sends ORU^R01 messages to a python3-hl7 receiver that
// answers AR twice to one message and AE to another: the first is retried with back-off
// and delivered in its patient's order, the second dead-lettered, sealed, audited, and
// requeued.
//
// Verifies: REQ-INT-006, REQ-INT-007, REQ-INT-008, REQ-INT-009
func TestDeliveryToIndependentReceiver(t *testing.T) {
	addr, read := startReceiver(t, "A2=AR:2,B2=AE")
	pool := testdb.New(t)
	bo := &backoffs{}
	s := newSender(t, pool, addr, func(c *outbound.Config) { c.After = bo.after })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	msgs := []outbound.Message{oru(t, "A1", "MRN-A", 3), oru(t, "B1", "MRN-B", 1), oru(t, "A2", "MRN-A", 2),
		oru(t, "B2", "MRN-B", 1), oru(t, "A3", "MRN-A", 1), oru(t, "B3", "MRN-B", 1)}
	for _, m := range msgs {
		if err := s.Enqueue(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	got := read()
	perPatient := map[string][]string{}
	for _, r := range got {
		perPatient[r.MRN] = append(perPatient[r.MRN], r.ControlID+":"+r.Answered)
		if r.Type != "ORU^R01^ORU_R01" || r.Version != "2.5.1" {
			t.Errorf("receiver saw type %q version %q", r.Type, r.Version)
		}
	}
	if got, want := strings.Join(perPatient["MRN-A"], " "), "A1:AA A2:AR A2:AR A2:AA A3:AA"; got != want {
		t.Errorf("patient A deliveries = %s, want %s (in order, A2 retried)", got, want)
	}
	if got, want := strings.Join(perPatient["MRN-B"], " "), "B1:AA B2:AE B3:AA"; got != want {
		t.Errorf("patient B deliveries = %s, want %s", got, want)
	}
	// The receiver's own parser read the OBX as LOINC-coded, UCUM units.
	first := got[0]
	if first.ControlID == "A1" {
		if len(first.OBX) != 4 || first.OBX[0].Code != "8867-4" || first.OBX[0].System != "LN" || first.OBX[0].UnitSystem != "UCUM" ||
			first.OBX[3].Value != "120.5" || first.OBX[3].Unit != "mm[Hg]" {
			t.Errorf("receiver parsed OBX = %+v", first.OBX)
		}
	}
	if got, want := fmt.Sprint(bo.waits), "[1s 2s]"; got != want {
		t.Errorf("back-off waits = %s, want %s", got, want)
	}
	if st := s.Stats(); st.Delivered != 5 || st.DeadLettered != 1 || st.Retries != 2 || st.AuditFailures != 0 {
		t.Errorf("Stats = %+v, want 5 delivered, 1 dead letter, 2 retries", st)
	}

	dls, err := s.DeadLetters(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 1 || dls[0].ControlID != "B2" || dls[0].Reason != "refused_ae" || dls[0].LastAck != "AE" || string(dls[0].Message) != string(msgs[3].Bytes) {
		t.Fatalf("DeadLetters = %+v", dls)
	}
	var stored []byte
	if err := pool.QueryRow(ctx, `SELECT message_sealed FROM interop_hl7_dead_letters`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(stored), "MRN-B") || strings.Contains(string(stored), "Doe") {
		t.Errorf("dead letter stored in the clear")
	}

	evs := interoptest.Events(t, pool, "hl7.oru.")
	byCtl := map[string]interoptest.Event{}
	for _, e := range evs {
		byCtl[e.ObjectID+"/"+e.Action] = e
	}
	for _, m := range msgs {
		sum := sha256.Sum256(m.Bytes)
		action, ack := "hl7.oru.delivered", "AA"
		if m.ControlID == "B2" {
			action, ack = "hl7.oru.dead_lettered", "AE"
		}
		e, ok := byCtl[m.ControlID+"/"+action]
		if !ok {
			t.Errorf("no %s audit event for %s", action, m.ControlID)
			continue
		}
		if e.Payload["sha256"] != hex.EncodeToString(sum[:]) || e.Payload["destination"] != "ehr-test" || e.Payload["ack"] != ack {
			t.Errorf("audit event of %s = %v", m.ControlID, e.Payload)
		}
	}
	if len(evs) != len(msgs) {
		t.Errorf("%d audit events, want %d", len(evs), len(msgs))
	}

	// Requeue: the message goes out again (refused again here), audited.
	by := audit.Actor{Kind: audit.ActorUser, ID: "analyst-1", AuthMethod: "test"}
	if err := s.Requeue(ctx, by, dls[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := s.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Requeue(ctx, by, dls[0].ID); !errors.Is(err, outbound.ErrDeadLetterNotFound) {
		t.Errorf("Requeue(same id again) = %v, want ErrDeadLetterNotFound", err)
	}
	if n := len(read()); n != len(got)+1 {
		t.Errorf("receiver saw %d messages after the requeue, want %d", n, len(got)+1)
	}
	evs = interoptest.Events(t, pool, "hl7.oru.requeued")
	if len(evs) != 1 || evs[0].ActorID != "analyst-1" {
		t.Errorf("requeue audit events = %+v", evs)
	}
}

// Verifies: REQ-INT-007, REQ-INT-008
func TestRetriesThenDeadLettersAndCloseKeepsQueued(t *testing.T) {
	pool := testdb.New(t)
	// A port with nobody listening: every attempt fails to connect.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	bo := &backoffs{}
	s := newSender(t, pool, addr, func(c *outbound.Config) { c.After = bo.after; c.MaxAttempts = 3; c.Lanes = 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := s.Enqueue(ctx, oru(t, "Z1", "MRN-Z", 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	dls, err := s.DeadLetters(ctx, 10)
	if err != nil || len(dls) != 1 || dls[0].Reason != "max_attempts" || dls[0].Attempts != 3 || dls[0].LastError == "" {
		t.Fatalf("DeadLetters = %+v, %v; want one max_attempts after 3 attempts", dls, err)
	}
	if got, want := fmt.Sprint(bo.waits), "[1s 2s]"; got != want {
		t.Errorf("back-off waits = %s, want %s", got, want)
	}

	// Close while a message waits in back-off and others are queued: none is lost.
	bo.mu.Lock()
	bo.block = true
	bo.mu.Unlock()
	for _, c := range []string{"Z2", "Z3", "Z4"} {
		if err := s.Enqueue(ctx, oru(t, c, "MRN-Z", 1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Enqueue(ctx, oru(t, "Z5", "MRN-Z", 1)); !errors.Is(err, outbound.ErrClosed) {
		t.Errorf("Enqueue after Close = %v, want ErrClosed", err)
	}
	dls, err = s.DeadLetters(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range dls {
		got = append(got, d.ControlID+":"+d.Reason)
	}
	if want := "Z1:max_attempts Z2:not_sent_before_close Z3:not_sent_before_close Z4:not_sent_before_close"; strings.Join(got, " ") != want {
		t.Errorf("dead letters = %s, want %s", strings.Join(got, " "), want)
	}
	if n := len(interoptest.Events(t, pool, "hl7.oru.dead_lettered")); n != 4 {
		t.Errorf("%d dead-letter audit events, want 4", n)
	}
}

// An ACK for another control id is not taken as delivery: the connection is reopened and
// the message sent again.
//
// Verifies: REQ-INT-007
func TestAckForAnotherMessageIsRetried(t *testing.T) {
	pool := testdb.New(t)
	var mu sync.Mutex
	seen := 0
	addr := interoptest.ServeMLLP(t, mllp.HandlerFunc(func(_ context.Context, r mllp.Request) []byte {
		m, err := hl7.Parse(r.Message, hl7.Limits{})
		if err != nil {
			t.Errorf("receiver: %v", err)
			return nil
		}
		mu.Lock()
		seen++
		n := seen
		mu.Unlock()
		if n == 1 { // acknowledge some other message
			other, _ := hl7.Parse([]byte("MSH|^~\\&|X|Y|||20260101||ORU^R01|OTHER|P|2.5.1\r"), hl7.Limits{})
			return hl7.Ack(other, hl7.AA, nil, hl7.AckOptions{ControlID: "k1", Now: time.Unix(0, 0)})
		}
		return hl7.Ack(m, hl7.AA, nil, hl7.AckOptions{ControlID: "k2", Now: time.Unix(0, 0)})
	}))
	bo := &backoffs{}
	s := newSender(t, pool, addr, func(c *outbound.Config) { c.After = bo.after })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Enqueue(ctx, oru(t, "M1", "MRN-M", 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Delivered != 1 || st.Retries != 1 || seen != 2 {
		t.Errorf("Stats = %+v after %d deliveries, want delivered on the second", st, seen)
	}
	evs := interoptest.Events(t, pool, "hl7.oru.delivered")
	if len(evs) != 1 || evs[0].Payload["attempts"] != float64(2) {
		t.Errorf("audit = %+v", evs)
	}
}
