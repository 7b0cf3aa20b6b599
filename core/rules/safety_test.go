package rules_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/core/rules"
)

// What the engine keeps for issue #12 survives a restart: the per-code order (a code's late
// sample after a restart is still re-evaluated, a sample already evaluated is not evaluated
// twice) and a run of implausible values awaiting confirmation.
// Verifies: REQ-CORE-120, REQ-CORE-123
func TestSafetyStateSurvivesRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	p := uuid.New()
	hr := func(at time.Duration, v float64) rules.Observation { return obs(p, rules.CodeHeartRate, v, t0.Add(at)) }
	art := func(o rules.Observation) rules.Observation { o.Artifact = true; return o }
	e.feed(t, p, hr(0, 75))
	e.feed(t, p, art(hr(5*time.Second, 15))) // implausible, held
	if err := e.eng.Close(ctx); err != nil {
		t.Fatal(err)
	}
	e.restart(t)
	e.feed(t, p, art(hr(10*time.Second, 15)))
	e.feed(t, p, art(hr(20*time.Second, 15))) // 15 s of HR 15: confirmed from 5 s on
	res := e.feed(t, p, art(hr(35*time.Second, 15)))
	if got := kinds(noNEWS2(res.Transitions)); !same(got, []string{"hr-low:opened:critical"}) {
		t.Fatalf("HR 15 from 5 s to 35 s across a restart: transitions %v, want hr-low opened critical", got)
	}
	// SpO2 from two devices, one a backlog behind the other, across a restart.
	sp := func(at time.Duration, v float64) rules.Observation { return obs(p, rules.CodeSpO2, v, t0.Add(at)) }
	e.feed(t, p, sp(100*time.Second, 97))
	if err := e.eng.Close(ctx); err != nil {
		t.Fatal(err)
	}
	e.restart(t)
	var late []rules.Observation
	for s := 40; s <= 90; s += 5 {
		late = append(late, sp(time.Duration(s)*time.Second, 83))
	}
	e.hist.add(late...)
	e.clk.Set(t0.Add(101 * time.Second))
	res, err := e.eng.Evaluate(ctx, p, late)
	if err != nil {
		t.Fatal(err)
	}
	if got := kinds(noNEWS2(res.Transitions)); !same(got, []string{"spo2-low:opened:critical", "spo2-low:resolved:critical"}) {
		t.Fatalf("a late 50 s of SpO2 83 %% before a newer 97 %%: transitions %v, want spo2-low opened (late samples) then resolved", got)
	}
	// Evaluated again (core retrying): nothing new.
	if res, err := e.eng.Evaluate(ctx, p, late); err != nil || len(noNEWS2(res.Transitions)) != 0 {
		t.Fatalf("re-evaluating the same late samples = %v, %v; want nothing", kinds(res.Transitions), err)
	}
}

// A NEWS2 alarm never de-escalates or resolves because parameters went missing: a partial
// score is a lower bound, which proves no improvement.
// Verifies: REQ-CORE-124
func TestNEWS2AlarmNotResolvedByMissingData(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := uuid.New()
	// 3 + 3 + 0 + 3 + 3 + 0 + 0 = 12: critical.
	res := e.feed(t, p, vitals(p, t0, 30, 85, 21, 85, 140, 0, 37)...)
	if got := kinds(res.Transitions); len(got) == 0 || got[len(got)-1] != "news2:opened:critical" && got[len(got)-1] != "news2:severity_escalated:critical" {
		t.Fatalf("NEWS2 12: transitions %v, want news2 critical", got)
	}
	// Only the heart rate keeps coming; the other parameters go stale after max_age (1 h).
	for m := 10; m <= 90; m += 10 {
		res = e.feed(t, p, obs(p, rules.CodeHeartRate, 140, t0.Add(time.Duration(m)*time.Minute)))
		for _, tr := range res.Transitions {
			if tr.Alarm.RuleID == "news2" && tr.Kind != "retriggered" && tr.Kind != "opened" {
				t.Fatalf("at %d min with only HR current: news2 %s, want the alarm kept (a partial score proves no improvement)", m, tr.Kind)
			}
		}
	}
	open, err := e.alarms.OpenAlarms(context.Background(), p)
	found := false
	for _, a := range open {
		found = found || a.RuleID == "news2" && a.Severity == 4
	}
	if err != nil || !found {
		t.Fatalf("OpenAlarms() = %+v, %v; want the news2 alarm still critical", open, err)
	}
}
