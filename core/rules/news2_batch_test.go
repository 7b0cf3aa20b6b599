package rules_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/core/rules"
)

// LatestNEWS2Of answers, for many patients in one call, the newest NEWS2 result that
// NEWS2History(…, 1) answers for each, with its components; a patient without a result in the
// window has no entry.
// Verifies: REQ-POR-029
func TestLatestNEWS2Of(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var ps []uuid.UUID
	for i := range 4 {
		p := uuid.New()
		ps = append(ps, p)
		if i == 3 {
			continue // never scored
		}
		o := vitals(p, t0, 16, 97, 21, 120, 70, 0, 37)
		o = append(o, obs(p, rules.CodeConsciousness, rules.ACVPUVoice, t0.Add(time.Duration(i+1)*time.Minute)))
		e.feed(t, p, o...)
	}
	got, err := e.eng.LatestNEWS2Of(context.Background(), ps, t0.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range ps {
		want, err := e.eng.NEWS2History(context.Background(), p, t0.Add(-time.Hour), time.Time{}, 1)
		if err != nil {
			t.Fatal(err)
		}
		g, ok := got[p]
		switch {
		case len(want) == 0 && ok:
			t.Errorf("patient %d: LatestNEWS2Of = %+v, want none", i, g)
		case len(want) == 1 && (!ok || g.ID != want[0].ID || g.Score.Total != want[0].Score.Total || g.Score.Consciousness != want[0].Score.Consciousness):
			t.Errorf("patient %d: LatestNEWS2Of = %+v, want %+v", i, g, want[0])
		}
	}
	if len(got) != 3 {
		t.Errorf("LatestNEWS2Of gave %d patients, want 3", len(got))
	}
	if later, err := e.eng.LatestNEWS2Of(context.Background(), ps, t0.Add(time.Hour)); err != nil || len(later) != 0 {
		t.Errorf("LatestNEWS2Of from a later time = %v, %v; want none", later, err)
	}
}
