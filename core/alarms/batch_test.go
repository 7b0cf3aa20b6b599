package alarms_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/core/alarms"
)

// OpenAlarmsOf answers, for many patients in one query, what OpenAlarms answers for each;
// History lists a patient's alarms, resolved ones included, newest first, from a time on.
// Verifies: REQ-POR-029
func TestOpenAlarmsOfAndHistory(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	var ps []uuid.UUID
	for i := range 5 {
		p := uuid.New()
		ps = append(ps, p)
		if i == 4 {
			continue // no alarm
		}
		f.signal(t, raise(p, alarms.SeverityHigh))
		f.signal(t, alarms.Signal{PatientID: p, RuleID: "spo2-low", RuleVersion: 1, Raise: true, Severity: alarms.SeverityMedium, Message: "SpO2 low"})
		f.clk.Add(time.Minute)
	}
	// One of the first patient's alarms is resolved: not open, but in the history.
	open0, err := f.svc.OpenAlarms(ctx, ps[0])
	if err != nil || len(open0) != 2 {
		t.Fatalf("OpenAlarms = %v, %v", open0, err)
	}
	if _, err := f.svc.Resolve(ctx, open0[0].ID, nurse, "re-sited the probe"); err != nil {
		t.Fatal(err)
	}
	got, err := f.svc.OpenAlarmsOf(ctx, ps)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		want, err := f.svc.OpenAlarms(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if len(got[p]) != len(want) {
			t.Fatalf("patient %s: OpenAlarmsOf %d alarms, OpenAlarms %d", p, len(got[p]), len(want))
		}
		for i := range want {
			if got[p][i].ID != want[i].ID || got[p][i].Revision != want[i].Revision || got[p][i].State != want[i].State {
				t.Errorf("patient %s alarm %d: %+v, want %+v", p, i, got[p][i], want[i])
			}
		}
	}
	if len(got[ps[0]]) != 1 || len(got[ps[4]]) != 0 {
		t.Errorf("OpenAlarmsOf: %d open for the first patient (want 1), %d for the last (want 0)", len(got[ps[0]]), len(got[ps[4]]))
	}
	hist, err := f.svc.History(ctx, ps[0], time.Time{}, 0)
	if err != nil || len(hist) != 2 {
		t.Fatalf("History = %v, %v; want 2 alarms", hist, err)
	}
	resolved := 0
	for _, a := range hist {
		if a.State == alarms.StateResolved {
			resolved++
		}
	}
	if resolved != 1 {
		t.Errorf("History holds %d resolved alarms, want 1", resolved)
	}
	if h, _ := f.svc.History(ctx, ps[0], f.clk.Now().Add(time.Hour), 0); len(h) != 0 {
		t.Errorf("History from the future = %v", h)
	}
	if _, err := f.svc.OpenAlarmsOf(ctx, make([]uuid.UUID, alarms.MaxBatchPatients+1)); !errors.Is(err, alarms.ErrInvalidRequest) {
		t.Errorf("OpenAlarmsOf(too many) = %v, want ErrInvalidRequest", err)
	}
}
