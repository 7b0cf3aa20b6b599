// Package rulestest is the conformance suite of the interfaces package rules consumes, for
// their implementations to run against the real backend.
package rulestest

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/core/rules"
)

// TestHistory checks h against the rules.History contract. store MUST durably store the given
// observations (all of one patient, canonical units) so that h returns them; the patients are
// made by newPatient (return an id the implementation accepts, e.g. a created patient).
func TestHistory(t *testing.T, h rules.History, newPatient func(t *testing.T) uuid.UUID, store func(t *testing.T, obs []rules.Observation)) {
	t.Helper()
	ctx := context.Background()
	t0 := time.Now().UTC().Truncate(time.Second).Add(-time.Hour)
	a, b := newPatient(t), newPatient(t)
	var want []rules.Observation
	for i := 0; i < 10; i++ {
		at := t0.Add(time.Duration(i) * time.Second)
		want = append(want,
			rules.Observation{PatientID: a, Code: rules.CodeHeartRate, Value: 70 + float64(i), Unit: "/min", EffectiveAt: at},
			rules.Observation{PatientID: a, Code: rules.CodeSpO2, Value: 90 + float64(i%5), Unit: "%", EffectiveAt: at})
	}
	// Stored out of order, in two batches, with another patient's data in between.
	store(t, append([]rules.Observation(nil), want[10:]...))
	store(t, []rules.Observation{{PatientID: b, Code: rules.CodeHeartRate, Value: 99, Unit: "/min", EffectiveAt: t0.Add(3 * time.Second)}})
	store(t, append([]rules.Observation(nil), want[:10]...))

	check := func(name string, got []rules.Observation, want []rules.Observation) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: ObservationsSince() returned %d observations, want %d", name, len(got), len(want))
		}
		for i := range got {
			g, w := got[i], want[i]
			if g.PatientID != w.PatientID || g.Code != w.Code || g.Value != w.Value || !g.EffectiveAt.Equal(w.EffectiveAt) {
				t.Errorf("%s: ObservationsSince()[%d] = %s %s %g at %v, want %s %s %g at %v", name, i,
					g.PatientID, g.Code, g.Value, g.EffectiveAt, w.PatientID, w.Code, w.Value, w.EffectiveAt)
			}
			if i > 0 && got[i].EffectiveAt.Before(got[i-1].EffectiveAt) {
				t.Errorf("%s: ObservationsSince() not in ascending time at %d", name, i)
			}
		}
	}
	byTime := func(obs []rules.Observation, after time.Time) []rules.Observation {
		var out []rules.Observation
		for _, o := range obs {
			if o.EffectiveAt.After(after) {
				out = append(out, o)
			}
		}
		return out
	}
	got, err := h.ObservationsSince(ctx, a, t0.Add(-time.Second), 1000)
	if err != nil {
		t.Fatalf("ObservationsSince(all) error %v", err)
	}
	// Equal times may come in any code order: compare per time.
	sortLike(got, want)
	check("all", got, want)

	got, err = h.ObservationsSince(ctx, a, t0.Add(4*time.Second), 1000)
	if err != nil {
		t.Fatalf("ObservationsSince(after 4s) error %v", err)
	}
	w := byTime(want, t0.Add(4*time.Second))
	sortLike(got, w)
	check("strictly after", got, w)

	got, err = h.ObservationsSince(ctx, a, t0.Add(-time.Second), 4)
	if err != nil {
		t.Fatalf("ObservationsSince(limit 4) error %v", err)
	}
	w = byTime(want, t0.Add(7*time.Second))
	sortLike(got, w)
	check("limit keeps the newest", got, w)

	got, err = h.ObservationsSince(ctx, uuid.New(), t0.Add(-time.Hour), 1000)
	if err != nil || len(got) != 0 {
		t.Errorf("ObservationsSince(unknown patient) = %d, %v; want empty, no error", len(got), err)
	}
}

// sortLike orders got's observations of equal time in the code order of want, so that the
// comparison does not depend on how an implementation breaks ties.
func sortLike(got, want []rules.Observation) {
	rank := map[string]int{}
	for i, w := range want {
		if _, ok := rank[w.Code]; !ok {
			rank[w.Code] = i
		}
	}
	for i := 1; i < len(got); i++ {
		for j := i; j > 0 && got[j].EffectiveAt.Equal(got[j-1].EffectiveAt) && rank[got[j].Code] < rank[got[j-1].Code]; j-- {
			got[j], got[j-1] = got[j-1], got[j]
		}
	}
}
