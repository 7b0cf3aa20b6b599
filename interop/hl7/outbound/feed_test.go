package outbound_test

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/interop/hl7/outbound"
	"github.com/vigilhealth/vigil/interop/interoptest"
)

// feedRig is the real clinical core on a test database with three admitted patients.
type feedRig struct {
	pool     *pgxpool.Pool
	core     *core.Service
	patients []uuid.UUID
	mrns     map[string]int // MRN → patient index
	seq      atomic.Uint64
	t0       time.Time
}

func newFeedRig(t *testing.T) *feedRig {
	t.Helper()
	pool := testdb.New(t)
	cs, pats := coreWithPatients(t, pool, interoptest.Recorder(t, pool), "FEED-", 3)
	r := &feedRig{pool: pool, core: cs, patients: pats, mrns: map[string]int{}, t0: time.Now().Add(-time.Hour).Truncate(time.Second)}
	for i := range pats {
		r.mrns["FEED-"+strconv.Itoa(i)] = i
	}
	return r
}

// upload stores one upload of patient i whose heart rate is value (the order it was made in).
func (r *feedRig) upload(t *testing.T, i int, value int) {
	t.Helper()
	n := r.seq.Add(1)
	var h [32]byte
	copy(h[:], fmt.Sprintf("feed-upload-%d", n))
	if _, err := r.core.Ingest(context.Background(), core.Batch{PatientID: r.patients[i], Provenance: core.Provenance{DeviceID: "dev-" + strconv.Itoa(i),
		KeyID: "dev/1", UploadHash: h, Sequence: n, Transport: "http"},
		Samples: []core.Sample{{Code: "8867-4", Value: float64(value), Unit: "/min", Time: r.t0.Add(time.Duration(n) * time.Second)}}}); err != nil {
		t.Fatal(err)
	}
}

// startFeed starts a sender and a feed for destination "ehr" and returns the feed and the
// function that stops both (the feed first, as `vigil serve` does).
func startFeed(t *testing.T, r *feedRig, addr string) (*outbound.Feed, func()) {
	t.Helper()
	s, err := outbound.New(outbound.Config{Name: "ehr", Addr: addr, Pool: r.pool, Sealer: sealer(t), Audit: interoptest.Recorder(t, r.pool),
		Lanes: 2, KeepOnClose: true})
	if err != nil {
		t.Fatal(err)
	}
	f, err := outbound.NewFeed(outbound.FeedConfig{Core: r.core, Pool: r.pool, Sender: s, Facility: "VIGIL",
		PollInterval: 20 * time.Millisecond, LeaderInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		<-done
		_ = s.Close(context.Background())
	}
	t.Cleanup(stop)
	return f, stop
}

// waitFor waits until read returns at least n messages (bounded; the receiver is a separate
// process).
func waitFor(t *testing.T, read func() []received, n int) []received {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := read()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkOnceInOrder checks that every control id arrived once and that each patient's
// uploads arrived in the order they were made (their heart rate counts up).
func checkOnceInOrder(t *testing.T, r *feedRig, got []received) {
	t.Helper()
	seen := map[string]bool{}
	last := map[string]float64{}
	for _, m := range got {
		if seen[m.ControlID] {
			t.Errorf("control id %s received twice", m.ControlID)
		}
		seen[m.ControlID] = true
		if _, ok := r.mrns[m.MRN]; !ok {
			t.Errorf("message %s of MRN %q, want one of the rig's patients", m.ControlID, m.MRN)
		}
		for _, o := range m.OBX {
			if o.Code != "8867-4" {
				continue
			}
			v, err := strconv.ParseFloat(o.Value, 64)
			if err != nil || v <= last[m.MRN] {
				t.Errorf("patient %s: heart rate %q after %v: out of order", m.MRN, o.Value, last[m.MRN])
			}
			last[m.MRN] = v
		}
	}
}

// The durable feed resumes: uploads stored while it is stopped, and an alarm opened then,
// are sent when it starts again, each once, in each patient's order, with the MSH-10 derived
// from the row; nothing sent before the stop is sent again.
// Verifies: REQ-INT-043, REQ-INT-044
func TestFeedResumesAfterRestart(t *testing.T) {
	addr, read := startReceiver(t, "")
	r := newFeedRig(t)
	f, stop := startFeed(t, r, addr)
	select {
	case <-f.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("feed did not start")
	}
	value := map[int]int{}
	next := func(i int) int { value[i]++; return 60 + value[i] }
	for k := 0; k < 2; k++ {
		for i := range r.patients {
			r.upload(t, i, next(i))
		}
	}
	if got := waitFor(t, read, 6); len(got) != 6 {
		t.Fatalf("received %d messages before the stop, want 6", len(got))
	}
	stop()

	// While the feed is down: nine uploads and an alarm.
	for k := 0; k < 3; k++ {
		for i := range r.patients {
			r.upload(t, i, next(i))
		}
	}
	as, err := alarms.New(alarms.Config{Pool: r.pool, Recorder: interoptest.Recorder(t, r.pool)})
	if err != nil {
		t.Fatal(err)
	}
	if err := pgx.BeginFunc(context.Background(), r.pool, func(tx pgx.Tx) error {
		_, err := as.Apply(context.Background(), tx, alarms.Signal{PatientID: r.patients[0], RuleID: "hr-high", RuleVersion: 1,
			Raise: true, Severity: alarms.SeverityHigh, Message: "HR high", At: time.Now()})
		return err
	}); err != nil {
		t.Fatal(err)
	}

	_, stop2 := startFeed(t, r, addr)
	got := waitFor(t, read, 16)
	stop2()
	got = read()
	if len(got) != 16 {
		t.Fatalf("received %d messages, want 16 (6 before the stop, 9 uploads and 1 alarm after)", len(got))
	}
	checkOnceInOrder(t, r, got)
	alarmsSeen := 0
	for _, m := range got {
		if m.ControlID[:2] == "VA" {
			alarmsSeen++
		} else if m.ControlID[:2] != "VU" || len(m.ControlID) > 20 {
			t.Errorf("control id %q, want VU… of at most 20 characters", m.ControlID)
		}
	}
	if alarmsSeen != 1 {
		t.Errorf("%d alarm messages, want 1", alarmsSeen)
	}
	var kind int
	if err := r.pool.QueryRow(context.Background(), `SELECT kind FROM interop_hl7_feed_cursors WHERE destination = 'ehr'`).Scan(&kind); err != nil {
		t.Errorf("cursor: %v", err)
	}
	if n := len(interoptest.Events(t, r.pool, "hl7.oru.feed_started")); n != 1 {
		t.Errorf("%d hl7.oru.feed_started events, want 1 (the cursor is made once)", n)
	}
}

// Two feeds of one destination on one database (two replicas): one leads, the other waits;
// when the leader stops, the other takes over from the saved cursor; every upload is sent
// once, each patient's in order.
// Verifies: REQ-INT-045
func TestTwoFeedsOneDatabaseSendOnce(t *testing.T) {
	addr, read := startReceiver(t, "")
	r := newFeedRig(t)
	f1, stop1 := startFeed(t, r, addr)
	f2, stop2 := startFeed(t, r, addr)
	deadline := time.Now().Add(30 * time.Second)
	for !f1.Leading() && !f2.Leading() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if f1.Leading() == f2.Leading() {
		t.Fatalf("leading: %v and %v, want exactly one", f1.Leading(), f2.Leading())
	}
	value := map[int]int{}
	for k := 0; k < 10; k++ {
		for i := range r.patients {
			value[i]++
			r.upload(t, i, 60+value[i])
		}
	}
	waitFor(t, read, 30)
	// The leader stops (as a replica does when it is shut down): the other takes over from
	// the saved cursor and sends what is stored meanwhile.
	leaderStop, other := stop1, f2
	if f2.Leading() {
		leaderStop, other = stop2, f1
	}
	leaderStop()
	for k := 0; k < 3; k++ {
		for i := range r.patients {
			value[i]++
			r.upload(t, i, 60+value[i])
		}
	}
	got := waitFor(t, read, 39)
	if !other.Leading() {
		t.Errorf("the remaining feed does not lead after the leader stopped")
	}
	stop1()
	stop2()
	got = read()
	if len(got) != 39 {
		t.Fatalf("received %d messages, want 39", len(got))
	}
	checkOnceInOrder(t, r, got)
}

// The control id of a stored row's message is a function of the row: the same on every
// call (attempt, restart, replica), different for another row or another change of the same
// alarm, within HL7 v2.5.1's 20 characters.
// Verifies: REQ-INT-044
func TestControlIDIsStablePerRow(t *testing.T) {
	up, al := uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7())
	cases := []struct{ kind, identity, prefix string }{
		{"upload", up.String(), "VU"},
		{"alarm", al.String() + "/41022", "VA"},
		{"alarm", al.String() + "/41023", "VA"},
	}
	seen := map[string]bool{}
	for _, c := range cases {
		id := outbound.ControlID(c.kind, c.identity)
		if again := outbound.ControlID(c.kind, c.identity); again != id {
			t.Errorf("ControlID(%s, %s) = %q, then %q, want the same", c.kind, c.identity, id, again)
		}
		if len(id) > 20 || id[:2] != c.prefix {
			t.Errorf("ControlID(%s, %s) = %q, want %s… of at most 20 characters", c.kind, c.identity, id, c.prefix)
		}
		if seen[id] {
			t.Errorf("ControlID(%s, %s) = %q, the id of another row", c.kind, c.identity, id)
		}
		seen[id] = true
	}
}
