package core_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/obs"
	"github.com/vigilhealth/vigil/core/rules"
)

// The scenarios of issue #12: each a ward's use replayed under a controlled clock through the
// real upload path (core.Ingest → commit → obs.Handoff → rules.Engine → alarms.Service, all on
// PostgreSQL), each failing on the behaviour the issue reported.

// ward is one test installation: core, the rules engine draining the hand-off, the alarm
// service, sharing one controlled clock.
type ward struct {
	*env
	handoff *obs.Handoff
	alarms  *alarms.Service
	eng     *rules.Engine
}

func newWard(t *testing.T) *ward {
	t.Helper()
	handoff := obs.NewHandoff(obs.HandoffConfig{})
	w := &ward{handoff: handoff}
	w.env = newEnv(t, func(c *core.Config) { c.Handoff = handoff })
	asvc, err := alarms.New(alarms.Config{Pool: w.pool, Recorder: w.rec, Now: w.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := rules.New(w.ctx, rules.Config{Pool: w.pool, Recorder: w.rec, Alarms: asvc, History: w.svc, Handoff: handoff, Now: w.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = eng.Close(context.Background()) })
	w.alarms, w.eng = asvc, eng
	return w
}

var units = map[string]string{core.LOINCHeartRate: "/min", core.LOINCRespiratoryRate: "/min", core.LOINCSpO2: "%",
	core.LOINCSystolicBP: "mm[Hg]", core.LOINCBodyTemperature: "Cel", core.LOINCConsciousness: "{score}", core.LOINCFiO2: "%"}

// send uploads one sample from device, stamped at, with the clock at now, and waits until the
// rules have evaluated it.
func (w *ward) send(t *testing.T, p uuid.UUID, device, code string, v float64, at, now time.Time) {
	t.Helper()
	w.clock.Set(now)
	b := batch(p, core.Sample{Code: code, Value: v, Unit: units[code], Time: at})
	b.Provenance.DeviceID, b.Provenance.KeyID, b.Provenance.ReceivedAt = device, device+"/v1", now
	if _, err := w.svc.Ingest(w.ctx, b); err != nil {
		t.Fatalf("Ingest(%s %g at %s) error %v", code, v, at.Format(time.TimeOnly), err)
	}
	if err := w.handoff.Flush(w.ctx); err != nil {
		t.Fatal(err)
	}
}

// open returns the patient's open alarm of the rule (nil if none).
func (w *ward) open(t *testing.T, p uuid.UUID, rule string) *alarms.Alarm {
	t.Helper()
	as, err := w.alarms.OpenAlarms(w.ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	for i := range as {
		if as[i].RuleID == rule {
			return &as[i]
		}
	}
	return nil
}

func (w *ward) alarmsOf(t *testing.T, p uuid.UUID, rule string) int {
	t.Helper()
	return w.count(t, `SELECT count(*) FROM alarms WHERE patient_id=$1 AND rule_id=$2`, p, rule)
}

// Hazard 1a: two devices on one patient, the BP device stamping 3 s behind the monitor.
// Systolic 80 mmHg for 90 s must raise sbp-low (min 60 s); before, every BP sample was older
// than the newest HR already evaluated and was skipped.
// Verifies: REQ-CORE-120
func TestScenarioTwoDevicesOutOfStep(t *testing.T) {
	t.Parallel()
	w := newWard(t)
	p := w.patient(t)
	for s := 0; s <= 90; s++ {
		now := t0.Add(time.Duration(s) * time.Second)
		w.send(t, p, "monitor", core.LOINCHeartRate, 80, now, now)
		if s%5 == 0 {
			w.send(t, p, "nibp", core.LOINCSystolicBP, 80, now.Add(-3*time.Second), now)
		}
	}
	a := w.open(t, p, "sbp-low")
	if a == nil || a.Severity != alarms.SeverityHigh {
		t.Fatalf("open sbp-low after 90 s of systolic 80 stamped 3 s behind HR = %+v, want high", a)
	}
}

// Hazard 1b: one sample stamped 4 min 50 s ahead (inside core's clock skew) must not blind
// the rules: 60 s of HR 150 afterwards raise hr-high.
// Verifies: REQ-CORE-121
func TestScenarioFutureStampedSample(t *testing.T) {
	t.Parallel()
	w := newWard(t)
	p := w.patient(t)
	w.send(t, p, "monitor", core.LOINCHeartRate, 80, t0.Add(4*time.Minute+50*time.Second), t0)
	for s := 1; s <= 60; s++ {
		now := t0.Add(time.Duration(s) * time.Second)
		w.send(t, p, "monitor", core.LOINCHeartRate, 150, now, now)
	}
	a := w.open(t, p, "hr-high")
	if a == nil || a.Severity != alarms.SeverityHigh {
		t.Fatalf("open hr-high after a future-stamped sample and 60 s of HR 150 = %+v, want high", a)
	}
}

// Hazard 1c: a buffered backlog of the same code arriving after a newer sample of that code
// (a handheld spot check while the patient's oximeter was offline): the window the backlog
// falls in is re-evaluated, and its 60 s of SpO2 82 % raise spo2-low.
// Verifies: REQ-CORE-120
func TestScenarioLateBacklogSameCode(t *testing.T) {
	t.Parallel()
	w := newWard(t)
	p := w.patient(t)
	w.send(t, p, "oximeter", core.LOINCSpO2, 97, t0, t0)
	now := t0.Add(70 * time.Second)
	w.send(t, p, "handheld", core.LOINCSpO2, 95, now, now) // newer than the whole backlog
	for s := 5; s <= 65; s += 5 {
		w.send(t, p, "oximeter", core.LOINCSpO2, 82, t0.Add(time.Duration(s)*time.Second), now.Add(time.Duration(s)*time.Millisecond))
	}
	if n := w.alarmsOf(t, p, "spo2-low"); n != 1 {
		t.Fatalf("spo2-low alarms after a late 60 s of SpO2 82 %% = %d, want 1", n)
	}
	var msg string
	var sev int
	if err := w.pool.QueryRow(w.ctx, `SELECT message, peak_severity FROM alarms WHERE patient_id=$1 AND rule_id='spo2-low'`, p).Scan(&msg, &sev); err != nil {
		t.Fatal(err)
	}
	if alarms.Severity(sev) != alarms.SeverityCritical || !strings.Contains(msg, "late samples") {
		t.Errorf("spo2-low alarm = %q peak %s, want critical, saying late samples", msg, alarms.Severity(sev))
	}
}

// Hazard 2: a manual resolve while the condition persists re-arms the rule: the alarm
// re-opens on the next samples that still meet it (within Config.Rearm, 5 s). Before, 95 s
// more of HR 145 raised nothing; the same for a NEWS2 alarm.
// Verifies: REQ-CORE-122
func TestScenarioManualResolveRearms(t *testing.T) {
	t.Parallel()
	w := newWard(t)
	p := w.patient(t)
	var now time.Time
	for s := 0; s <= 40; s += 2 {
		now = t0.Add(time.Duration(s) * time.Second)
		w.send(t, p, "monitor", core.LOINCHeartRate, 145, now, now)
	}
	first := w.open(t, p, "hr-high")
	if first == nil {
		t.Fatal("no hr-high alarm after 40 s of HR 145")
	}
	w.clock.Set(now.Add(time.Second))
	if _, err := w.alarms.Resolve(w.ctx, first.ID, clinician, "patient anxious, reviewed"); err != nil {
		t.Fatal(err)
	}
	var reopened *alarms.Alarm
	var after time.Duration
	for s := 2; s <= 95; s += 2 {
		w.send(t, p, "monitor", core.LOINCHeartRate, 145, now.Add(time.Duration(s)*time.Second), now.Add(time.Duration(s)*time.Second))
		if reopened = w.open(t, p, "hr-high"); reopened != nil {
			after = time.Duration(s) * time.Second
			break
		}
	}
	if reopened == nil || reopened.ID == first.ID || after > 6*time.Second {
		t.Fatalf("hr-high after a manual resolve at HR 145 and more HR 145 = %+v after %s, want a new alarm within 6 s", reopened, after)
	}
	if n := w.count(t, `SELECT count(*) FROM audit_events WHERE action='alarm.opened' AND object_id=$1 AND payload->>'reopened'='condition_persists'`, reopened.ID.String()); n != 1 {
		t.Errorf("audited re-opening = %d, want 1 saying the condition persists", n)
	}
}

// Hazard 2 for NEWS2: a NEWS2 alarm resolved by hand while the scores stay high re-opens.
// Verifies: REQ-CORE-122
func TestScenarioManualResolveRearmsNEWS2(t *testing.T) {
	t.Parallel()
	w := newWard(t)
	p := w.patient(t)
	vitals := func(at time.Time) {
		w.send(t, p, "monitor", core.LOINCRespiratoryRate, 30, at, at)
		w.send(t, p, "monitor", core.LOINCSpO2, 85, at, at)
		w.send(t, p, "monitor", core.LOINCSystolicBP, 85, at, at)
		w.send(t, p, "monitor", core.LOINCHeartRate, 85, at, at)
		w.send(t, p, "monitor", core.LOINCBodyTemperature, 37, at, at)
		w.send(t, p, "nurse", core.LOINCConsciousness, 2, at, at)
	}
	vitals(t0)
	a := w.open(t, p, "news2")
	if a == nil || a.Severity != alarms.SeverityCritical {
		t.Fatalf("news2 alarm = %+v, want critical", a)
	}
	w.clock.Set(t0.Add(10 * time.Second))
	if _, err := w.alarms.Resolve(w.ctx, a.ID, clinician, "seen"); err != nil {
		t.Fatal(err)
	}
	vitals(t0.Add(20 * time.Second))
	b := w.open(t, p, "news2")
	if b == nil || b.ID == a.ID || b.Severity != alarms.SeverityCritical {
		t.Fatalf("news2 after a manual resolve and scores still 12 = %+v, want a new critical alarm", b)
	}
}

// Hazard 3: extreme values that can be physiological, sustained, are not artifacts: they
// alarm at the highest priority, and NEWS2 scores them rather than the last plausible value.
// An isolated implausible value raises nothing.
// Verifies: REQ-CORE-123
func TestScenarioSustainedExtremeIsNotArtifact(t *testing.T) {
	t.Parallel()
	cases := []struct {
		code, rule string
		normal, v  float64
		every      time.Duration
		for_       time.Duration
	}{
		{core.LOINCHeartRate, "hr-low", 75, 15, 5 * time.Second, 60 * time.Second},
		{core.LOINCSpO2, "spo2-low", 97, 45, 5 * time.Second, 60 * time.Second},
		{core.LOINCSystolicBP, "sbp-low", 120, 35, 15 * time.Second, 90 * time.Second},
		{core.LOINCRespiratoryRate, "rr-low", 16, 2, 5 * time.Second, 60 * time.Second},
		{core.LOINCBodyTemperature, "temp-low", 37, 24, 15 * time.Second, 90 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.rule, func(t *testing.T) {
			t.Parallel()
			w := newWard(t)
			p := w.patient(t)
			w.send(t, p, "monitor", c.code, c.normal, t0, t0)
			// An isolated implausible sample, then plausible again: nothing.
			w.send(t, p, "monitor", c.code, c.v, t0.Add(c.every), t0.Add(c.every))
			w.send(t, p, "monitor", c.code, c.normal, t0.Add(2*c.every), t0.Add(2*c.every))
			if a := w.open(t, p, c.rule); a != nil {
				t.Fatalf("%s after one implausible sample = %+v, want none", c.rule, a)
			}
			start := t0.Add(3 * c.every)
			for d := time.Duration(0); d <= c.for_; d += c.every {
				w.send(t, p, "monitor", c.code, c.v, start.Add(d), start.Add(d))
			}
			a := w.open(t, p, c.rule)
			if a == nil || a.Severity != alarms.SeverityCritical {
				t.Fatalf("%s after %s of %g = %+v, want critical", c.rule, c.for_, c.v, a)
			}
		})
	}
}

// Hazard 3 for NEWS2: HR 15 sustained is scored (pulse 3), never the stale HR 75.
// Verifies: REQ-CORE-123
func TestScenarioNEWS2ScoresSustainedExtreme(t *testing.T) {
	t.Parallel()
	w := newWard(t)
	p := w.patient(t)
	for _, s := range []struct {
		code string
		v    float64
	}{{core.LOINCRespiratoryRate, 16}, {core.LOINCSpO2, 97}, {core.LOINCSystolicBP, 120}, {core.LOINCHeartRate, 75},
		{core.LOINCBodyTemperature, 37}, {core.LOINCConsciousness, 0}, {core.LOINCFiO2, 21}} {
		w.send(t, p, "monitor", s.code, s.v, t0, t0)
	}
	var pulse float64
	var pulseScore int
	for d := 5 * time.Second; d <= 60*time.Second; d += 5 * time.Second {
		w.send(t, p, "monitor", core.LOINCHeartRate, 15, t0.Add(d), t0.Add(d))
		hist, err := w.eng.NEWS2History(w.ctx, p, t0, time.Time{}, 1)
		if err != nil || len(hist) == 0 {
			t.Fatalf("NEWS2History() = %v, %v", hist, err)
		}
		if d == 5*time.Second && hist[0].Score.Values["pulse"] == 75 {
			t.Fatalf("NEWS2 after an implausible HR 15 still scores the stale HR 75: %+v", hist[0].Score)
		}
		pulse, pulseScore = hist[0].Score.Values["pulse"], hist[0].Score.Pulse
	}
	if pulse != 15 || pulseScore != 3 {
		t.Fatalf("NEWS2 after 60 s of HR 15 scores pulse %g (%d points), want 15 (3 points)", pulse, pulseScore)
	}
	if a := w.open(t, p, "news2"); a == nil || a.Severity < alarms.SeverityMedium {
		t.Fatalf("news2 alarm with HR 15 = %+v, want at least medium (a single parameter scoring 3)", a)
	}
}

// Hazard 4: no consciousness level (most monitors never send it) and no oxygen: RR 30,
// SpO2 85 %, systolic 85, HR 140 give a partial NEWS2 (a lower bound naming what is missing)
// that alarms critical at once, and after 10 minutes the "news2-incomplete" condition. A
// patient documented as on oxygen is scored on oxygen, said so. A ward that charts
// consciousness by hand waits for its charting interval before calling it missing.
// Verifies: REQ-CORE-124
func TestScenarioNEWS2MissingParameters(t *testing.T) {
	t.Parallel()
	w := newWard(t)
	site, err := w.svc.CreateSite(w.ctx, clinician, "General")
	if err != nil {
		t.Fatal(err)
	}
	wardA, err := w.svc.CreateWard(w.ctx, clinician, site.ID, "A")
	if err != nil {
		t.Fatal(err)
	}
	wardB, err := w.svc.CreateWard(w.ctx, clinician, site.ID, "B")
	if err != nil {
		t.Fatal(err)
	}
	doctor := audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "dr-lee", AuthMethod: "password+totp"}}
	if err := w.eng.SetWardNEWS2(w.ctx, doctor, wardB.ID, []string{"acvpu"}, 4*time.Hour, "ACVPU charted by nurses every 4 h"); err != nil {
		t.Fatal(err)
	}
	mk := func(wardID uuid.UUID) uuid.UUID {
		p, err := w.svc.CreatePatient(w.ctx, clinician, core.PatientPHI{MRN: "MRN-" + uuid.NewString()[:8], GivenName: "A", FamilyName: "B"}, &wardID)
		if err != nil {
			t.Fatal(err)
		}
		return p.ID
	}
	pa, pb, po := mk(wardA.ID), mk(wardB.ID), mk(wardA.ID)
	on := true
	if err := w.eng.SetOxygen(w.ctx, doctor, po, &on, "2 L/min nasal cannula"); err != nil {
		t.Fatal(err)
	}
	send := func(p uuid.UUID, at time.Time) {
		w.send(t, p, "monitor", core.LOINCRespiratoryRate, 30, at, at)
		w.send(t, p, "monitor", core.LOINCSpO2, 85, at, at)
		w.send(t, p, "monitor", core.LOINCSystolicBP, 85, at, at)
		w.send(t, p, "monitor", core.LOINCHeartRate, 140, at, at)
		w.send(t, p, "monitor", core.LOINCBodyTemperature, 37, at, at)
	}
	for _, p := range []uuid.UUID{pa, pb, po} {
		send(p, t0)
	}
	a := w.open(t, pa, "news2")
	if a == nil || a.Severity != alarms.SeverityCritical || !strings.Contains(a.Message, "consciousness") || !strings.Contains(a.Message, "at least 12") {
		t.Fatalf("news2 alarm without consciousness = %+v, want critical, 'at least 12', naming consciousness", a)
	}
	if !strings.Contains(a.Message, "oxygen not reported, scored as air") {
		t.Errorf("news2 message %q does not say oxygen was assumed to be air", a.Message)
	}
	o := w.open(t, po, "news2")
	if o == nil || !strings.Contains(o.Message, "at least 14") || !strings.Contains(o.Message, "documented") {
		t.Fatalf("news2 alarm of a patient documented on oxygen = %+v, want 'at least 14' (oxygen scored), saying documented", o)
	}
	if w.open(t, pa, "news2-incomplete") != nil {
		t.Fatal("news2-incomplete at once, want it only after 10 minutes")
	}
	for _, p := range []uuid.UUID{pa, pb} {
		send(p, t0.Add(10*time.Minute))
	}
	inc := w.open(t, pa, "news2-incomplete")
	if inc == nil || inc.Severity != alarms.SeverityLow || !strings.Contains(inc.Message, "consciousness") {
		t.Fatalf("news2-incomplete after 10 min without consciousness = %+v, want low, naming consciousness", inc)
	}
	if b := w.open(t, pb, "news2-incomplete"); b != nil {
		t.Fatalf("news2-incomplete on a ward charting consciousness by hand, 10 min in = %+v, want none before 4 h", b)
	}
	// Patient pb moves to ward A (which charts nothing by hand): from the engine's next Tick,
	// its missing consciousness is overdue.
	if err := w.svc.MovePatient(w.ctx, clinician, pb, wardA.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := w.eng.Tick(w.ctx); err != nil {
		t.Fatal(err)
	}
	send(pb, t0.Add(10*time.Minute+30*time.Second))
	if b := w.open(t, pb, "news2-incomplete"); b == nil {
		t.Fatal("news2-incomplete after moving to a ward that does not chart consciousness = none, want raised")
	}
	// The nurse charts consciousness by hand: the score is complete, the condition clears.
	w.clock.Set(t0.Add(11 * time.Minute))
	if _, err := w.svc.Chart(w.ctx, clinician, pa, []core.Sample{{Code: core.LOINCConsciousness, Value: 0, Unit: "{score}", Time: t0.Add(11 * time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	if err := w.handoff.Flush(w.ctx); err != nil {
		t.Fatal(err)
	}
	if n := w.count(t, `SELECT count(*) FROM audit_events WHERE action='upload.accepted' AND actor_id=$1 AND payload->>'transport'='chart'`, clinician.Actor.ID); n != 1 {
		t.Errorf("audited charting by %s = %d, want 1", clinician.Actor.ID, n)
	}
	if inc := w.open(t, pa, "news2-incomplete"); inc != nil {
		t.Fatalf("news2-incomplete after consciousness was charted = %+v, want resolved", inc)
	}
}

// Hazard 5: an acknowledged alarm re-alerts when its condition worsens within the same
// severity, with the current value in its message. Before, NEWS2 17 → 20 made no event and
// the alarm still said "NEWS2 17".
// Verifies: REQ-CORE-125
func TestScenarioAcknowledgedAlarmWorsens(t *testing.T) {
	t.Parallel()
	w := newWard(t)
	p := w.patient(t)
	at := t0
	vitals := func(rr, spo2, sbp, hr, acvpu, temp float64) {
		at = at.Add(10 * time.Second)
		w.send(t, p, "monitor", core.LOINCRespiratoryRate, rr, at, at)
		w.send(t, p, "monitor", core.LOINCSpO2, spo2, at, at)
		w.send(t, p, "monitor", core.LOINCFiO2, 40, at, at)
		w.send(t, p, "monitor", core.LOINCSystolicBP, sbp, at, at)
		w.send(t, p, "monitor", core.LOINCHeartRate, hr, at, at)
		w.send(t, p, "monitor", core.LOINCBodyTemperature, temp, at, at)
		w.send(t, p, "nurse", core.LOINCConsciousness, acvpu, at, at)
	}
	// 3 + 3 + 2 + 3 + 3 + 3 + 0 = 17
	vitals(30, 85, 85, 140, 2, 37)
	a := w.open(t, p, "news2")
	if a == nil || !strings.HasPrefix(a.Message, "NEWS2 17") {
		t.Fatalf("news2 alarm = %+v, want NEWS2 17", a)
	}
	w.clock.Set(at.Add(time.Second))
	if _, err := w.alarms.Acknowledge(w.ctx, a.ID, clinician, "on my way"); err != nil {
		t.Fatal(err)
	}
	// Temperature 34.9 °C scores 3: 17 + 3 = 20, the same (critical) severity.
	vitals(30, 85, 85, 140, 2, 34.9)
	b := w.open(t, p, "news2")
	if b == nil || b.ID != a.ID || b.State != alarms.StateActive || !strings.HasPrefix(b.Message, "NEWS2 20") {
		t.Fatalf("news2 alarm after NEWS2 17 → 20 = %+v, want the same alarm active again saying NEWS2 20", b)
	}
	var detail struct {
		NEWS2 rules.NEWS2Score `json:"news2"`
	}
	if err := json.Unmarshal(b.Detail, &detail); err != nil || detail.NEWS2.Total != 20 || detail.NEWS2.Values["temperature"] != 34.9 {
		t.Errorf("alarm detail = %s, %v; want the current score with its measured values", b.Detail, err)
	}
	if n := w.count(t, `SELECT count(*) FROM audit_events WHERE action='alarm.worsened' AND object_id=$1 AND payload->>'message' LIKE 'NEWS2 20%'`, a.ID.String()); n != 1 {
		t.Errorf("audited worsenings to NEWS2 20 = %d, want 1", n)
	}
}

// Hazard 6: readings are attributed by the time they were taken. A monitor moved from one
// patient to the next uploads readings it buffered while offline: those taken before it was
// moved are refused (outside_assignment, audited, nothing stored), never given to the new
// patient; readings taken since are stored for it. A device new to any patient may have taken
// its readings a little before its assignment was recorded (clock skew, 5 min), not more; a
// device that was another patient's before gets only clock error (30 s), never the gap
// between the two patients (review of issue #12: the 5-minute grace gave the new patient
// readings from that gap, most likely the previous patient's).
// Verifies: REQ-CORE-126, REQ-CORE-136
func TestScenarioReadingsFollowAssignmentTime(t *testing.T) {
	t.Parallel()
	w := newWard(t)
	next := w.patient(t)
	moved := t0.Add(10 * time.Minute)
	w.clock.Set(moved.Add(time.Minute))
	hr := func(at time.Time, v float64) core.Sample {
		return core.Sample{Code: core.LOINCHeartRate, Value: v, Unit: "/min", Time: at}
	}
	cases := []struct {
		name          string
		at            time.Time
		since, before time.Time // the assignment's start, the previous patient's end
		refused       bool
	}{
		{"buffered for the previous patient", t0.Add(5 * time.Minute), moved, moved, true},
		{"a second before the move", moved.Add(-time.Second), moved, moved, true},
		{"since the move", moved.Add(30 * time.Second), moved, moved, false},
		{"new device, 4 min before its assignment (clock behind)", moved.Add(-4 * time.Minute), moved, time.Time{}, false},
		{"new device, 6 min before its assignment", moved.Add(-6 * time.Minute), moved, time.Time{}, true},
		{"a gap of 3 min between patients, 1 min before the new one", moved.Add(-time.Minute), moved, moved.Add(-3 * time.Minute), true},
		{"a gap of 3 min between patients, 20 s before the new one (clock behind)", moved.Add(-20 * time.Second), moved, moved.Add(-3 * time.Minute), false},
	}
	for i, c := range cases {
		b := batch(next, hr(c.at, 150+float64(i)))
		b.AssignedSince, b.PreviousUntil = c.since, c.before
		_, err := w.svc.Ingest(w.ctx, b)
		var be *core.BatchError
		switch {
		case c.refused && (!errors.As(err, &be) || be.ErrorCode() != core.CodeOutsideAssignment || !errors.Is(err, core.ErrOutsideAssignment)):
			t.Errorf("%s: Ingest() error %v, want outside_assignment", c.name, err)
		case !c.refused && err != nil:
			t.Errorf("%s: Ingest() error %v, want stored", c.name, err)
		}
		stored := w.count(t, `SELECT count(*) FROM core_observations WHERE patient_id=$1 AND effective_at=$2`, next, c.at)
		if stored != map[bool]int{true: 0, false: 1}[c.refused] {
			t.Errorf("%s: stored for the next patient = %d, want refused %v", c.name, stored, c.refused)
		}
	}
	if n := w.count(t, `SELECT count(*) FROM audit_events WHERE action='upload.rejected' AND reason=$1`, core.CodeOutsideAssignment); n != 4 {
		t.Errorf("audited outside_assignment rejections = %d, want 4", n)
	}
}

// Review of issue #12: one upload holding both the previous patient's buffered readings and
// the new patient's (a monitor moved while offline) was refused as a whole, and the SDK
// quarantines a refused upload: the new patient's readings — HR 150 here — were never stored
// nor evaluated. The samples taken before the move are refused one by one (counted, named in
// the upload's audit event with outside_assignment), the rest is stored for the new patient
// and raises its alarm.
// Verifies: REQ-CORE-136
func TestScenarioMixedUploadAfterAMoveKeepsTheNewPatientsReadings(t *testing.T) {
	t.Parallel()
	w := newWard(t)
	next := w.patient(t)
	moved := t0.Add(10 * time.Minute)
	now := moved.Add(2 * time.Minute)
	w.clock.Set(now)
	var samples []core.Sample
	for s := -60; s <= 90; s += 10 { // 60 s before the move (the previous patient's), 90 s after
		samples = append(samples, core.Sample{Code: core.LOINCHeartRate, Value: 150, Unit: "/min", Time: moved.Add(time.Duration(s) * time.Second)})
	}
	b := batch(next, samples...)
	b.AssignedSince, b.PreviousUntil = moved, moved
	res, err := w.svc.Ingest(w.ctx, b)
	if err != nil {
		t.Fatalf("Ingest(mixed upload) error %v, want the new patient's readings stored", err)
	}
	if res.Stored != 10 || res.OutsideAssignment != 6 || res.Duplicates != 0 {
		t.Errorf("Ingest(mixed upload) = stored %d, outside %d, duplicates %d; want 10, 6, 0", res.Stored, res.OutsideAssignment, res.Duplicates)
	}
	if n := w.count(t, `SELECT count(*) FROM core_observations WHERE patient_id=$1 AND effective_at < $2`, next, moved); n != 0 {
		t.Errorf("readings from before the move stored for the new patient: %d", n)
	}
	if n := w.count(t, `SELECT count(*) FROM audit_events WHERE action='upload.accepted' AND (payload->>'outside_assignment')::int = 6
		AND payload->'refused'->0->>'code' = $1`, core.CodeOutsideAssignment); n != 1 {
		t.Errorf("upload.accepted events naming the 6 refused samples = %d, want 1", n)
	}
	if n := w.count(t, `SELECT count(*) FROM core_uploads WHERE samples = 16 AND stored = 10 AND outside_assignment = 6`); n != 1 {
		t.Errorf("core_uploads rows counting the refused samples = %d, want 1", n)
	}
	if err := w.handoff.Flush(w.ctx); err != nil {
		t.Fatal(err)
	}
	if a := w.open(t, next, "hr-high"); a == nil {
		t.Errorf("no hr-high alarm for the new patient's 90 s of HR 150")
	}
}

// Hazard 8: queries never answer in a way that hides data: an unknown patient is not found
// (not an empty chart), a cut answer says so, /latest shows no sample stamped in the future
// and shows a sustained implausible value flagged rather than an older plausible one.
// Verifies: REQ-CORE-128
func TestScenarioQueriesSayWhatTheyOmit(t *testing.T) {
	t.Parallel()
	w := newWard(t)
	p := w.patient(t)
	w.clock.Set(t0.Add(time.Minute))
	var samples []core.Sample
	for i := 0; i < 5; i++ {
		samples = append(samples, core.Sample{Code: core.LOINCHeartRate, Value: 70 + float64(i), Unit: "/min", Time: t0.Add(time.Duration(i) * time.Second)})
	}
	samples = append(samples, core.Sample{Code: core.LOINCHeartRate, Value: 15, Unit: "/min", Time: t0.Add(10 * time.Second)}, // implausible
		core.Sample{Code: core.LOINCSpO2, Value: 97, Unit: "%", Time: t0.Add(3 * time.Minute)}) // 2 min ahead of the clock
	if _, err := w.svc.Ingest(w.ctx, batch(p, samples...)); err != nil {
		t.Fatal(err)
	}
	q := core.RangeQuery{PatientID: uuid.New(), Code: core.LOINCHeartRate, From: t0.Add(-time.Hour), To: t0.Add(time.Hour)}
	if _, err := w.svc.Observations(w.ctx, q); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("Observations(unknown patient) error %v, want ErrNotFound", err)
	}
	if _, err := w.svc.Latest(w.ctx, q.PatientID, 0); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("Latest(unknown patient) error %v, want ErrNotFound", err)
	}
	q.PatientID, q.Limit = p, 3
	got, truncated, err := w.svc.ObservationsPage(w.ctx, q)
	if err != nil || len(got) != 3 || !truncated {
		t.Errorf("ObservationsPage(limit 3 of 5) = %d, truncated %v, %v; want 3, truncated", len(got), truncated, err)
	}
	q.Limit = 5
	if got, truncated, err := w.svc.ObservationsPage(w.ctx, q); err != nil || len(got) != 5 || truncated {
		t.Errorf("ObservationsPage(limit 5 of 5) = %d, truncated %v, %v; want 5, not truncated", len(got), truncated, err)
	}
	latest, err := w.svc.Latest(w.ctx, p, 0)
	if err != nil || len(latest) != 1 || latest[0].Code != core.LOINCHeartRate || latest[0].Value != 15 || !latest[0].Artifact {
		t.Errorf("Latest() = %+v, %v; want only HR 15 flagged (the SpO2 stamped ahead of now left out)", latest, err)
	}
}

// Hazard 7: an alarm a clinician reads at a glance: the value and limit with human units and
// the priority in words; a NEWS2 alarm's band in words with its measured values.
// Verifies: REQ-CORE-127
func TestScenarioAlarmReadable(t *testing.T) {
	t.Parallel()
	w := newWard(t)
	p := w.patient(t)
	for s := 0; s <= 30; s += 5 {
		now := t0.Add(time.Duration(s) * time.Second)
		w.send(t, p, "monitor", core.LOINCBodyTemperature, 38.5, now, now)
	}
	a := w.open(t, p, "temp-high")
	if a == nil || a.Message != "Temperature high: 38.5 °C above the limit of 38 °C" {
		t.Fatalf("temp-high alarm = %+v, want the message %q", a, "Temperature high: 38.5 °C above the limit of 38 °C")
	}
	var d map[string]any
	if err := json.Unmarshal(a.Detail, &d); err != nil || d["unit_text"] != "°C" || d["priority"] != "low" || d["limit"] != 38.0 || d["rule"] != "Temperature high" {
		t.Errorf("temp-high detail = %s, %v; want unit °C, priority low, limit 38, the rule's name", a.Detail, err)
	}
	// A level of consciousness of "voice" (3, which no threshold rule reports) with 38.5 °C (1):
	// a partial NEWS2 of 4, low–medium. (SpO2 91 alone no longer opens a NEWS2 alarm besides
	// spo2-low: REQ-CORE-135.)
	w.send(t, p, "monitor", core.LOINCConsciousness, 2, t0.Add(31*time.Second), t0.Add(31*time.Second))
	n := w.open(t, p, "news2")
	if n == nil || strings.Contains(n.Message, "low_medium") || !strings.Contains(n.Message, "low–medium") {
		t.Fatalf("news2 alarm = %+v, want the band in words (low–medium), not its enum name", n)
	}
	var nd struct {
		NEWS2 rules.NEWS2Score `json:"news2"`
	}
	if err := json.Unmarshal(n.Detail, &nd); err != nil || nd.NEWS2.Values["consciousness"] != 2 || nd.NEWS2.Values["temperature"] != 38.5 {
		t.Errorf("news2 detail = %s, %v; want the measured consciousness 2 and temperature 38.5", n.Detail, err)
	}
}
