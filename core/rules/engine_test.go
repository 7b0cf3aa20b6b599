package rules_test

import (
	"context"
	"errors"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/core/rules/rulestest"
	"github.com/vigilhealth/vigil/internal/testclock"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// The test History itself meets the contract the engine relies on.
// Verifies: REQ-CORE-107
func TestHistoryConformance(t *testing.T) {
	t.Parallel()
	h := &history{}
	rulestest.TestHistory(t, h, func(*testing.T) uuid.UUID { return uuid.New() },
		func(_ *testing.T, obs []rules.Observation) { h.add(obs...) })
}

// history stands in for core's observation storage: what core has committed, per patient.
type history struct {
	mu  sync.Mutex
	obs []rules.Observation

	// delay, when set, makes each read take that long; cur and peak count the reads at once.
	delay     atomic.Int64
	cur, peak atomic.Int32
}

func (h *history) add(o ...rules.Observation) {
	h.mu.Lock()
	h.obs = append(h.obs, o...)
	h.mu.Unlock()
}

func (h *history) ObservationsSince(_ context.Context, p uuid.UUID, since time.Time, limit int) ([]rules.Observation, error) {
	if d := h.delay.Load(); d > 0 {
		n := h.cur.Add(1)
		defer h.cur.Add(-1)
		for pk := h.peak.Load(); n > pk && !h.peak.CompareAndSwap(pk, n); pk = h.peak.Load() {
		}
		time.Sleep(time.Duration(d))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []rules.Observation
	for _, o := range h.obs {
		if o.PatientID == p && o.EffectiveAt.After(since) {
			out = append(out, o)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].EffectiveAt.Before(out[j].EffectiveAt) })
	if len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, nil
}

var t0 = time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC)

type env struct {
	pool   *pgxpool.Pool
	rec    *audit.Outbox
	clk    *testclock.Clock
	hist   *history
	alarms *alarms.Service
	eng    *rules.Engine
}

func newEnv(t *testing.T) *env {
	t.Helper()
	pool := testdb.New(t)
	e := &env{pool: pool, rec: audittest.Recorder(t, pool, nil), clk: testclock.New(t0), hist: &history{}}
	e.restart(t)
	return e
}

// restart builds a fresh Service and Engine on the same database, as a process restart does.
func (e *env) restart(t *testing.T) {
	t.Helper()
	svc, err := alarms.New(alarms.Config{Pool: e.pool, Recorder: e.rec, Now: e.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := rules.New(context.Background(), rules.Config{Pool: e.pool, Recorder: e.rec, Alarms: svc, History: e.hist, Now: e.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	e.alarms, e.eng = svc, eng
}

func obs(p uuid.UUID, code string, v float64, at time.Time) rules.Observation {
	unit := map[string]string{rules.CodeHeartRate: "/min", rules.CodeRespiratoryRate: "/min", rules.CodeSpO2: "%",
		rules.CodeSystolicBP: "mm[Hg]", rules.CodeBodyTemperature: "Cel", rules.CodeConsciousness: "{score}",
		rules.CodeInhaledO2Conc: "%", rules.CodeInhaledO2Flow: "L/min"}[code]
	return rules.Observation{PatientID: p, DeviceID: "dev-1", Code: code, Value: v, Unit: unit, EffectiveAt: at}
}

// feed stores (in history) and evaluates observations, as core does after its commit.
func (e *env) feed(t *testing.T, p uuid.UUID, o ...rules.Observation) rules.Result {
	t.Helper()
	e.hist.add(o...)
	e.clk.Set(o[len(o)-1].EffectiveAt)
	res, err := e.eng.Evaluate(context.Background(), p, o)
	if err != nil {
		t.Fatalf("Evaluate(%v) error %v", o, err)
	}
	return res
}

func kinds(ts []alarms.Transition) []string {
	out := []string{}
	for _, t := range ts {
		out = append(out, t.Alarm.RuleID+":"+string(t.Kind)+":"+t.Alarm.Severity.String())
	}
	return out
}

// noNEWS2 leaves out the transitions of the NEWS2 rule and its incomplete condition, for
// tests of other rules (a single vital sign gives a partial NEWS2).
func noNEWS2(ts []alarms.Transition) []alarms.Transition {
	var out []alarms.Transition
	for _, t := range ts {
		if t.Alarm.RuleID != "news2" && t.Alarm.RuleID != "news2-incomplete" {
			out = append(out, t)
		}
	}
	return out
}

func same(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func (e *env) count(t *testing.T, q string, args ...any) int {
	t.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), q, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Threshold with minimum duration (30 s) and hysteresis (5 /min), with severity escalating
// and de-escalating inside one alarm, on the default hr-high rule (>120 medium, >140 high).
// Verifies: REQ-CORE-102, REQ-CORE-110, REQ-CORE-111
func TestThreshold(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := uuid.New()
	steps := []struct {
		at   time.Duration
		v    float64
		want []string
	}{
		{0, 130, nil},                // pending
		{10 * time.Second, 110, nil}, // a spike shorter than the minimum duration: nothing
		{20 * time.Second, 125, nil}, // pending again
		{40 * time.Second, 126, nil}, // 20 s
		{50 * time.Second, 127, []string{"hr-high:opened:medium"}}, // 30 s
		{60 * time.Second, 145, []string{"hr-high:severity_escalated:high"}},
		{70 * time.Second, 138, nil}, // below 140 but within hysteresis
		{80 * time.Second, 134, []string{"hr-high:severity_deescalated:medium"}},
		{90 * time.Second, 117, nil}, // below 120 but within hysteresis
		{100 * time.Second, 115, []string{"hr-high:resolved:medium"}},
	}
	for i, s := range steps {
		res := e.feed(t, p, obs(p, rules.CodeHeartRate, s.v, t0.Add(s.at)))
		if got := kinds(noNEWS2(res.Transitions)); !same(got, s.want) {
			t.Fatalf("step %d: Evaluate(HR %g) transitions %v, want %v", i, s.v, got, s.want)
		}
	}
	if n := e.count(t, `SELECT count(*) FROM alarms WHERE patient_id=$1 AND rule_id='hr-high'`, p); n != 1 {
		t.Errorf("hr-high alarms of patient = %d, want 1", n)
	}
}

// Rate of change: systolic pressure falling by more than 30 mm[Hg] within 15 minutes.
// Verifies: REQ-CORE-103
func TestRateOfChange(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := uuid.New()
	// A fall of more than 30 within the window raises; once the fall within the window has
	// stayed under 30 for the hold time it clears.
	seq := []struct {
		at   time.Duration
		v    float64
		want []string
	}{
		{0, 140, nil},
		{5 * time.Minute, 135, nil},
		{10 * time.Minute, 120, nil}, // fall 20
		{14 * time.Minute, 104, []string{"sbp-fall:opened:high"}},   // fall 36 from 140 within 15 min
		{16 * time.Minute, 106, nil},                                // 140 left the window: fall 29 from 135, but hold 5 min (v2)
		{18 * time.Minute, 103, nil},                                // fall 32 again: the same alarm, the hold restarts
		{19 * time.Minute, 110, nil},                                // fall 25
		{23 * time.Minute, 112, nil},                                // 4 min within the limit
		{24 * time.Minute, 113, []string{"sbp-fall:resolved:high"}}, // 5 min within the limit
	}
	for i, s := range seq {
		res := e.feed(t, p, obs(p, rules.CodeSystolicBP, s.v, t0.Add(s.at)))
		if got := kinds(noNEWS2(res.Transitions)); !same(got, s.want) {
			t.Fatalf("step %d: Evaluate(SBP %g at %s) transitions %v, want %v", i, s.v, s.at, got, s.want)
		}
	}
}

func vitals(p uuid.UUID, at time.Time, rr, spo2, fio2, sbp, hr, acvpu, temp float64) []rules.Observation {
	return []rules.Observation{
		obs(p, rules.CodeRespiratoryRate, rr, at), obs(p, rules.CodeSpO2, spo2, at),
		obs(p, rules.CodeInhaledO2Conc, fio2, at), obs(p, rules.CodeSystolicBP, sbp, at),
		obs(p, rules.CodeHeartRate, hr, at), obs(p, rules.CodeConsciousness, acvpu, at),
		obs(p, rules.CodeBodyTemperature, temp, at),
	}
}

// NEWS2 is computed from the latest of all seven parameters, recorded as a derived observation
// with its components (and audited), and raises an alarm by response band; the SpO2 scale is
// a per-patient, audited setting.
// Verifies: REQ-CORE-100, REQ-CORE-104, REQ-CORE-101
func TestNEWS2Rule(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	p := uuid.New()
	// Six parameters only: a partial score naming the missing one (scored 0: a lower bound).
	res := e.feed(t, p, vitals(p, t0, 16, 97, 21, 120, 70, 0, 37)[:5]...)
	if len(res.Derived) != 1 || !res.Derived[0].NEWS2.Partial || len(res.Derived[0].NEWS2.Missing) != 2 ||
		res.Derived[0].NEWS2.Missing[0] != "temperature" || res.Derived[0].NEWS2.Missing[1] != "consciousness" {
		t.Fatalf("Evaluate(5 parameters and oxygen) derived %+v, want a partial score missing temperature and consciousness", res.Derived)
	}
	res = e.feed(t, p, obs(p, rules.CodeConsciousness, rules.ACVPUAlert, t0.Add(time.Second)), obs(p, rules.CodeBodyTemperature, 37, t0.Add(time.Second)))
	if len(res.Derived) != 1 || res.Derived[0].Value != 0 || res.Derived[0].Code != rules.CodeNEWS2 {
		t.Fatalf("Evaluate(all 7) derived %+v, want NEWS2 0", res.Derived)
	}
	// Single parameter 3 (new confusion): low-medium → medium alarm.
	res = e.feed(t, p, obs(p, rules.CodeConsciousness, rules.ACVPUConfusion, t0.Add(time.Minute)))
	if got := kinds(res.Transitions); !same(got, []string{"news2:opened:medium"}) {
		t.Fatalf("confusion: transitions %v, want news2 opened medium", got)
	}
	// Deterioration on oxygen: 24/min (2), SpO2 93 (2), oxygen (2), 105 (1), 115 (2), C (3), 38.4 (1) = 13.
	res = e.feed(t, p, vitals(p, t0.Add(2*time.Minute), 24, 93, 40, 105, 115, rules.ACVPUConfusion, 38.4)...)
	if len(res.Derived) != 1 || res.Derived[0].NEWS2.Total != 13 || res.Derived[0].NEWS2.Band != rules.BandHigh {
		t.Fatalf("deterioration: derived %+v, want 13 high", res.Derived)
	}
	if got := kinds(res.Transitions); !same(got, []string{"temp-high:opened:low", "news2:severity_escalated:critical"}) {
		t.Fatalf("deterioration: transitions %v, want news2 escalated to critical", got)
	}
	var comps []byte
	var total int
	if err := e.pool.QueryRow(ctx, `SELECT total, components FROM rules_news2 WHERE patient_id=$1 ORDER BY effective_at DESC LIMIT 1`, p).Scan(&total, &comps); err != nil {
		t.Fatal(err)
	}
	if total != 13 || len(comps) == 0 {
		t.Errorf("rules_news2 latest = %d %s, want 13 with components", total, comps)
	}
	if n := e.count(t, `SELECT count(*) FROM audit_events WHERE action='observation.derived' AND payload->>'patient_id'=$1`, p.String()); n != 4 {
		t.Errorf("audited derived NEWS2 = %d, want 4 (partial, complete, confusion, deterioration)", n)
	}
	// Scale 2 for this patient: SpO2 93 on oxygen now scores 1 instead of 2.
	doc := audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "dr-lee", AuthMethod: "password+totp"}}
	if err := e.eng.SetSpO2Scale(ctx, doc, p, 2, "confirmed hypercapnic respiratory failure"); err != nil {
		t.Fatal(err)
	}
	if err := e.eng.SetSpO2Scale(ctx, doc, p, 3, "x"); !errors.Is(err, rules.ErrInvalidRule) {
		t.Errorf("SetSpO2Scale(3) error %v, want ErrInvalidRule", err)
	}
	res = e.feed(t, p, obs(p, rules.CodeSpO2, 93, t0.Add(3*time.Minute)))
	if len(res.Derived) != 1 || res.Derived[0].NEWS2.SpO2 != 1 || res.Derived[0].NEWS2.SpO2Scale != 2 || res.Derived[0].NEWS2.Total != 12 {
		t.Fatalf("scale 2: derived %+v, want SpO2 score 1 on scale 2, total 12", res.Derived)
	}
	if n := e.count(t, `SELECT count(*) FROM audit_events WHERE action='rules.spo2_scale_set' AND object_id=$1`, p.String()); n != 2 {
		t.Errorf("audited SpO2 scale settings = %d, want 2 (one accepted, one rejected)", n)
	}
	// Recovery: all normal again (air, alert); the NEWS2 alarm resolves once that has held for
	// 5 minutes (news2 v3), the temperature alarm at once.
	res = e.feed(t, p, vitals(p, t0.Add(10*time.Minute), 16, 97, 21, 120, 70, 0, 37)...)
	if got := kinds(res.Transitions); !same(got, []string{"temp-high:resolved:low"}) {
		t.Fatalf("recovery: transitions %v, want temp-high resolved, NEWS2 held", got)
	}
	res = e.feed(t, p, obs(p, rules.CodeHeartRate, 71, t0.Add(15*time.Minute)))
	if got := kinds(res.Transitions); !same(got, []string{"news2:resolved:critical"}) {
		t.Fatalf("recovery held 5 min: transitions %v, want news2 resolved", got)
	}
	// A monitor that does not report oxygen delivery: scored as air (news2 v2), and flagged.
	q := uuid.New()
	all := vitals(q, t0, 22, 95, 0, 120, 95, 0, 37)
	res = e.feed(t, q, append(all[:2:2], all[3:]...)...)
	if len(res.Derived) != 1 || !res.Derived[0].NEWS2.AssumedAir || res.Derived[0].NEWS2.Total != 4 || res.Derived[0].RuleVersion != 4 || res.Derived[0].NEWS2.Partial {
		t.Fatalf("no oxygen observation: derived %+v, want NEWS2 4 (2+1+1) with assumed air, complete, rule v4", res.Derived)
	}
	// Stale parameters (older than max_age 1h) are not scored: a partial score naming them,
	// and the incomplete condition.
	res = e.feed(t, p, obs(p, rules.CodeHeartRate, 72, t0.Add(2*time.Hour)))
	if len(res.Derived) != 1 || !res.Derived[0].NEWS2.Partial || len(res.Derived[0].NEWS2.Missing) != 5 || !res.Derived[0].NEWS2.AssumedAir {
		t.Errorf("stale: derived %+v, want a partial score with 5 missing, air assumed (oxygen stale)", res.Derived)
	}
	if got := kinds(res.Transitions); !same(got, []string{"news2-incomplete:opened:low"}) {
		t.Errorf("stale: transitions %v, want news2-incomplete opened", got)
	}
}

// Anomaly: a value far from the patient's own baseline raises, normal values clear it.
// Verifies: REQ-CORE-105
func TestAnomaly(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := uuid.New()
	at := t0
	for i := 0; i < 40; i++ {
		v := 75.0 + float64(i%3) - 1 // 74, 75, 76
		if res := e.feed(t, p, obs(p, rules.CodeHeartRate, v, at)); len(noNEWS2(res.Transitions)) != 0 {
			t.Fatalf("baseline value %d: transitions %v, want none", i, kinds(noNEWS2(res.Transitions)))
		}
		at = at.Add(time.Minute)
	}
	res := e.feed(t, p, obs(p, rules.CodeHeartRate, 100, at))
	if got := kinds(noNEWS2(res.Transitions)); !same(got, []string{"hr-anomaly:opened:low"}) {
		t.Fatalf("Evaluate(HR 100 on a 75 baseline) transitions %v, want hr-anomaly opened", got)
	}
	for i := 0; i < 5; i++ {
		at = at.Add(time.Minute)
		res = e.feed(t, p, obs(p, rules.CodeHeartRate, 75, at))
	}
	if got := kinds(noNEWS2(res.Transitions)); !same(got, []string{"hr-anomaly:resolved:low"}) {
		t.Fatalf("after 5 normal values: transitions %v, want hr-anomaly resolved", got)
	}
}

// No data: a patient silent for 10 minutes raises; data arriving resolves; releasing the
// patient (discharge) resolves its alarms and ends the no-data watch.
// Verifies: REQ-CORE-106, REQ-CORE-116
func TestNoData(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	p := uuid.New()
	e.feed(t, p, obs(p, rules.CodeHeartRate, 72, t0))
	e.clk.Set(t0.Add(9*time.Minute + 59*time.Second))
	if ts, err := e.eng.Tick(ctx); err != nil || len(noNEWS2(ts)) != 0 {
		t.Fatalf("Tick(9m59s) = %v, %v; want nothing", kinds(noNEWS2(ts)), err)
	}
	e.clk.Set(t0.Add(10 * time.Minute))
	ts, err := e.eng.Tick(ctx)
	if err != nil || !same(kinds(noNEWS2(ts)), []string{"nodata:opened:medium"}) {
		t.Fatalf("Tick(10m) = %v, %v; want nodata opened", kinds(noNEWS2(ts)), err)
	}
	if ts, _ := e.eng.Tick(ctx); len(noNEWS2(ts)) != 0 {
		t.Fatalf("Tick(again) = %v, want nothing (one alarm, not one per tick)", kinds(noNEWS2(ts)))
	}
	res := e.feed(t, p, obs(p, rules.CodeHeartRate, 72, t0.Add(11*time.Minute)))
	if got := kinds(noNEWS2(res.Transitions)); !same(got, []string{"nodata:resolved:medium"}) {
		t.Fatalf("data again: transitions %v, want nodata resolved", got)
	}
	// Discharge: open alarms resolved, the patient forgotten, no no-data alarm afterwards.
	e.feed(t, p, obs(p, rules.CodeSpO2, 80, t0.Add(12*time.Minute)), obs(p, rules.CodeSpO2, 80, t0.Add(13*time.Minute)))
	if err := e.eng.ReleasePatient(ctx, doc(), p, "discharged home"); err != nil {
		t.Fatal(err)
	}
	open, _ := e.alarms.OpenAlarms(ctx, p)
	if len(open) != 0 {
		t.Fatalf("open alarms after release = %d, want 0", len(open))
	}
	e.clk.Set(t0.Add(time.Hour))
	if ts, err := e.eng.Tick(ctx); err != nil || len(noNEWS2(ts)) != 0 {
		t.Fatalf("Tick() after release = %v, %v; want nothing", kinds(noNEWS2(ts)), err)
	}
	if n := e.count(t, `SELECT count(*) FROM audit_events WHERE action='rules.patient_released' AND object_id=$1`, p.String()); n != 1 {
		t.Errorf("audited releases = %d, want 1", n)
	}
	if n := e.count(t, `SELECT count(*) FROM alarms WHERE patient_id=$1 AND resolve_reason='discharged home' AND rule_id='spo2-low'`, p); n != 1 {
		t.Errorf("alarms resolved by the release = %d, want 1 (spo2-low)", n)
	}
	// After a restart nothing from before the release is replayed into a new alarm.
	e.restart(t)
	if ts, err := e.eng.Tick(ctx); err != nil || len(noNEWS2(ts)) != 0 {
		t.Fatalf("Tick() after release and restart = %v, %v; want nothing", kinds(noNEWS2(ts)), err)
	}
	open, _ = e.alarms.OpenAlarms(ctx, p)
	if len(open) != 0 {
		t.Fatalf("open alarms after release and restart = %d, want 0", len(open))
	}
}

func doc() audit.Event {
	return audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "dr-lee", AuthMethod: "password+totp"}}
}

// A restart in the middle of an active alarm: the new engine continues the same alarm
// (escalates and resolves it), never opens a duplicate; observations committed by core but
// never evaluated before the crash are replayed from History exactly once.
// Verifies: REQ-CORE-107
func TestRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	p := uuid.New()
	hr := func(at time.Duration, v float64) rules.Observation { return obs(p, rules.CodeHeartRate, v, t0.Add(at)) }
	e.feed(t, p, hr(0, 125))
	res := e.feed(t, p, hr(30*time.Second, 126))
	if got := kinds(noNEWS2(res.Transitions)); !same(got, []string{"hr-high:opened:medium"}) {
		t.Fatalf("before restart: %v, want hr-high opened", got)
	}
	id := noNEWS2(res.Transitions)[0].Alarm.ID
	e.feed(t, p, hr(40*time.Second, 128)) // evaluated, not checkpointed (no transition)

	// Crash: core committed these two, the engine never saw them.
	e.hist.add(hr(50*time.Second, 131), hr(60*time.Second, 146))
	e.clk.Set(t0.Add(61 * time.Second))
	e.restart(t)

	// The first evaluation after the restart rebuilds the state and replays the missed ones.
	res = e.feed(t, p, hr(70*time.Second, 147))
	if got := kinds(noNEWS2(res.Transitions)); !same(got, []string{"hr-high:severity_escalated:high"}) {
		t.Fatalf("after restart: %v, want the replayed escalation of the same alarm", got)
	}
	a, err := e.alarms.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if a.State != alarms.StateActive || a.Severity != alarms.SeverityHigh || a.TriggerCount != 2 {
		t.Fatalf("alarm after replay = %s %s triggers %d, want the same alarm, active, high, 2 triggers", a.State, a.Severity, a.TriggerCount)
	}
	// The same observations evaluated again (core retrying) change nothing.
	if res := e.feed(t, p, hr(50*time.Second, 131), hr(60*time.Second, 146), hr(70*time.Second, 147)); len(noNEWS2(res.Transitions)) != 0 {
		t.Fatalf("re-evaluation after replay: %v, want nothing", kinds(noNEWS2(res.Transitions)))
	}
	// Another restart, then recovery resolves the one alarm.
	if err := e.eng.Close(ctx); err != nil {
		t.Fatal(err)
	}
	e.restart(t)
	res = e.feed(t, p, hr(80*time.Second, 100))
	if got := kinds(noNEWS2(res.Transitions)); !same(got, []string{"hr-high:resolved:high"}) || noNEWS2(res.Transitions)[0].Alarm.ID != id {
		t.Fatalf("recovery after second restart: %v, want the same alarm resolved", got)
	}
	if n := e.count(t, `SELECT count(*) FROM alarms WHERE patient_id=$1 AND rule_id='hr-high'`, p); n != 1 {
		t.Errorf("hr-high alarms of patient = %d, want exactly 1", n)
	}
	if n := e.count(t, `SELECT count(*) FROM audit_events WHERE object_id=$1 AND action='alarm.opened'`, id.String()); n != 1 {
		t.Errorf("audited openings = %d, want 1", n)
	}
	if n := e.count(t, `SELECT count(*) FROM audit_events WHERE object_id=$1 AND action='alarm.severity_escalated'`, id.String()); n != 1 {
		t.Errorf("audited escalations = %d, want 1", n)
	}
}

// Rules are versioned: a change is a new audited version, never an edit in place; stale or
// malformed changes are refused and audited; the engine uses the new version at once.
// Verifies: REQ-CORE-108
func TestRuleVersions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	doc := audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "dr-lee", AuthMethod: "password+totp"}, RequestID: "r-9"}
	vs, err := e.eng.Versions(ctx, "hr-high")
	if err != nil || len(vs) != 2 {
		t.Fatalf("Versions(hr-high) = %v, %v; want 2 versions (the default set, migrations 00350 and 00360)", vs, err)
	}
	r := vs[1]
	r.Threshold.Levels = []rules.Level{{Limit: 100, Severity: alarms.SeverityMedium}, {Limit: 140, Severity: alarms.SeverityHigh}}
	r.Threshold.MinDuration = 0
	r.Reason = "cardiology ward: lower tachycardia limit"
	v2, err := e.eng.CreateVersion(ctx, doc, r)
	if err != nil {
		t.Fatal(err)
	}
	if v2.Version != 3 || v2.CreatedBy != "dr-lee" {
		t.Fatalf("CreateVersion() = v%d by %s, want v3 by dr-lee", v2.Version, v2.CreatedBy)
	}
	// Based on version 2 again: conflict.
	if _, err := e.eng.CreateVersion(ctx, doc, r); !errors.Is(err, rules.ErrVersionConflict) {
		t.Errorf("CreateVersion(stale) error %v, want ErrVersionConflict", err)
	}
	bad := v2
	bad.Threshold = &rules.ThresholdParams{Code: rules.CodeHeartRate, Direction: "sideways", Levels: v2.Threshold.Levels}
	if _, err := e.eng.CreateVersion(ctx, doc, bad); !errors.Is(err, rules.ErrInvalidRule) {
		t.Errorf("CreateVersion(bad direction) error %v, want ErrInvalidRule", err)
	}
	noReason := v2
	noReason.Reason = ""
	if _, err := e.eng.CreateVersion(ctx, doc, noReason); !errors.Is(err, rules.ErrInvalidRule) {
		t.Errorf("CreateVersion(no reason) error %v, want ErrInvalidRule", err)
	}
	if n := e.count(t, `SELECT count(*) FROM audit_events WHERE action='rule.version_created' AND object_id='hr-high' AND outcome='success' AND actor_id='dr-lee'`); n != 1 {
		t.Errorf("audited versions = %d, want 1", n)
	}
	if n := e.count(t, `SELECT count(*) FROM audit_events WHERE action='rule.version_created' AND object_id='hr-high' AND outcome='rejected'`); n != 3 {
		t.Errorf("audited rejections = %d, want 3", n)
	}
	// Never an edit in place.
	if _, err := e.pool.Exec(ctx, `UPDATE rules_versions SET enabled=false WHERE rule_id='hr-high' AND version=1`); err == nil {
		t.Error("UPDATE rules_versions succeeded, want refused")
	}
	all, err := e.eng.Rules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, x := range all {
		if x.ID == "hr-high" {
			found = x.Version == 3
		}
	}
	if !found || len(all) < 10 {
		t.Errorf("Rules() = %d rules, hr-high at v3 %v; want the default set with hr-high v3", len(all), found)
	}
	// The engine uses version 3 at once: 105 /min now alarms, naming version 3.
	p := uuid.New()
	res := e.feed(t, p, obs(p, rules.CodeHeartRate, 105, t0))
	if len(res.Transitions) != 1 || res.Transitions[0].Alarm.RuleVersion != 3 {
		t.Fatalf("Evaluate(HR 105) = %v, want hr-high v3 opened", kinds(res.Transitions))
	}
	// Disabling the rule resolves its open alarms (audited) and stops it; enabling it again
	// starts afresh: the condition still present opens a new alarm.
	off := v2
	off.Enabled, off.Reason = false, "rule under review"
	v3, err := e.eng.CreateVersion(ctx, doc, off)
	if err != nil {
		t.Fatal(err)
	}
	a, err := e.alarms.Get(ctx, res.Transitions[0].Alarm.ID)
	if err != nil || a.State != alarms.StateResolved || a.ResolveReason != "rule_disabled" || a.ResolvedBy != "dr-lee" {
		t.Fatalf("alarm after disabling = %+v, %v; want resolved, rule_disabled, by dr-lee", a, err)
	}
	if res := e.feed(t, p, obs(p, rules.CodeHeartRate, 106, t0.Add(time.Minute))); len(res.Transitions) != 0 {
		t.Fatalf("Evaluate() with rule disabled = %v, want nothing", kinds(res.Transitions))
	}
	on := v3
	on.Enabled, on.Reason = true, "review done"
	if _, err := e.eng.CreateVersion(ctx, doc, on); err != nil {
		t.Fatal(err)
	}
	res = e.feed(t, p, obs(p, rules.CodeHeartRate, 107, t0.Add(2*time.Minute)))
	if got := kinds(res.Transitions); !same(got, []string{"hr-high:opened:medium"}) || res.Transitions[0].Alarm.RuleVersion != 5 {
		t.Fatalf("Evaluate() after re-enabling = %v, want a new hr-high alarm of version 5", got)
	}
	if _, err := e.eng.Versions(ctx, "no-such-rule"); !errors.Is(err, rules.ErrRuleNotFound) {
		t.Errorf("Versions(unknown) error %v, want ErrRuleNotFound", err)
	}
}

// A version created through another process's engine is picked up at the next Tick.
// Verifies: REQ-CORE-108
func TestRuleVersionFromAnotherProcess(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	other, err := rules.New(ctx, rules.Config{Pool: e.pool, Recorder: e.rec, Alarms: e.alarms, Now: e.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	vs, err := other.Versions(ctx, "temp-high")
	if err != nil {
		t.Fatal(err)
	}
	r := vs[len(vs)-1]
	r.Threshold.Levels = []rules.Level{{Limit: 37.5, Severity: alarms.SeverityLow}}
	r.Reason = "neutropenic patients: lower fever limit"
	doc := audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "dr-lee", AuthMethod: "password+totp"}}
	if _, err := other.CreateVersion(ctx, doc, r); err != nil {
		t.Fatal(err)
	}
	p := uuid.New()
	if res := e.feed(t, p, obs(p, rules.CodeBodyTemperature, 37.7, t0)); len(res.Transitions) != 0 {
		t.Fatalf("before Tick: %v, want the old version (no alarm at 37.7)", kinds(res.Transitions))
	}
	if _, err := e.eng.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	res := e.feed(t, p, obs(p, rules.CodeBodyTemperature, 37.8, t0.Add(time.Minute)))
	if got := kinds(res.Transitions); !same(got, []string{"temp-high:opened:low"}) || res.Transitions[0].Alarm.RuleVersion != 2 {
		t.Fatalf("after Tick: %v, want temp-high v2 opened", got)
	}
}

// A backlog delivered in one batch (a device back online) is scored at each moment: the
// NEWS2 alarm opened in the middle of the backlog is also resolved within it, once the better
// score has held for 5 minutes.
// Verifies: REQ-CORE-104, REQ-CORE-101
func TestNEWS2Backlog(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := uuid.New()
	var backlog []rules.Observation
	backlog = append(backlog, vitals(p, t0, 16, 97, 21, 120, 70, 0, 37)...)
	backlog = append(backlog, obs(p, rules.CodeConsciousness, rules.ACVPUVoice, t0.Add(time.Minute)))
	backlog = append(backlog, obs(p, rules.CodeConsciousness, rules.ACVPUAlert, t0.Add(2*time.Minute)))
	backlog = append(backlog, obs(p, rules.CodeConsciousness, rules.ACVPUAlert, t0.Add(6*time.Minute))) // held 4 min
	backlog = append(backlog, obs(p, rules.CodeConsciousness, rules.ACVPUAlert, t0.Add(7*time.Minute))) // held 5 min
	res := e.feed(t, p, backlog...)
	var totals []int
	for _, d := range res.Derived {
		totals = append(totals, d.NEWS2.Total)
	}
	if len(totals) != 3 || totals[0] != 0 || totals[1] != 3 || totals[2] != 0 {
		t.Fatalf("backlog NEWS2 totals %v, want [0 3 0]", totals)
	}
	if got := kinds(res.Transitions); !same(got, []string{"news2:opened:medium", "news2:resolved:medium"}) {
		t.Fatalf("backlog transitions %v, want news2 opened then resolved", got)
	}
	hist, err := e.eng.NEWS2History(context.Background(), p, t0, time.Time{}, 10)
	if err != nil || len(hist) != 3 || hist[0].Score.Total != 0 || hist[1].Score.Total != 3 || hist[1].Score.Consciousness != 3 || !hist[1].EffectiveAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("NEWS2History() = %+v, %v; want 3 records newest first with components", hist, err)
	}
}
