package core_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/testdb"
)

func next(t *testing.T, s *core.Subscription) core.Event {
	t.Helper()
	select {
	case ev, ok := <-s.C:
		if !ok {
			t.Fatal("subscription closed")
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10 s")
	}
	return core.Event{}
}

// Two replicas' hubs on one database are one stream: an alarm published on A reaches B's
// subscribers with the same id, in the same order; a stream cut on B resumes on A after its
// Last-Event-ID with nothing missing; the webhook feed (Local) of each replica sees only its
// own events, so each is enqueued once.
// Verifies: REQ-HA-006, REQ-HA-007
func TestHubAcrossReplicas(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	start := func() (*core.Hub, *core.HubRelay) {
		h := core.NewHub(core.HubConfig{})
		r, err := core.StartHubRelay(ctx, h, core.HubRelayConfig{Pool: pool, Poll: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close(ctx); h.Close() })
		return h, r
	}
	ha, _ := start()
	hb, rb := start()
	onA, onB := ha.Subscribe(core.Filter{}), hb.Subscribe(core.Filter{})
	hooksA, hooksB := ha.Subscribe(core.Filter{Local: true}), hb.Subscribe(core.Filter{Local: true})
	p := uuid.New()
	data := json.RawMessage(`{"n":1}`)
	ha.Publish(core.Event{Type: "alarm.opened", PatientID: p, Data: data})
	hb.Publish(core.Event{Type: "alarm.escalated", PatientID: p})
	ha.Publish(core.Event{Type: "alarm.resolved", PatientID: p})
	var gotA, gotB []core.Event
	for range 3 {
		gotA, gotB = append(gotA, next(t, onA)), append(gotB, next(t, onB))
	}
	for i := range gotA {
		if gotA[i].ID != gotB[i].ID || gotA[i].Type != gotB[i].Type || i > 0 && gotA[i].ID <= gotA[i-1].ID {
			t.Fatalf("event %d: A got %d %s, B got %d %s; want the same increasing ids on both", i, gotA[i].ID, gotA[i].Type, gotB[i].ID, gotB[i].Type)
		}
	}
	// (The replicas' writes interleave in any order; A's own two keep theirs.)
	var opened *core.Event
	for i := range gotB {
		if gotB[i].Type == "alarm.opened" {
			opened = &gotB[i]
		}
	}
	if opened == nil || string(opened.Data) != `{"n": 1}` && string(opened.Data) != `{"n":1}` {
		t.Errorf("B's events = %+v, want alarm.opened with A's data among them", gotB)
	}
	if ev := next(t, hooksA); ev.Type != "alarm.opened" {
		t.Errorf("A's local feed first = %s, want alarm.opened", ev.Type)
	}
	if ev := next(t, hooksA); ev.Type != "alarm.resolved" {
		t.Errorf("A's local feed second = %s, want alarm.resolved (not B's escalation)", ev.Type)
	}
	if ev := next(t, hooksB); ev.Type != "alarm.escalated" {
		t.Errorf("B's local feed = %s, want only alarm.escalated", ev.Type)
	}

	// B goes away after the client saw the first event; the client resumes on A.
	if err := rb.Close(ctx); err != nil {
		t.Fatal(err)
	}
	hb.Close()
	re, complete := ha.SubscribeAfter(core.Filter{}, gotB[0].ID)
	defer re.Close()
	if !complete {
		t.Errorf("SubscribeAfter(B's id) on A: complete = false, want true")
	}
	for i := 1; i < 3; i++ {
		if ev := next(t, re); ev.ID != gotA[i].ID {
			t.Errorf("resumed event = %d, want %d", ev.ID, gotA[i].ID)
		}
	}
	// A replica started later resumes the same stream too.
	hc, _ := start()
	rc, complete := hc.SubscribeAfter(core.Filter{}, gotA[0].ID)
	defer rc.Close()
	if !complete {
		t.Errorf("SubscribeAfter on a new replica: complete = false, want true")
	}
	if ev := next(t, rc); ev.ID != gotA[1].ID {
		t.Errorf("new replica's resumed event = %d, want %d", ev.ID, gotA[1].ID)
	}
}

// A chart on replica B (a subscriber to a patient's live observations) receives the
// observations replica A stored, once each and in order, with their values, upload and
// device; A's own subscriber gets its own once (not again through the database); the
// webhook feed (Local) of B does not see them. Before: live observations stayed on the
// replica that stored them, and B's chart saw nothing.
// Verifies: REQ-HA-033
func TestLiveObservationsAcrossReplicas(t *testing.T) {
	t.Parallel()
	a := newEnv(t, nil)
	svcB, err := core.New(core.Config{Pool: a.pool, Recorder: a.rec, Now: a.clock.Now, PHI: newTestSealer(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, h := range []*core.Hub{a.svc.Hub(), svcB.Hub()} {
		r, err := core.StartHubRelay(ctx, h, core.HubRelayConfig{Pool: a.pool, Poll: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close(ctx); h.Close() })
	}
	p := a.patient(t)
	live := core.Filter{Types: map[string]bool{core.TypeObservations: true}, Patients: map[uuid.UUID]bool{p: true}}
	onB, onA := svcB.Hub().Subscribe(live), a.svc.Hub().Subscribe(live)
	hooksB := svcB.Hub().Subscribe(core.Filter{Local: true, Types: live.Types})
	defer onB.Close()
	defer onA.Close()
	defer hooksB.Close()

	at := t0.Add(-time.Minute)
	var uploads []core.IngestResult
	for i := range 2 {
		b := batch(p,
			core.Sample{Code: core.LOINCHeartRate, Value: float64(70 + i), Unit: "/min", Time: at.Add(time.Duration(i) * time.Second)},
			core.Sample{Code: core.LOINCSpO2, Value: 97, Unit: "%", Time: at.Add(time.Duration(i)*time.Second + 500*time.Millisecond)})
		res, err := a.svc.Ingest(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		uploads = append(uploads, res)
	}
	type payload struct {
		UploadID     uuid.UUID          `json:"upload_id"`
		Observations []core.Observation `json:"observations"`
	}
	for name, sub := range map[string]*core.Subscription{"B": onB, "A": onA} {
		for i, up := range uploads {
			ev := next(t, sub)
			var got payload
			if err := json.Unmarshal(ev.Data, &got); err != nil {
				t.Fatalf("%s: event %d: %v", name, i, err)
			}
			if ev.Type != core.TypeObservations || ev.PatientID != p || got.UploadID != up.AuditEventID || len(got.Observations) != 2 {
				t.Fatalf("%s: event %d = %s %s upload %s with %d observations, want observations of upload %s (2)",
					name, i, ev.Type, ev.PatientID, got.UploadID, len(got.Observations), up.AuditEventID)
			}
			var hr core.Observation
			for _, o := range got.Observations {
				if o.Code == core.LOINCHeartRate {
					hr = o
				}
			}
			if hr.Code != core.LOINCHeartRate || hr.Value != float64(70+i) || hr.Unit != "/min" || hr.DeviceID != "dev-1" || !hr.EffectiveAt.Equal(at.Add(time.Duration(i)*time.Second)) {
				t.Errorf("%s: event %d: first observation = %+v, want heart rate %d /min of dev-1", name, i, hr, 70+i)
			}
		}
	}
	select {
	case ev := <-hooksB.C:
		t.Errorf("B's local feed got %s of another replica, want nothing", ev.Type)
	default:
	}
}
