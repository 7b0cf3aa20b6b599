package rules_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/core/rules"
)

// news2Vitals is one complete set of NEWS2 observations at at.
func news2Vitals(p uuid.UUID, at time.Time, rr, spo2, sbp, hr, temp float64) []rules.Observation {
	return []rules.Observation{obs(p, rules.CodeRespiratoryRate, rr, at), obs(p, rules.CodeSpO2, spo2, at),
		obs(p, rules.CodeSystolicBP, sbp, at), obs(p, rules.CodeHeartRate, hr, at), obs(p, rules.CodeBodyTemperature, temp, at),
		obs(p, rules.CodeConsciousness, 0, at), obs(p, rules.CodeInhaledO2Conc, 21, at)}
}

// Issue #12, late samples and NEWS2: a moment in the past is re-scored when samples of it
// arrive late. A backlog device delivers, after newer normal vitals, one moment at which RR
// 23, systolic 95 and pulse 115 gave NEWS2 6 (medium response): the engine scores that
// moment (recorded, rescored_late) and raises the NEWS2 alarm at high severity, saying "late
// samples". The old engine took a late value only if newer than the current one: nothing.
// The same backlog delivered again raises nothing more.
// Verifies: REQ-CORE-133
func TestLateSamplesRescoreNEWS2AtTheirMoment(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	p := uuid.New()
	e.feed(t, p, news2Vitals(p, t0, 16, 97, 125, 75, 37)...)
	e.feed(t, p, news2Vitals(p, t0.Add(60*time.Second), 16, 97, 125, 75, 37)...)
	at := t0.Add(30 * time.Second)
	backlog := []rules.Observation{obs(p, rules.CodeRespiratoryRate, 23, at), obs(p, rules.CodeSystolicBP, 95, at), obs(p, rules.CodeHeartRate, 115, at)}
	e.hist.add(backlog...)
	e.clk.Set(t0.Add(62 * time.Second))
	res, err := e.eng.Evaluate(ctx, p, backlog)
	if err != nil {
		t.Fatal(err)
	}
	if got := kinds(res.Transitions); !same(got, []string{"news2:opened:high"}) {
		t.Fatalf("a late moment of NEWS2 6: transitions %v, want news2 opened high", got)
	}
	if msg := res.Transitions[0].Alarm.Message; !strings.Contains(msg, "NEWS2 6") || !strings.Contains(msg, "late samples") {
		t.Errorf("alarm message %q, want NEWS2 6 and late samples", msg)
	}
	var past *rules.NEWS2Score
	for _, d := range res.Derived {
		if d.EffectiveAt.Equal(at) && d.NEWS2 != nil {
			past = d.NEWS2
		}
	}
	if past == nil || past.Total != 6 || !past.RescoredLate || past.Partial || past.Values["pulse"] != 115 || past.Values["spo2"] != 97 {
		t.Errorf("NEWS2 recorded for the late moment = %+v, want 6, rescored_late, complete, with pulse 115 and SpO2 97", past)
	}
	if n := e.count(t, `SELECT count(*) FROM rules_news2 WHERE patient_id = $1 AND effective_at = $2 AND total = 6`, p, at); n != 1 {
		t.Errorf("rules_news2 rows for the late moment = %d, want 1", n)
	}
	if res, err := e.eng.Evaluate(ctx, p, backlog); err != nil || len(res.Transitions) != 0 {
		t.Errorf("the same backlog again = %v, %v; want nothing", kinds(res.Transitions), err)
	}
}

// Issue #12, samples beyond the look-back: a sample older than what was evaluated of its code
// by more than Config.LateHorizon (20 min) is not re-run through a window that may no longer
// be readable; the technical condition late-data is raised instead, naming the samples in
// human units, when they were taken and how late, the conditions they meet by themselves
// (its priority the highest of them, at least medium), with the code late_beyond_lookback,
// so that a clinician reviews the chart. It does not clear by itself.
// Verifies: REQ-CORE-134
func TestSamplesBeyondTheLookbackAreFlagged(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	p := uuid.New()
	for m := 0; m <= 30; m += 5 {
		e.feed(t, p, obs(p, rules.CodeHeartRate, 75, t0.Add(time.Duration(m)*time.Minute)))
	}
	var old []rules.Observation
	for s := 0; s <= 60; s += 20 {
		old = append(old, obs(p, rules.CodeHeartRate, 35, t0.Add(2*time.Minute+time.Duration(s)*time.Second)))
	}
	e.hist.add(old...)
	e.clk.Set(t0.Add(31 * time.Minute))
	res, err := e.eng.Evaluate(ctx, p, old)
	if err != nil {
		t.Fatal(err)
	}
	if got := kinds(res.Transitions); !same(got, []string{"late-data:opened:high"}) {
		t.Fatalf("HR 35 for 60 s, delivered 27 min late: transitions %v, want late-data opened high (what hr-low gives them; no hr-low alarm)", got)
	}
	a := res.Transitions[0].Alarm
	for _, want := range []string{"Heart rate 35/min (4 samples, 10:02:00–10:03:00 UTC, up to 28m0s behind)",
		"by themselves they meet Heart rate low (high priority)", "review the chart"} {
		if !strings.Contains(a.Message, want) {
			t.Errorf("late-data message %q, want it to contain %q", a.Message, want)
		}
	}
	if !strings.Contains(string(a.Detail), `"code":"late_beyond_lookback"`) {
		t.Errorf("late-data detail %s, want code late_beyond_lookback", a.Detail)
	}
	r := e.eng.Explain(a)
	if r.Rule != "Late samples not evaluated" || r.Priority != "high priority" {
		t.Errorf("Explain(late-data) = %+v, want its name and high priority", r)
	}
	// Newer samples do not clear it.
	res = e.feed(t, p, obs(p, rules.CodeHeartRate, 76, t0.Add(31*time.Minute)))
	if len(res.Transitions) != 0 {
		t.Errorf("a normal sample after late-data: transitions %v, want none", kinds(res.Transitions))
	}
}

// Issue #12 review of the partial-NEWS2 alarm load: a pulse oximeter alone reading SpO2 87 %
// gave two alarms for one value — NEWS2 "at least 3, low–medium" (medium) at the first sample
// and spo2-low (high) 30 s later. A partial score whose only news is a parameter scoring 3
// that its own threshold rule reports (raised, or crossing and awaiting its minimum duration)
// is recorded but not alarmed; a parameter scoring 3 that no threshold rule covers (a level
// of consciousness of "voice") still opens the NEWS2 alarm at once.
// Verifies: REQ-CORE-135
func TestPartialNEWS2DoesNotDuplicateAThresholdAlarm(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := uuid.New()
	var all []string
	var scored []int
	for s := 0; s <= 60; s += 10 {
		res := e.feed(t, p, obs(p, rules.CodeSpO2, 87, t0.Add(time.Duration(s)*time.Second)))
		all = append(all, kinds(res.Transitions)...)
		for _, d := range res.Derived {
			scored = append(scored, d.NEWS2.Total)
		}
	}
	if !same(all, []string{"spo2-low:opened:high"}) {
		t.Errorf("SpO2 87 %% alone for 60 s: transitions %v, want spo2-low opened high only", all)
	}
	if len(scored) == 0 || scored[0] != 3 {
		t.Errorf("NEWS2 recorded %v, want the partial score 3", scored)
	}
	q := uuid.New()
	res := e.feed(t, q, obs(q, rules.CodeConsciousness, rules.ACVPUVoice, t0))
	if got := kinds(res.Transitions); !same(got, []string{"news2:opened:medium"}) {
		t.Fatalf("consciousness 'voice' alone: transitions %v, want news2 opened medium at once", got)
	}
	// Its message names what is missing in words (issue #12, hazard 7), not by code.
	if msg, want := res.Transitions[0].Alarm.Message, "(partial: no current respiration rate, SpO2, systolic blood pressure, pulse, temperature)"; !strings.Contains(msg, want) {
		t.Errorf("news2 message %q, want it to contain %q", msg, want)
	}
}
