package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// coalesceStack is a server on a real database whose streams hold tile updates for hold,
// with a signed-in client and one patient followed by the streams it opens.
type coalesceStack struct {
	t       testing.TB
	hub     *core.Hub
	ts      *httptest.Server
	cl      *http.Client
	patient uuid.UUID
}

func newCoalesceStack(t *testing.T, hold time.Duration) *coalesceStack {
	return newCoalesceStackWith(t, Config{StreamCoalesce: hold}, streamPingEvery)
}

// newCoalesceStackWith is newCoalesceStack with cfg's stream settings and the streams
// pinging every ping.
func newCoalesceStackWith(t testing.TB, cfg Config, ping time.Duration) *coalesceStack {
	t.Helper()
	pool := testdb.New(t)
	rec := audittest.Recorder(t, pool, nil)
	svc, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: newCoreTestSealer(t)})
	if err != nil {
		t.Fatal(err)
	}
	authSvc, cl := SignedIn(t, pool, rec)
	cfg.Pool, cfg.Recorder, cfg.Core, cfg.Auth = pool, rec, svc, authSvc
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.streamPing = ping
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return &coalesceStack{t: t, hub: svc.Hub(), ts: ts, cl: cl, patient: uuid.New()}
}

// open opens the stream a ward overview opens (tile updates and alarm events) for the
// patient, resuming after lastID when not empty, and waits until it is subscribed.
func (s *coalesceStack) open(ctx context.Context, lastID string) (<-chan sseEvent, func()) {
	s.t.Helper()
	before := s.hub.Subscribers()
	q := url.Values{"patient_id": {s.patient.String()}, "type": {core.TypeObservations, "alarm.opened"}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.ts.URL+"/api/v1/stream?"+q.Encode(), nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	res, err := s.cl.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK {
		s.t.Fatalf("GET /api/v1/stream = %d", res.StatusCode)
	}
	for i := 0; s.hub.Subscribers() <= before; i++ {
		if i > 1000 {
			s.t.Fatal("the stream did not subscribe")
		}
		time.Sleep(5 * time.Millisecond) // waiting for the server's goroutine, not for logic
	}
	ch := make(chan sseEvent, 1024)
	go readSSE(bufio.NewReader(res.Body), ch)
	return ch, func() { res.Body.Close() }
}

func (s *coalesceStack) publish(typ string, n int) uint64 {
	return s.hub.Publish(core.Event{Type: typ, PatientID: s.patient, Data: json.RawMessage(fmt.Sprintf(`{"n":%d}`, n))})
}

// next is the stream's next event; a safety net of 30 s against hanging, not a timed assertion.
func (s *coalesceStack) next(ch <-chan sseEvent) sseEvent {
	s.t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			s.t.Fatal("the stream ended")
		}
		return ev
	case <-time.After(30 * time.Second):
		s.t.Fatal("no event on the stream")
	}
	return sseEvent{}
}

// A burst of tile updates and alarm events, published faster than a stream flushes, reaches
// the stream whole and in order (the held updates at the end included, once the hold is
// over); a client that leaves after an event in the middle of what the server wrote at once
// resumes with Last-Event-ID after exactly that event: the retained (alarm) events after it,
// none before, none missing.
// Verifies: REQ-POR-061
func TestStreamBatchesKeepOrderAndResumeMidBatch(t *testing.T) {
	t.Parallel()
	s := newCoalesceStack(t, 200*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, closeStream := s.open(ctx, "")

	type sent struct {
		id  uint64
		typ string
	}
	var burst []sent
	for i := range 300 {
		typ := core.TypeObservations
		if i%7 == 3 {
			typ = "alarm.opened"
		}
		burst = append(burst, sent{s.publish(typ, i), typ})
	}
	// Ends with tile updates: they are written when the hold is over, with nothing after them.
	if burst[len(burst)-1].typ != core.TypeObservations {
		t.Fatal("the burst must end with a tile update")
	}
	for i, want := range burst {
		ev := s.next(events)
		if ev.id != strconv.FormatUint(want.id, 10) || ev.typ != want.typ {
			t.Fatalf("event %d on the stream = %s %s, want %d %s", i, ev.id, ev.typ, want.id, want.typ)
		}
		var body struct {
			Data struct{ N int } `json:"data"`
		}
		if err := json.Unmarshal([]byte(ev.data), &body); err != nil || body.Data.N != i {
			t.Fatalf("event %d on the stream carries %s (%v), want n %d", i, ev.data, err, i)
		}
	}

	// A second burst; the client reads up to an alarm event in its middle and leaves.
	var second []sent
	for i := range 100 {
		typ := core.TypeObservations
		if i%5 == 1 {
			typ = "alarm.opened"
		}
		second = append(second, sent{s.publish(typ, 1000+i), typ})
	}
	const leaveAt = 51 // an alarm event: 51 % 5 == 1
	for i := 0; i <= leaveAt; i++ {
		if ev := s.next(events); ev.id != strconv.FormatUint(second[i].id, 10) {
			t.Fatalf("second burst event %d = %s, want %d", i, ev.id, second[i].id)
		}
	}
	closeStream()
	for i := 0; s.hub.Subscribers() > 0; i++ { // the server notices the client left
		if i > 1000 {
			t.Fatal("the stream did not end after its client left")
		}
		time.Sleep(5 * time.Millisecond)
	}
	after := s.publish("alarm.opened", 2000) // while away
	resumed, closeResumed := s.open(ctx, strconv.FormatUint(second[leaveAt].id, 10))
	defer closeResumed()
	var want []uint64 // alarm events are retained for resuming; tile updates are not
	for _, e := range second[leaveAt+1:] {
		if e.typ != core.TypeObservations {
			want = append(want, e.id)
		}
	}
	want = append(want, after)
	for i, id := range want {
		ev := s.next(resumed)
		if ev.typ == "reset" {
			t.Fatalf("resumed stream answered reset, want the events after %d", second[leaveAt].id)
		}
		if ev.id != strconv.FormatUint(id, 10) || ev.typ != "alarm.opened" {
			t.Fatalf("resumed stream event %d = %s %s, want alarm.opened %d", i, ev.id, ev.typ, id)
		}
	}
}

// An alarm event is never held for coalescing: with tile updates held for an hour (and no
// ping that would write them), an alarm published after two of them reaches the stream, the
// held updates before it.
// Verifies: REQ-POR-061
func TestStreamWritesAlarmAtOnceWithHeldUpdates(t *testing.T) {
	t.Parallel()
	s := newCoalesceStackWith(t, Config{StreamCoalesce: time.Hour}, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, closeStream := s.open(ctx, "")
	defer closeStream()
	// The pauses let the stream take the first update and start holding (the path where it
	// is woken for the alarm); without them the three may be taken at once.
	o1 := s.publish(core.TypeObservations, 1) // held: the stream flushed its header just now
	time.Sleep(100 * time.Millisecond)
	o2 := s.publish(core.TypeObservations, 2)
	time.Sleep(100 * time.Millisecond)
	a := s.publish("alarm.opened", 3)
	for _, want := range []struct {
		id  uint64
		typ string
	}{{o1, core.TypeObservations}, {o2, core.TypeObservations}, {a, "alarm.opened"}} {
		if ev := s.next(events); ev.id != strconv.FormatUint(want.id, 10) || ev.typ != want.typ {
			t.Fatalf("stream event = %s %s, want %d %s", ev.id, ev.typ, want.id, want.typ)
		}
	}
}
