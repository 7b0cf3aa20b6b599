package rules

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/core/alarms"
)

// point is one timed value.
type point struct {
	T time.Time `json:"t"`
	V float64   `json:"v"`
}

// patientState is everything the rules remember about one patient. It is checkpointed as JSON,
// so every field that matters is exported to encoding/json.
type patientState struct {
	// Through is the time of the newest observation evaluated; ThroughCodes the codes
	// evaluated at exactly that time (to skip them if replayed).
	Through      time.Time             `json:"through"`
	ThroughCodes []string              `json:"through_codes,omitempty"`
	LastSeen     time.Time             `json:"last_seen"`
	SpO2Scale    int                   `json:"spo2_scale"`
	Latest       map[string]point      `json:"latest"` // NEWS2 parameters, by parameter name
	Rules        map[string]*ruleState `json:"rules"`
}

// ruleState is one rule's memory for one patient.
type ruleState struct {
	Version  int             `json:"version"`
	Active   bool            `json:"active"` // the condition is raised
	Severity alarms.Severity `json:"severity,omitempty"`
	// threshold: since when the limit is crossed; rate: since when the change is back within it
	PendingSince *time.Time `json:"pending_since,omitempty"`
	// rate: monotonic deque of the window's extreme candidates
	Deque []point `json:"deque,omitempty"`
	// anomaly
	N      int     `json:"n,omitempty"`
	Mean   float64 `json:"mean,omitempty"`
	Var    float64 `json:"var,omitempty"`
	Normal int     `json:"normal,omitempty"`
	// news2: the last score recorded; since when the response has been below the alarm's
	Last       *NEWS2Score `json:"last,omitempty"`
	LowerSince *time.Time  `json:"lower_since,omitempty"`
}

func newPatientState() *patientState {
	return &patientState{Latest: map[string]point{}, Rules: map[string]*ruleState{}}
}

func (ps *patientState) rule(r *Rule) *ruleState {
	rs := ps.Rules[r.ID]
	if rs == nil {
		rs = &ruleState{Version: r.Version}
		ps.Rules[r.ID] = rs
	}
	if rs.Version != r.Version {
		// A new version starts its own memory; only whether its alarm is raised carries over,
		// unless the rule was disabled in between (which resolved its alarms).
		if r.lastDisabled > rs.Version {
			*rs = ruleState{Version: r.Version}
		} else {
			*rs = ruleState{Version: r.Version, Active: rs.Active, Severity: rs.Severity}
		}
	}
	return rs
}

// news2Param maps an observation code to the NEWS2 parameter it feeds.
var news2Param = map[string]string{
	CodeRespiratoryRate: "rr", CodeSpO2: "spo2", CodeSpO2Arterial: "spo2",
	CodeInhaledO2Conc: "fio2", CodeInhaledO2Flow: "o2flow", CodeSystolicBP: "sbp",
	CodeHeartRate: "hr", CodeConsciousness: "acvpu", CodeBodyTemperature: "temp",
}

// runner evaluates observations against rules for one patient, collecting signals and scores.
type runner struct {
	pid     uuid.UUID
	ps      *patientState
	sigs    []alarms.Signal
	derived []Derived
}

func (x *runner) signal(r *Rule, raise bool, sev alarms.Severity, at time.Time, msg string, detail any) {
	if detail != nil {
		if _, err := json.Marshal(detail); err != nil { // e.g. a z-score overflowing to ±Inf
			detail = map[string]any{"detail_unavailable": err.Error()}
		}
	}
	x.sigs = append(x.sigs, alarms.Signal{PatientID: x.pid, RuleID: r.ID, RuleVersion: r.Version,
		Raise: raise, Severity: sev, Message: msg, Detail: detail, At: at})
}

// observe runs every rule on obs (one patient's, any order). NEWS2 is scored once per
// distinct time at which any of its parameters changed (so a backlog delivered at once, or a
// replay, scores each moment, not only the last).
func (x *runner) observe(rules []*Rule, byCode map[string][]*Rule, obs []Observation) {
	sort.SliceStable(obs, func(i, j int) bool { return obs[i].EffectiveAt.Before(obs[j].EffectiveAt) })
	var news2 []*Rule
	for _, r := range rules {
		if r.Kind == KindNEWS2 {
			news2 = append(news2, r)
		}
	}
	var pending time.Time // a NEWS2 parameter changed at this time, not yet scored
	score := func() {
		if !pending.IsZero() {
			for _, r := range news2 {
				x.news2(r, pending)
			}
			pending = time.Time{}
		}
	}
	seen := false
	for _, o := range obs {
		if o.PatientID != x.pid {
			continue
		}
		fresh := x.advance(o)
		if !fresh && o.EffectiveAt.Equal(x.ps.Through) {
			continue // already evaluated (a replay overlapping what was checkpointed)
		}
		seen = true // new data, even if older than what was evaluated: the device is alive
		if o.EffectiveAt.After(x.ps.LastSeen) {
			x.ps.LastSeen = o.EffectiveAt
		}
		if !fresh {
			continue // older than what was evaluated: stored by core, not evaluated
		}
		if o.Artifact {
			continue
		}
		if math.IsNaN(o.Value) || math.IsInf(o.Value, 0) {
			continue
		}
		if o.EffectiveAt.After(pending) {
			score()
		}
		for _, r := range byCode[o.Code] {
			switch r.Kind {
			case KindThreshold:
				x.threshold(r, o)
			case KindRate:
				x.rate(r, o)
			case KindAnomaly:
				x.anomaly(r, o)
			}
		}
		if name, ok := news2Param[o.Code]; ok {
			x.ps.Latest[name] = point{T: o.EffectiveAt, V: o.Value}
			pending = o.EffectiveAt
		}
	}
	score()
	// Any observation ends a no-data condition.
	if !seen {
		return
	}
	for _, r := range rules {
		if r.Kind == KindNoData {
			if rs := x.ps.rule(r); rs.Active {
				rs.Active, rs.Severity = false, 0
				x.signal(r, false, 0, x.ps.LastSeen, "data received again", nil)
			}
		}
	}
}

// advance moves the evaluated-through mark; it reports false for an observation already
// evaluated or older than the mark.
func (x *runner) advance(o Observation) bool {
	switch {
	case o.EffectiveAt.After(x.ps.Through):
		x.ps.Through = o.EffectiveAt
		x.ps.ThroughCodes = append(x.ps.ThroughCodes[:0], o.Code)
		return true
	case o.EffectiveAt.Equal(x.ps.Through):
		for _, c := range x.ps.ThroughCodes {
			if c == o.Code {
				return false
			}
		}
		x.ps.ThroughCodes = append(x.ps.ThroughCodes, o.Code)
		return true
	}
	return false
}

// crossed returns the index of the most severe level v crosses, with limits shifted inward
// by shift (for hysteresis), or -1.
func crossed(p *ThresholdParams, v, shift float64) int {
	best := -1
	for i, l := range p.Levels {
		if p.Direction == Above && v > l.Limit-shift || p.Direction == Below && v < l.Limit+shift {
			best = i
		}
	}
	return best
}

func (x *runner) threshold(r *Rule, o Observation) {
	p := r.Threshold
	rs := x.ps.rule(r)
	lvl := crossed(p, o.Value, 0)
	detail := func() any {
		return map[string]any{"code": o.Code, "value": o.Value, "unit": o.Unit, "at": o.EffectiveAt}
	}
	if !rs.Active {
		if lvl < 0 {
			rs.PendingSince = nil
			return
		}
		if rs.PendingSince == nil {
			t := o.EffectiveAt
			rs.PendingSince = &t
		}
		if o.EffectiveAt.Sub(*rs.PendingSince) < time.Duration(p.MinDuration) {
			return
		}
		rs.Active, rs.Severity, rs.PendingSince = true, p.Levels[lvl].Severity, nil
		x.signal(r, true, rs.Severity, o.EffectiveAt, fmt.Sprintf("%s %s %g %s (limit %g)", r.Name, p.Direction, o.Value, o.Unit, p.Levels[lvl].Limit), detail())
		return
	}
	held := crossed(p, o.Value, p.Hysteresis) // the level kept given hysteresis
	if held < 0 {
		rs.Active, rs.Severity = false, 0
		x.signal(r, false, 0, o.EffectiveAt, fmt.Sprintf("%s cleared at %g %s", r.Name, o.Value, o.Unit), detail())
		return
	}
	cur := -1
	for i, l := range p.Levels {
		if l.Severity == rs.Severity {
			cur = i
		}
	}
	next := cur
	switch {
	case lvl > cur:
		next = lvl // worse: at once
	case held < cur:
		next = held // better, beyond the hysteresis band
	}
	if next != cur && next >= 0 {
		rs.Severity = p.Levels[next].Severity
		x.signal(r, true, rs.Severity, o.EffectiveAt, fmt.Sprintf("%s %s %g %s (limit %g)", r.Name, p.Direction, o.Value, o.Unit, p.Levels[next].Limit), detail())
	}
}

func (x *runner) rate(r *Rule, o Observation) {
	p := r.Rate
	rs := x.ps.rule(r)
	// Keep a monotonic deque: for a rise the window's minimum, for a fall its maximum.
	cut := o.EffectiveAt.Add(-time.Duration(p.Window))
	i := 0
	for i < len(rs.Deque) && rs.Deque[i].T.Before(cut) {
		i++
	}
	rs.Deque = rs.Deque[i:]
	var change float64
	if len(rs.Deque) > 0 {
		if p.Direction == Above {
			change = o.Value - rs.Deque[0].V
		} else {
			change = rs.Deque[0].V - o.Value
		}
	}
	for n := len(rs.Deque); n > 0; n-- {
		last := rs.Deque[n-1].V
		if p.Direction == Above && last < o.Value || p.Direction == Below && last > o.Value {
			break
		}
		rs.Deque = rs.Deque[:n-1]
	}
	rs.Deque = append(rs.Deque, point{T: o.EffectiveAt, V: o.Value})
	detail := func() any {
		return map[string]any{"code": o.Code, "value": o.Value, "unit": o.Unit, "change": change, "window": p.Window, "at": o.EffectiveAt}
	}
	hit := change > p.MaxChange
	switch {
	case hit:
		rs.PendingSince = nil
		if !rs.Active {
			rs.Active, rs.Severity = true, p.Severity
			x.signal(r, true, p.Severity, o.EffectiveAt, fmt.Sprintf("%s: changed by %g %s within %s", r.Name, change, o.Unit, time.Duration(p.Window)), detail())
		}
	case rs.Active:
		if rs.PendingSince == nil { // within the limit since now: clear once it has held
			t := o.EffectiveAt
			rs.PendingSince = &t
		}
		if o.EffectiveAt.Sub(*rs.PendingSince) >= time.Duration(p.Hold) {
			rs.Active, rs.Severity, rs.PendingSince = false, 0, nil
			x.signal(r, false, 0, o.EffectiveAt, r.Name+" cleared", detail())
		}
	}
}

func (x *runner) anomaly(r *Rule, o Observation) {
	p := r.Anomaly
	rs := x.ps.rule(r)
	v := o.Value
	if rs.N == 0 {
		rs.N, rs.Mean, rs.Var = 1, v, 0
		return
	}
	sd := math.Max(math.Sqrt(rs.Var), p.MinStdDev)
	z := 0.0
	if sd > 0 {
		z = (v - rs.Mean) / sd
	}
	// Winsorized EWMA update: the value clipped to mean ± Z·σ.
	upd := v
	if sd > 0 {
		upd = math.Max(rs.Mean-p.Z*sd, math.Min(rs.Mean+p.Z*sd, v))
	}
	diff := upd - rs.Mean
	inc := p.Alpha * diff
	rs.Mean += inc
	rs.Var = (1 - p.Alpha) * (rs.Var + diff*inc)
	if math.IsInf(rs.Mean, 0) || math.IsNaN(rs.Mean) || math.IsInf(rs.Var, 0) || math.IsNaN(rs.Var) {
		// Values beyond float range (core's plausibility checks make this unreachable): start
		// the baseline again rather than keep a state that cannot be checkpointed.
		rs.N, rs.Mean, rs.Var, rs.Normal = 0, 0, 0, 0
		return
	}
	rs.N++
	if rs.N <= p.Warmup {
		return
	}
	detail := func() any {
		return map[string]any{"code": o.Code, "value": v, "unit": o.Unit, "z": z, "baseline_mean": rs.Mean, "baseline_sd": sd, "at": o.EffectiveAt}
	}
	if math.Abs(z) > p.Z {
		rs.Normal = 0
		if !rs.Active {
			rs.Active, rs.Severity = true, p.Severity
			x.signal(r, true, p.Severity, o.EffectiveAt, fmt.Sprintf("%s: %g %s is %.1f SD from this patient's baseline", r.Name, v, o.Unit, z), detail())
		}
		return
	}
	if rs.Active {
		rs.Normal++
		if rs.Normal >= p.ClearAfter {
			rs.Active, rs.Severity, rs.Normal = false, 0, 0
			x.signal(r, false, 0, o.EffectiveAt, r.Name+" cleared", detail())
		}
	}
}

// news2Severity maps a score to an alarm severity (0: no alarm).
func news2Severity(p *NEWS2Params, s NEWS2Score) alarms.Severity {
	switch s.Band {
	case BandHigh:
		return alarms.SeverityCritical
	case BandMedium:
		return alarms.SeverityHigh
	case BandLowMedium:
		return alarms.SeverityMedium
	}
	if p.AlarmOnLow && s.Total > 0 {
		return alarms.SeverityLow
	}
	return 0
}

func (x *runner) news2(r *Rule, at time.Time) {
	p := r.NEWS2
	rs := x.ps.rule(r)
	maxAge := time.Duration(p.MaxAge)
	fresh := func(name string) (point, bool) {
		pt, ok := x.ps.Latest[name]
		return pt, ok && !pt.T.Before(at.Add(-maxAge)) && !pt.T.After(at)
	}
	in := NEWS2Input{SpO2Scale: x.ps.SpO2Scale}
	for _, f := range [...]struct {
		name string
		dst  *float64
	}{{"rr", &in.RespRate}, {"spo2", &in.SpO2}, {"sbp", &in.SystolicBP}, {"hr", &in.Pulse}, {"temp", &in.Temperature}} {
		pt, ok := fresh(f.name)
		if !ok {
			return
		}
		*f.dst = pt.V
	}
	fio2, okC := fresh("fio2")
	flow, okF := fresh("o2flow")
	assumedAir, assumedAlert := false, false
	switch {
	case okC || okF:
		in.OnOxygen = okC && fio2.V > 21 || okF && flow.V > 0
	case !p.AssumeAir:
		return
	default:
		assumedAir = true
	}
	if c, ok := fresh("acvpu"); ok {
		in.Consciousness = int(math.Round(c.V))
	} else if !p.AssumeAlert {
		return
	} else {
		assumedAlert = true
	}
	score, err := ComputeNEWS2(in)
	if err != nil {
		return // an impossible ACVPU code: no score rather than a wrong one
	}
	score.AssumedAir, score.AssumedAlert = assumedAir, assumedAlert
	if rs.Last == nil || *rs.Last != score {
		sc := score
		rs.Last = &sc
		x.derived = append(x.derived, Derived{
			Observation: Observation{PatientID: x.pid, Code: CodeNEWS2, Value: float64(score.Total), Unit: "{score}", EffectiveAt: at},
			RuleID:      r.ID, RuleVersion: r.Version, NEWS2: &sc,
		})
	}
	sev := news2Severity(p, score)
	msg := fmt.Sprintf("NEWS2 %d (%s response)", score.Total, score.Band)
	if assumedAir {
		msg += "; oxygen not reported, scored as air"
	}
	detail := map[string]any{"news2": score, "at": at}
	switch {
	case sev != 0 && (!rs.Active || sev > rs.Severity): // new or worse: at once
		rs.Active, rs.Severity, rs.LowerSince = true, sev, nil
		x.signal(r, true, sev, at, msg, detail)
	case !rs.Active:
	case sev == rs.Severity:
		rs.LowerSince = nil
	default: // better: only once it has held for Hold
		if rs.LowerSince == nil {
			t := at
			rs.LowerSince = &t
		}
		if at.Sub(*rs.LowerSince) < time.Duration(p.Hold) {
			return
		}
		rs.LowerSince = nil
		if sev == 0 {
			rs.Active, rs.Severity = false, 0
			x.signal(r, false, 0, at, msg, detail)
			return
		}
		rs.Severity = sev
		x.signal(r, true, sev, at, msg, detail)
	}
}

// silent runs the no-data rules at now.
func (x *runner) silent(rules []*Rule, now time.Time) {
	if x.ps.LastSeen.IsZero() {
		return
	}
	for _, r := range rules {
		if r.Kind != KindNoData {
			continue
		}
		rs := x.ps.rule(r)
		gap := now.Sub(x.ps.LastSeen)
		if !rs.Active && gap >= time.Duration(r.NoData.Silence) {
			rs.Active, rs.Severity = true, r.NoData.Severity
			x.signal(r, true, r.NoData.Severity, now, fmt.Sprintf("no data for %s", gap.Truncate(time.Second)),
				map[string]any{"last_seen": x.ps.LastSeen, "silence": r.NoData.Silence})
		}
	}
}
