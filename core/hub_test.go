package core_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
)

// The hub publishes an alarm transition whole even when its alarm carries no peak severity:
// the event's data is the transition (rule, severity, message), never a stub of its id and
// kind. The old encoding could not encode a zero severity, and the hub fell back to the stub.
// Verifies: REQ-CORE-140
func TestHubAlarmTransitionWhole(t *testing.T) {
	t.Parallel()
	h := core.NewHub(core.HubConfig{Buffer: 4, Replay: 16})
	defer h.Close()
	p := uuid.New()
	sub := h.Subscribe(core.Filter{})
	h.AlarmTransition(context.Background(), alarms.Transition{Kind: alarms.Opened, At: t0,
		Alarm: alarms.Alarm{ID: uuid.New(), PatientID: p, RuleID: "hr-low", State: alarms.StateActive, Severity: alarms.SeverityHigh, Message: "HR 38/min"}})
	ev := <-sub.C
	var got alarms.Transition
	if err := json.Unmarshal(ev.Data, &got); err != nil {
		t.Fatalf("event data %s: %v", ev.Data, err)
	}
	if got.Alarm.RuleID != "hr-low" || got.Alarm.Severity != alarms.SeverityHigh || got.Alarm.Message != "HR 38/min" || got.Alarm.PatientID != p {
		t.Errorf("alarm.opened data = %s, want the whole transition (hr-low, high, its message)", ev.Data)
	}
}

// The hub delivers alarm transitions to matching subscribers in order, never blocks the
// publisher, and disconnects (rather than silently skipping) a subscriber that falls behind.
// Verifies: REQ-CORE-012
func TestHubFanOut(t *testing.T) {
	t.Parallel()
	h := core.NewHub(core.HubConfig{Buffer: 4, Replay: 16})
	p1, p2 := uuid.New(), uuid.New()
	all := h.Subscribe(core.Filter{})
	mine := h.Subscribe(core.Filter{Patients: map[uuid.UUID]bool{p1: true}})
	slow := h.Subscribe(core.Filter{})
	h.AlarmTransition(context.Background(), alarms.Transition{Kind: alarms.Opened, Alarm: alarms.Alarm{PatientID: p1, Severity: alarms.SeverityHigh}, At: t0})
	h.Publish(core.Event{Type: "alarm.opened", PatientID: p2})
	ev := <-all.C
	if ev.Type != "alarm.opened" || ev.PatientID != p1 || !ev.At.Equal(t0) {
		t.Errorf("first event = %+v, want alarm.opened of p1", ev)
	}
	first := ev.ID
	if ev := <-all.C; ev.PatientID != p2 || ev.ID != first+1 {
		t.Errorf("second event = %+v, want p2 id %d", ev, first+1)
	}
	// A stream resuming after the first event gets the second, then live ones, no gap.
	re, complete := h.SubscribeAfter(core.Filter{}, first)
	if ev := <-re.C; !complete || ev.ID != first+1 {
		t.Errorf("SubscribeAfter(%d) = %+v (complete %v), want event %d", first, ev, complete, first+1)
	}
	re.Close()
	if _, complete := h.SubscribeAfter(core.Filter{}, first+100); complete {
		t.Error("SubscribeAfter(an id from the future) complete, want a reset")
	}
	if ev := <-mine.C; ev.PatientID != p1 {
		t.Errorf("filtered subscriber got %+v, want p1 only", ev)
	}
	select {
	case ev := <-mine.C:
		t.Errorf("filtered subscriber got %+v, want nothing more", ev)
	default:
	}
	done := make(chan struct{})
	go func() {
		for i := 0; i < 10; i++ {
			h.Publish(core.Event{Type: "x", PatientID: p2})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Publish blocked on a slow subscriber")
	}
	n := 0
	for range slow.C {
		n++
	}
	if !slow.Dropped() || n != 4 {
		t.Errorf("slow subscriber: dropped %v after %d events, want dropped after 4 (its buffer)", slow.Dropped(), n)
	}
	all.Close()
	all.Close()
	h.Close()
	if _, ok := <-mine.C; ok {
		// drain what was buffered
		for range mine.C {
		}
	}
	if h.Subscribers() != 0 {
		t.Errorf("Subscribers() after Close = %d, want 0", h.Subscribers())
	}
}

// Live observation events reach only subscribers that ask for them by type (never the
// catch-all webhook feed), and are not kept for replay.
// Verifies: REQ-CORE-012
func TestLiveObservations(t *testing.T) {
	t.Parallel()
	hub := core.NewHub(core.HubConfig{})
	e := newEnv(t, func(c *core.Config) { c.Hub = hub })
	p := e.patient(t)
	all := hub.Subscribe(core.Filter{})
	defer all.Close()
	if hub.Wants(core.TypeObservations, p) {
		t.Fatal("Wants(observations) with only a catch-all subscriber = true, want false")
	}
	live := hub.Subscribe(core.Filter{Types: map[string]bool{core.TypeObservations: true}, Patients: map[uuid.UUID]bool{p: true}})
	defer live.Close()
	res, err := e.svc.Ingest(e.ctx, batch(p, core.Sample{Code: core.LOINCHeartRate, Value: 99, Unit: "/min", Time: t0.Add(-time.Second)}))
	if err != nil {
		t.Fatal(err)
	}
	ev := <-live.C
	var got struct {
		UploadID     uuid.UUID          `json:"upload_id"`
		Observations []core.Observation `json:"observations"`
	}
	if err := json.Unmarshal(ev.Data, &got); err != nil || ev.Type != core.TypeObservations || got.UploadID != res.AuditEventID ||
		len(got.Observations) != 1 || got.Observations[0].Value != 99 {
		t.Errorf("live event = %s %s (%v), want the stored heart rate of upload %s", ev.Type, ev.Data, err, res.AuditEventID)
	}
	select {
	case ev := <-all.C:
		t.Errorf("catch-all subscriber got %s, want nothing", ev.Type)
	default:
	}
	if _, complete := hub.SubscribeAfter(core.Filter{Types: map[string]bool{core.TypeObservations: true}}, ev.ID-1); complete {
		t.Error("SubscribeAfter(before a live event) complete, want a reset (live events are not replayed)")
	}
}

// A subscription's Urgent is signalled when an event other than a live tile update is
// queued for it — also behind a full channel — and not for tile updates, so that a stream
// holding tile updates to write them together is woken for an alarm's event only.
// Verifies: REQ-POR-061
func TestHubUrgentOnlyForNonLiveEvents(t *testing.T) {
	t.Parallel()
	h := core.NewHub(core.HubConfig{Buffer: 64, Replay: 16})
	defer h.Close()
	p := uuid.New()
	sub := h.Subscribe(core.Filter{Types: map[string]bool{core.TypeObservations: true, "alarm.opened": true}})
	defer sub.Close()
	urgent := func() bool {
		select {
		case <-sub.Urgent:
			return true
		default:
			return false
		}
	}
	for range 20 { // past the channel's 16: the rest wait in the backlog
		h.Publish(core.Event{Type: core.TypeObservations, PatientID: p, Data: json.RawMessage(`{}`)})
	}
	if urgent() {
		t.Fatal("Urgent signalled for tile updates")
	}
	h.Publish(core.Event{Type: "alarm.opened", PatientID: p, Data: json.RawMessage(`{}`)})
	if !urgent() {
		t.Fatal("Urgent not signalled for an alarm event queued behind tile updates")
	}
	if urgent() {
		t.Fatal("Urgent signalled twice for one event")
	}
	for i := range 21 {
		if ev := <-sub.C; (i < 20) != (ev.Type == core.TypeObservations) {
			t.Fatalf("event %d = %s, want the 20 updates then the alarm", i, ev.Type)
		}
	}
}
