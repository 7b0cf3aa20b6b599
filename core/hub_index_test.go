package core_test

import (
	"encoding/json"
	"testing"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/core"
)

// drain returns what is queued on s now.
func drain(s *core.Subscription) []core.Event {
	var out []core.Event
	for {
		select {
		case ev, ok := <-s.C:
			if !ok {
				return out
			}
			out = append(out, ev)
		default:
			return out
		}
	}
}

// Each event reaches exactly the subscriptions whose filter matches it — those following its
// patient (found through the hub's index of patients), those following every patient, with
// the types they asked for — and no longer reaches a closed one; every stream that receives
// an event gets the same JSON bytes, encoded once, equal to the event's own encoding.
// Verifies: REQ-POR-052
func TestHubIndexedFanOutEncodesOnce(t *testing.T) {
	t.Parallel()
	h := core.NewHub(core.HubConfig{Buffer: 64, Replay: 64})
	p1, p2, p3 := uuid.New(), uuid.New(), uuid.New()
	obs := map[string]bool{core.TypeObservations: true, "alarm.opened": true}
	ward1 := h.Subscribe(core.Filter{Patients: map[uuid.UUID]bool{p1: true, p2: true}, Types: obs})
	ward2 := h.Subscribe(core.Filter{Patients: map[uuid.UUID]bool{p2: true, p3: false}, Types: obs})
	alarmsOnly := h.Subscribe(core.Filter{Patients: map[uuid.UUID]bool{p1: true}})
	everyone := h.Subscribe(core.Filter{}) // every patient, not observations (not asked for)
	everyObs := h.Subscribe(core.Filter{Types: obs})

	if !h.Wants(core.TypeObservations, p1) || h.Wants(core.TypeObservations, uuid.New()) != true {
		t.Errorf("Wants(observations) = false, want true (everyObs follows every patient)")
	}
	for _, p := range []uuid.UUID{p1, p2, p3} {
		h.Publish(core.Event{Type: core.TypeObservations, PatientID: p, Data: json.RawMessage(`{"upload_id":"x"}`)})
		h.Publish(core.Event{Type: "alarm.opened", PatientID: p, Data: json.RawMessage(`{"k":1}`)})
	}
	type key struct {
		typ string
		p   uuid.UUID
	}
	got := func(s *core.Subscription) []key {
		var out []key
		for _, ev := range drain(s) {
			out = append(out, key{ev.Type, ev.PatientID})
		}
		return out
	}
	o, a := core.TypeObservations, "alarm.opened"
	for _, c := range []struct {
		name string
		sub  *core.Subscription
		want []key
	}{
		{"ward1", ward1, []key{{o, p1}, {a, p1}, {o, p2}, {a, p2}}},
		{"ward2", ward2, []key{{o, p2}, {a, p2}}},
		{"alarmsOnly", alarmsOnly, []key{{a, p1}}},
		{"everyone", everyone, []key{{a, p1}, {a, p2}, {a, p3}}},
		{"everyObs", everyObs, []key{{o, p1}, {a, p1}, {o, p2}, {a, p2}, {o, p3}, {a, p3}}},
	} {
		if g := got(c.sub); len(g) != len(c.want) || len(g) > 0 && func() bool {
			for i := range g {
				if g[i] != c.want[i] {
					return true
				}
			}
			return false
		}() {
			t.Errorf("%s received %v, want %v", c.name, g, c.want)
		}
	}

	// One event, received by three streams: the same bytes, encoded once.
	h.Publish(core.Event{Type: core.TypeObservations, PatientID: p2, Data: json.RawMessage(`{"upload_id":"y"}`)})
	e1, e2, e3 := drain(ward1), drain(ward2), drain(everyObs)
	if len(e1) != 1 || len(e2) != 1 || len(e3) != 1 {
		t.Fatalf("received %d, %d, %d events, want one each", len(e1), len(e2), len(e3))
	}
	b1, err1 := e1[0].JSON()
	b2, err2 := e2[0].JSON()
	b3, err3 := e3[0].JSON()
	plain := e1[0]
	want, _ := json.Marshal(plain)
	if err1 != nil || err2 != nil || err3 != nil || string(b1) != string(want) || &b1[0] != &b2[0] || &b2[0] != &b3[0] {
		t.Errorf("JSON() = %s, %s, %s (shared %v), want %s once for all", b1, b2, b3, &b1[0] == &b2[0], want)
	}

	// Closed subscriptions are out of the index: nobody wants p1's observations any more.
	ward1.Close()
	everyObs.Close()
	if h.Wants(core.TypeObservations, p1) {
		t.Error("Wants(observations, p1) after its subscribers closed = true, want false")
	}
	if !h.Wants(core.TypeObservations, p2) {
		t.Error("Wants(observations, p2) = false, want true (ward2 follows p2)")
	}
	h.Publish(core.Event{Type: "alarm.opened", PatientID: p1})
	if g := got(alarmsOnly); len(g) != 1 {
		t.Errorf("alarmsOnly received %v after the others closed, want p1's alarm", g)
	}
	if n := h.Subscribers(); n != 3 {
		t.Errorf("Subscribers() = %d, want 3", n)
	}
}
