package rules

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
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
	// Through is the time of the newest observation evaluated (where a restart's replay
	// starts); ThroughCodes is kept only to read checkpoints written before Codes existed.
	Through      time.Time `json:"through"`
	ThroughCodes []string  `json:"through_codes,omitempty"`
	// Codes is, per code, the time of the newest observation of that code evaluated: a
	// sample is in order or late for its own code, never for the patient (two devices on one
	// patient need not be in step).
	Codes     map[string]time.Time  `json:"codes,omitempty"`
	LastSeen  time.Time             `json:"last_seen"`
	FirstSeen time.Time             `json:"first_seen,omitempty"` // first NEWS2 parameter seen
	SpO2Scale int                   `json:"spo2_scale"`
	Latest    map[string]point      `json:"latest"` // NEWS2 parameters, by parameter name
	Rules     map[string]*ruleState `json:"rules"`
	// Suspect holds, per code, implausible samples (core's artifact flag) not yet confirmed
	// as sustained physiology.
	Suspect map[string]*suspect `json:"suspect,omitempty"`

	// Settings, loaded with the state, not checkpointed.
	OnOxygen      *bool           `json:"-"` // documented supplemental oxygen (nil: not documented)
	Charted       map[string]bool `json:"-"` // NEWS2 parameters the ward charts by hand
	ChartedMaxAge time.Duration   `json:"-"`
}

// suspect is a run of implausible samples of one code.
type suspect struct {
	Points    []point `json:"points,omitempty"`
	Confirmed bool    `json:"confirmed,omitempty"` // the run is sustained: its samples are evaluated
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
	// Asserted: when the raised condition was last signalled (raise or sustain); Alerted: the
	// value (threshold) or score (NEWS2) the clinician was last alerted with.
	Asserted *time.Time `json:"asserted,omitempty"`
	Alerted  *float64   `json:"alerted,omitempty"`
	// news2: its incomplete condition is raised
	Incomplete bool `json:"incomplete,omitempty"`
	// Cleared: the time of the sample at which the condition last cleared; a late window's
	// episode raised no later than it was already alarmed (or re-evaluated) and is not raised
	// again.
	Cleared *time.Time `json:"cleared,omitempty"`
}

func newPatientState() *patientState {
	return &patientState{Latest: map[string]point{}, Rules: map[string]*ruleState{}, Codes: map[string]time.Time{}, Suspect: map[string]*suspect{}}
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
			*rs = ruleState{Version: r.Version, Active: rs.Active, Severity: rs.Severity, Asserted: rs.Asserted, Alerted: rs.Alerted}
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

	now  time.Time     // the engine's clock: samples stamped later are evaluated at now
	opts runnerOptions // from the engine's Config
	// hist is the stored window around late samples (set by the engine before observe).
	hist []Observation
	// clamped: original times of samples evaluated at now instead (by code)
	clamped map[string]time.Time
	// sim: a simulation (late re-evaluation) whose signals are examined, not sent
	sim bool
	// admitted is observe's buffer of the observations a sample makes the rules act on
	admitted []Observation
	// byCode: the enabled rules by the code they read (set by observe)
	byCode map[string][]*Rule
}

type runnerOptions struct {
	lateHorizon   time.Duration
	rearm         time.Duration
	futureTol     time.Duration
	artifactCount int
	artifactSpan  time.Duration
}

func (x *runner) signal(r *Rule, raise bool, sev alarms.Severity, at time.Time, msg string, detail any) {
	if detail != nil {
		if _, err := json.Marshal(detail); err != nil { // e.g. a z-score overflowing to ±Inf
			detail = map[string]any{"detail_unavailable": err.Error()}
		}
	}
	if !x.sim {
		rs := x.ps.rule(r)
		t := at
		if raise {
			rs.Asserted = &t
		} else {
			rs.Cleared = &t
		}
	}
	x.sigs = append(x.sigs, alarms.Signal{PatientID: x.pid, RuleID: r.ID, RuleVersion: r.Version,
		Raise: raise, Severity: sev, Message: msg, Detail: detail, At: at})
}

// sustain re-asserts a condition that still holds, at most once per Rearm: the alarm service
// re-opens its alarm if it was resolved by hand meanwhile, and writes nothing otherwise.
func (x *runner) sustain(r *Rule, rs *ruleState, at time.Time, msg string, detail any) {
	if x.sim || !rs.Active {
		return
	}
	if rs.Asserted != nil && at.Sub(*rs.Asserted) < x.opts.rearm && !at.Before(*rs.Asserted) {
		return
	}
	x.signal(r, true, rs.Severity, at, msg, detail)
	x.sigs[len(x.sigs)-1].Sustain = true
}

// worse re-alerts an open condition that got worse within its severity.
func (x *runner) worse(r *Rule, rs *ruleState, at time.Time, msg string, detail any, alerted float64) {
	v := alerted
	rs.Alerted = &v
	x.signal(r, true, rs.Severity, at, msg, detail)
	x.sigs[len(x.sigs)-1].Worse = true
}

// observe runs every rule on obs (one patient's, any order). A sample is evaluated whatever
// order it arrives in: in order for its own code, by the rules at once; older than what was
// evaluated of its code, by re-evaluating the window it falls in (late); stamped in the
// future, at now. NEWS2 is scored once per distinct time at which any of its parameters
// changed (so a backlog delivered at once, or a replay, scores each moment, not only the
// last).
func (x *runner) observe(rules []*Rule, byCode map[string][]*Rule, obs []Observation) {
	x.byCode = byCode
	if x.ps.Codes == nil {
		x.ps.Codes = map[string]time.Time{}
		for _, c := range x.ps.ThroughCodes { // a checkpoint from before per-code marks
			x.ps.Codes[c] = x.ps.Through
		}
	}
	if x.ps.Suspect == nil {
		x.ps.Suspect = map[string]*suspect{}
	}
	if !x.now.IsZero() {
		limit := x.now.Add(x.opts.futureTol)
		for i := range obs {
			if obs[i].EffectiveAt.After(limit) {
				if x.clamped == nil {
					x.clamped = map[string]time.Time{}
				}
				x.clamped[obs[i].Code] = obs[i].EffectiveAt
				obs[i].EffectiveAt = x.now
			}
		}
	}
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
	var late, tooLate []Observation
	for _, o := range obs {
		if o.PatientID != x.pid {
			continue
		}
		mark, known := x.ps.Codes[o.Code]
		if known && o.EffectiveAt.Equal(mark) {
			continue // already evaluated (a replay overlapping what was checkpointed, a resend)
		}
		seen = true // new data, even if older than what was evaluated: the device is alive
		if o.EffectiveAt.After(x.ps.LastSeen) {
			x.ps.LastSeen = o.EffectiveAt
		}
		if math.IsNaN(o.Value) || math.IsInf(o.Value, 0) {
			continue
		}
		if known && o.EffectiveAt.Before(mark) {
			if h := x.opts.lateHorizon; h > 0 && o.EffectiveAt.Before(mark.Add(-h)) {
				tooLate = append(tooLate, o)
			} else {
				late = append(late, o)
			}
			continue
		}
		x.ps.Codes[o.Code] = o.EffectiveAt
		if o.EffectiveAt.After(x.ps.Through) {
			x.ps.Through = o.EffectiveAt
		}
		if o.EffectiveAt.After(pending) {
			score()
		}
		admitted := x.admitted[:0]
		if o.Artifact {
			admitted = x.admit(o)
		} else {
			if len(x.ps.Suspect) > 0 {
				delete(x.ps.Suspect, o.Code)
			}
			admitted = append(admitted, o)
		}
		x.admitted = admitted
		for _, v := range admitted {
			for _, r := range byCode[v.Code] {
				switch r.Kind {
				case KindThreshold:
					x.threshold(r, v)
				case KindRate:
					x.rate(r, v)
				case KindAnomaly:
					x.anomaly(r, v)
				}
			}
			if name, ok := news2Param[v.Code]; ok {
				if x.ps.FirstSeen.IsZero() {
					x.ps.FirstSeen = v.EffectiveAt
				}
				if cur, ok := x.ps.Latest[name]; !ok || !v.EffectiveAt.Before(cur.T) {
					x.ps.Latest[name] = point{T: v.EffectiveAt, V: v.Value}
				}
				pending = o.EffectiveAt
			}
		}
		if o.Artifact && len(admitted) == 0 {
			// An implausible sample not (yet) confirmed: the NEWS2 parameter's previous value
			// is no longer current and must not be scored as if it were.
			if name, ok := news2Param[o.Code]; ok {
				if _, had := x.ps.Latest[name]; had {
					delete(x.ps.Latest, name)
					pending = o.EffectiveAt
				}
			}
		}
	}
	score()
	if len(late) > 0 {
		x.late(byCode, news2, late)
	}
	if len(tooLate) > 0 {
		x.lateData(byCode, tooLate)
	}
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
	// The detail a clinician reads: the measured value with its human unit, the rule, and
	// the limit and priority of the level in words.
	detail := func() any {
		m := map[string]any{"code": o.Code, "value": o.Value, "unit": o.Unit, "unit_text": strings.TrimSpace(HumanUnit(o.Unit)),
			"at": o.EffectiveAt, "rule": r.Name, "direction": string(p.Direction)}
		for _, l := range p.Levels {
			if l.Severity == rs.Severity && rs.Active {
				m["limit"], m["priority"] = l.Limit, l.Severity.String()
			}
		}
		if t, ok := x.clamped[o.Code]; ok {
			m["clamped_from"] = t // stamped ahead of the server clock: evaluated at now
		}
		return m
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
		v := o.Value
		rs.Alerted = &v
		x.signal(r, true, rs.Severity, o.EffectiveAt, thresholdMessage(r, o, p.Levels[lvl].Limit), detail())
		return
	}
	held := crossed(p, o.Value, p.Hysteresis) // the level kept given hysteresis
	if held < 0 {
		rs.Active, rs.Severity = false, 0
		x.signal(r, false, 0, o.EffectiveAt, fmt.Sprintf("%s cleared at %s%s", r.Name, fmtValue(o.Value), HumanUnit(o.Unit)), detail())
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
		v := o.Value
		rs.Alerted = &v
		x.signal(r, true, rs.Severity, o.EffectiveAt, thresholdMessage(r, o, p.Levels[next].Limit), detail())
		return
	}
	if lvl < 0 || cur < 0 {
		return // within the hysteresis band: held, not re-asserted
	}
	// The same level: further past the limit re-alerts; otherwise the condition still holds.
	limit := p.Levels[cur].Limit
	step := p.WorsenBy
	if step <= 0 {
		step = math.Max(math.Abs(limit)*0.1, 1e-9)
	}
	if rs.Alerted != nil && (p.Direction == Above && o.Value >= *rs.Alerted+step || p.Direction == Below && o.Value <= *rs.Alerted-step) {
		x.worse(r, rs, o.EffectiveAt, thresholdMessage(r, o, limit), detail(), o.Value)
		return
	}
	x.sustain(r, rs, o.EffectiveAt, thresholdMessage(r, o, limit), detail())
}

// thresholdMessage says what crossed which limit, in words and human units.
func thresholdMessage(r *Rule, o Observation, limit float64) string {
	dir := "above"
	if r.Threshold.Direction == Below {
		dir = "below"
	}
	u := HumanUnit(o.Unit)
	return fmt.Sprintf("%s: %s%s %s the limit of %s%s", r.Name, fmtValue(o.Value), u, dir, fmtValue(limit), u)
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
		msg := fmt.Sprintf("%s: changed by %s%s within %s", r.Name, fmtValue(change), HumanUnit(o.Unit), time.Duration(p.Window))
		if !rs.Active {
			rs.Active, rs.Severity = true, p.Severity
			x.signal(r, true, p.Severity, o.EffectiveAt, msg, detail())
		} else {
			x.sustain(r, rs, o.EffectiveAt, msg, detail())
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
		msg := fmt.Sprintf("%s: %s%s is %.1f SD from this patient's baseline", r.Name, fmtValue(v), HumanUnit(o.Unit), z)
		if !rs.Active {
			rs.Active, rs.Severity = true, p.Severity
			x.signal(r, true, p.Severity, o.EffectiveAt, msg, detail())
		} else {
			x.sustain(r, rs, o.EffectiveAt, msg, detail())
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

// news2 names, in the order of the RCP chart, and the observation parameter each reads.
var news2Names = [...]struct{ name, param string }{
	{"resp_rate", "rr"}, {"spo2", "spo2"}, {"systolic_bp", "sbp"}, {"pulse", "hr"}, {"temperature", "temp"},
}

// news2ParamOf maps a chart name to the observation parameter it reads.
var news2ParamOf = map[string]string{"resp_rate": "rr", "spo2": "spo2", "systolic_bp": "sbp", "pulse": "hr",
	"temperature": "temp", "oxygen": "fio2", "consciousness": "acvpu"}

var bandWords = map[Band]string{BandLow: "low", BandLowMedium: "low–medium (a single parameter scored 3)", BandMedium: "medium", BandHigh: "high"}

// news2Values are the measured values a score used, by chart name (kept as an array so that
// an unchanged score allocates no map).
type news2Values struct {
	n int
	v [8]struct {
		name string
		v    float64
	}
}

func (vs *news2Values) add(name string, v float64) { vs.v[vs.n].name, vs.v[vs.n].v = name, v; vs.n++ }

func (vs *news2Values) fill(s *NEWS2Score) {
	if s.Values == nil {
		s.Values = make(map[string]float64, vs.n)
		for _, v := range vs.v[:vs.n] {
			s.Values[v.name] = v.v
		}
	}
}

// scoreNEWS2 scores the values fresh gives (a parameter's value, and whether it is current at
// the moment scored). ok is false when nothing was measured (no score: the no-data rule
// covers a silent patient) or the input is impossible (an ACVPU code out of range).
func (x *runner) scoreNEWS2(p *NEWS2Params, fresh func(param string) (point, bool)) (score NEWS2Score, missing []string, vals news2Values, ok bool) {
	// A missing parameter scores 0: these values score 0 on either SpO2 scale.
	in := NEWS2Input{SpO2Scale: x.ps.SpO2Scale, RespRate: 16, SpO2: 98, SystolicBP: 120, Pulse: 70, Temperature: 37}
	if in.SpO2Scale == 2 {
		in.SpO2 = 90
	}
	dst := [...]*float64{&in.RespRate, &in.SpO2, &in.SystolicBP, &in.Pulse, &in.Temperature}
	for i, f := range news2Names {
		if pt, ok := fresh(f.param); ok {
			*dst[i] = pt.V
			vals.add(f.name, pt.V)
		} else {
			missing = append(missing, f.name)
		}
	}
	fio2, okC := fresh("fio2")
	flow, okF := fresh("o2flow")
	assumedAir, assumedAlert, documented := false, false, false
	switch {
	case okC || okF:
		in.OnOxygen = okC && fio2.V > 21 || okF && flow.V > 0
		if okC {
			vals.add("fio2", fio2.V)
		}
		if okF {
			vals.add("o2_flow", flow.V)
		}
	case x.ps.OnOxygen != nil:
		in.OnOxygen, documented = *x.ps.OnOxygen, *x.ps.OnOxygen
	case p.AssumeAir:
		assumedAir = true
	default:
		missing = append(missing, "oxygen")
	}
	if c, ok := fresh("acvpu"); ok {
		in.Consciousness = int(math.Round(c.V))
		vals.add("consciousness", c.V)
	} else if p.AssumeAlert {
		assumedAlert = true
	} else {
		missing = append(missing, "consciousness")
	}
	if vals.n == 0 {
		return NEWS2Score{}, nil, vals, false
	}
	score, err := ComputeNEWS2(in)
	if err != nil {
		return NEWS2Score{}, nil, vals, false
	}
	score.AssumedAir, score.AssumedAlert, score.OxygenDocumented = assumedAir, assumedAlert, documented
	score.Partial, score.Missing = len(missing) > 0, missing
	return score, missing, vals, true
}

// news2Message is what a NEWS2 alarm says.
func news2Message(score NEWS2Score, missing []string) string {
	m := fmt.Sprintf("NEWS2 %d, %s clinical response", score.Total, bandWords[score.Band])
	if score.Partial {
		m = fmt.Sprintf("NEWS2 at least %d, %s clinical response (partial: no current %s)", score.Total, bandWords[score.Band], phraseList(missing))
	}
	if score.AssumedAir {
		m += "; oxygen not reported, scored as air"
	}
	if score.OxygenDocumented {
		m += "; oxygen not reported, scored as oxygen as documented"
	}
	return m
}

// news2Window is how long a NEWS2 parameter's value stays current: the ward's charting
// interval for a parameter it charts by hand, else the rule's max_age.
func (x *runner) news2Window(p *NEWS2Params, param string) time.Duration {
	if x.ps.Charted[param] && x.ps.ChartedMaxAge > 0 {
		return x.ps.ChartedMaxAge
	}
	return time.Duration(p.MaxAge)
}

func (x *runner) news2(r *Rule, at time.Time) {
	p := r.NEWS2
	rs := x.ps.rule(r)
	// Score at the newest time a parameter was measured: devices need not be in step.
	for _, pt := range x.ps.Latest {
		if pt.T.After(at) && (x.now.IsZero() || !pt.T.After(x.now)) {
			at = pt.T
		}
	}
	window := func(param string) time.Duration { return x.news2Window(p, param) }
	fresh := func(param string) (point, bool) {
		pt, ok := x.ps.Latest[param]
		return pt, ok && !pt.T.Before(at.Add(-window(param))) && !pt.T.After(at)
	}
	score, missing, vals, ok := x.scoreNEWS2(p, fresh)
	if !ok {
		return
	}
	withValues := func() { vals.fill(&score) }
	if rs.Last == nil || !sameScore(*rs.Last, score) {
		withValues()
		sc := score
		rs.Last = &sc
		x.derived = append(x.derived, Derived{
			Observation: Observation{PatientID: x.pid, Code: CodeNEWS2, Value: float64(score.Total), Unit: "{score}", EffectiveAt: at},
			RuleID:      r.ID, RuleVersion: r.Version, NEWS2: &sc,
		})
	}
	x.news2Incomplete(r, rs, at, missing, window)
	sev := news2Severity(p, score)
	if sev == alarms.SeverityMedium && score.Partial && score.Band == BandLowMedium && x.redCovered(score) {
		// A partial score whose only news is a parameter scoring 3 that its own threshold
		// alarm already reports (raised, or crossing and awaiting its minimum duration):
		// a second alarm for the same value says nothing more. Scored and recorded, not
		// alarmed; a complete score, or a partial one of 5 or more, alarms as usual.
		sev = 0
	}
	msg := func() string { return news2Message(score, missing) }
	detail := func() any {
		withValues()
		return map[string]any{"news2": score, "at": at}
	}
	step := p.WorsenBy
	if step <= 0 {
		step = 2
	}
	switch {
	case sev != 0 && (!rs.Active || sev > rs.Severity): // new or worse: at once
		rs.Active, rs.Severity, rs.LowerSince = true, sev, nil
		v := float64(score.Total)
		rs.Alerted = &v
		x.signal(r, true, sev, at, msg(), detail())
	case !rs.Active:
	case sev == rs.Severity:
		rs.LowerSince = nil
		if rs.Alerted != nil && float64(score.Total) >= *rs.Alerted+float64(step) {
			x.worse(r, rs, at, msg(), detail(), float64(score.Total))
			return
		}
		x.sustain(r, rs, at, msg(), detail())
	case score.Partial:
		// Lower, but only because parameters are missing (a lower bound proves no
		// improvement): the alarm stays as it is until a complete score says otherwise.
		rs.LowerSince = nil
		x.sustain(r, rs, at, msg(), detail())
	default: // better: only once it has held for Hold
		if rs.LowerSince == nil {
			t := at
			rs.LowerSince = &t
		}
		if at.Sub(*rs.LowerSince) < time.Duration(p.Hold) {
			x.sustain(r, rs, at, msg(), detail())
			return
		}
		rs.LowerSince = nil
		v := float64(score.Total)
		rs.Alerted = &v
		if sev == 0 {
			rs.Active, rs.Severity = false, 0
			x.signal(r, false, 0, at, msg(), detail())
			return
		}
		rs.Severity = sev
		x.signal(r, true, sev, at, msg(), detail())
	}
}

// news2RedCodes are the observation codes of each NEWS2 parameter that can score 3.
var news2RedCodes = [...]struct {
	points func(NEWS2Score) int
	codes  []string
}{
	{func(s NEWS2Score) int { return s.RespRate }, []string{CodeRespiratoryRate}},
	{func(s NEWS2Score) int { return s.SpO2 }, []string{CodeSpO2, CodeSpO2Arterial}},
	{func(s NEWS2Score) int { return s.SystolicBP }, []string{CodeSystolicBP}},
	{func(s NEWS2Score) int { return s.Pulse }, []string{CodeHeartRate}},
	{func(s NEWS2Score) int { return s.Temperature }, []string{CodeBodyTemperature}},
	{func(s NEWS2Score) int { return s.Consciousness }, []string{CodeConsciousness}},
}

// redCovered reports whether every parameter of s scoring 3 is reported by a threshold rule
// of its own that is raised at medium severity or more, or is crossing its limit and
// awaiting its minimum duration.
func (x *runner) redCovered(s NEWS2Score) bool {
	any := false
	for _, pr := range news2RedCodes {
		if pr.points(s) != 3 {
			continue
		}
		any = true
		covered := false
		for _, c := range pr.codes {
			for _, r := range x.byCode[c] {
				if r.Kind != KindThreshold {
					continue
				}
				if rs := x.ps.Rules[r.ID]; rs != nil && rs.Version == r.Version &&
					(rs.Active && rs.Severity >= alarms.SeverityMedium || !rs.Active && rs.PendingSince != nil && r.Threshold.Levels[0].Severity >= alarms.SeverityMedium) {
					covered = true
				}
			}
		}
		if !covered {
			return false
		}
	}
	return any
}

// news2Incomplete raises, at low severity, the condition "<rule id>-incomplete" while some
// NEWS2 parameter has had no fresh value for longer than its grace (IncompleteAfter after the
// patient's first NEWS2 parameter; the ward's charted_max_age for a parameter charted by
// hand), and clears it when every parameter is current.
func (x *runner) news2Incomplete(r *Rule, news2 *ruleState, at time.Time, missing []string, window func(string) time.Duration) {
	if len(missing) == 0 && !news2.Incomplete {
		return // complete, and the condition is not raised: nothing to do
	}
	inc := &Rule{ID: r.ID + "-incomplete", Version: r.Version, Name: r.Name + " incomplete", Kind: KindNEWS2, lastDisabled: r.lastDisabled}
	rs := x.ps.rule(inc)
	grace := time.Duration(r.NEWS2.IncompleteAfter)
	if grace <= 0 {
		grace = 10 * time.Minute
	}
	var overdue []string
	for _, name := range missing {
		g := grace
		if param := news2ParamOf[name]; x.ps.Charted[param] {
			g = window(param)
		}
		if !x.ps.FirstSeen.IsZero() && at.Sub(x.ps.FirstSeen) >= g {
			overdue = append(overdue, name)
		}
	}
	news2.Incomplete = len(overdue) > 0
	if len(overdue) == 0 {
		if rs.Active {
			rs.Active, rs.Severity = false, 0
			x.signal(inc, false, 0, at, "NEWS2 complete again", nil)
		}
		return
	}
	msg := "NEWS2 incomplete: no current " + phraseList(overdue)
	detail := map[string]any{"missing": overdue, "at": at}
	if !rs.Active {
		rs.Active, rs.Severity = true, alarms.SeverityLow
		x.signal(inc, true, alarms.SeverityLow, at, msg, detail)
		return
	}
	x.sustain(inc, rs, at, msg, detail)
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
		if gap < time.Duration(r.NoData.Silence) {
			continue
		}
		msg := fmt.Sprintf("no data for %s", gap.Truncate(time.Second))
		detail := map[string]any{"last_seen": x.ps.LastSeen, "silence": r.NoData.Silence}
		if !rs.Active {
			rs.Active, rs.Severity = true, r.NoData.Severity
			x.signal(r, true, r.NoData.Severity, now, msg, detail)
		} else {
			x.sustain(r, rs, now, msg, detail)
		}
	}
}
