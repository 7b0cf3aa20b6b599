package rules

import (
	"math"
	"sort"
	"strconv"
	"time"

	"github.com/vigilhealth/vigil/core/alarms"
)

// admit decides which observations o makes the rules act on. A plausible sample is evaluated
// as it is and ends any run of implausible ones of its code. An implausible one (core's
// artifact flag: possible but outside the physiological range) is held while isolated; once
// ArtifactConfirmCount of them span ArtifactConfirmSpan with no plausible sample of the code
// in between, the run is sustained physiology: all its samples are returned (so minimum
// durations count from the first) and later ones of the run are evaluated at once.
func (x *runner) admit(o Observation) []Observation {
	if !o.Artifact {
		delete(x.ps.Suspect, o.Code)
		return []Observation{o}
	}
	s := x.ps.Suspect[o.Code]
	if s == nil {
		s = &suspect{}
		x.ps.Suspect[o.Code] = s
	}
	if s.Confirmed {
		return []Observation{o}
	}
	s.Points = append(s.Points, point{T: o.EffectiveAt, V: o.Value})
	if len(s.Points) > 64 { // a long run at a slow sampling rate: its start is what matters
		s.Points = append(s.Points[:1], s.Points[len(s.Points)-63:]...)
	}
	n := x.opts.artifactCount
	if n <= 0 {
		n = 2
	}
	span := o.EffectiveAt.Sub(s.Points[0].T)
	if len(s.Points) < n || span < x.opts.artifactSpan {
		return nil
	}
	out := make([]Observation, len(s.Points))
	for i, pt := range s.Points {
		v := o
		v.EffectiveAt, v.Value = pt.T, pt.V
		out[i] = v
	}
	s.Points, s.Confirmed = nil, true
	return out
}

// lookback is how far before the oldest late sample its window is re-evaluated.
func lookback(r *Rule) time.Duration {
	switch r.Kind {
	case KindThreshold:
		return 2*time.Duration(r.Threshold.MinDuration) + time.Minute
	case KindRate:
		return time.Duration(r.Rate.Window) + time.Minute
	}
	return 0
}

// maxLookback is the longest lookback of the rules, capped at 20 minutes.
func maxLookback(rules []*Rule) time.Duration {
	var d time.Duration
	for _, r := range rules {
		d = max(d, lookback(r))
	}
	return min(d, 20*time.Minute)
}

// late evaluates samples older than what was already evaluated of their code: threshold and
// rate rules re-run over the stored window the samples fall in (x.hist, which the engine
// loads from History) and raise what that window shows and the running state missed; the
// anomaly rule scores them against the current baseline; a late NEWS2 parameter newer than
// the one held becomes current.
func (x *runner) late(byCode map[string][]*Rule, news2 []*Rule, late []Observation) {
	byC := map[string][]Observation{}
	var codes []string
	for _, o := range late {
		if _, ok := byC[o.Code]; !ok {
			codes = append(codes, o.Code)
		}
		byC[o.Code] = append(byC[o.Code], o)
	}
	sort.Strings(codes)
	rescore := time.Time{}
	for _, code := range codes {
		ls := byC[code]
		series := x.series(code, ls)
		for _, r := range byCode[code] {
			switch r.Kind {
			case KindThreshold, KindRate:
				x.resimulate(r, series, ls[0].EffectiveAt)
			case KindAnomaly:
				for _, o := range ls {
					if !o.Artifact {
						x.anomalyLate(r, o)
					}
				}
			}
		}
		if name, ok := news2Param[code]; ok {
			last := ls[len(ls)-1]
			if cur, ok := x.ps.Latest[name]; (!ok || last.EffectiveAt.After(cur.T)) && !last.Artifact {
				x.ps.Latest[name] = point{T: last.EffectiveAt, V: last.Value}
				if last.EffectiveAt.After(rescore) {
					rescore = last.EffectiveAt
				}
			}
		}
	}
	if !rescore.IsZero() {
		for _, r := range news2 {
			x.news2(r, rescore)
		}
	}
}

// series is the stored window of code around the late samples ls, with ls merged in, in time
// order, one value per time, implausible samples left out unless their run is confirmed.
func (x *runner) series(code string, ls []Observation) []Observation {
	confirmed := x.ps.Suspect[code] != nil && x.ps.Suspect[code].Confirmed
	byT := map[time.Time]Observation{}
	add := func(o Observation) {
		if o.PatientID != x.pid || o.Code != code || math.IsNaN(o.Value) || math.IsInf(o.Value, 0) {
			return
		}
		if o.Artifact && !confirmed {
			return
		}
		byT[o.EffectiveAt] = o
	}
	for _, o := range x.hist {
		add(o)
	}
	for _, o := range ls {
		add(o)
	}
	out := make([]Observation, 0, len(byT))
	for _, o := range byT {
		out = append(out, o)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].EffectiveAt.Before(out[j].EffectiveAt) })
	return out
}

// resimulate re-runs a threshold or rate rule from a fresh memory over series and reconciles
// the patient's state with what it shows from the first late sample on: a condition the
// window holds and the running state missed is raised (and cleared again if the newest
// samples no longer meet it), a worse severity escalates, and a pending minimum duration or
// rate window takes the late samples into account. Late samples never clear a raised
// condition by themselves: in-order samples do.
func (x *runner) resimulate(r *Rule, series []Observation, from time.Time) {
	if len(series) == 0 {
		return
	}
	sim := &runner{pid: x.pid, ps: &patientState{Rules: map[string]*ruleState{}}, sim: true, opts: x.opts}
	for _, o := range series {
		if r.Kind == KindThreshold {
			sim.threshold(r, o)
		} else {
			sim.rate(r, o)
		}
	}
	var peak *alarms.Signal
	for i := range sim.sigs {
		sg := &sim.sigs[i]
		if sg.Raise && !sg.At.Before(from) && (peak == nil || sg.Severity > peak.Severity) {
			peak = sg
		}
	}
	end := sim.ps.Rules[r.ID]
	rs := x.ps.rule(r)
	lateDetail := func(d any) any {
		m, ok := d.(map[string]any)
		if !ok {
			return d
		}
		m["late_samples"] = true
		return m
	}
	switch {
	case !rs.Active && peak != nil && (rs.Cleared == nil || peak.At.After(*rs.Cleared)):
		rs.Active, rs.Severity, rs.LowerSince = true, peak.Severity, nil
		x.signal(r, true, peak.Severity, peak.At, peak.Message+" (late samples)", lateDetail(peak.Detail))
		if end == nil || !end.Active {
			rs.Active, rs.Severity, rs.PendingSince, rs.Alerted = false, 0, nil, nil
			if end != nil {
				rs.PendingSince, rs.Deque = end.PendingSince, end.Deque
			}
			last := series[len(series)-1]
			x.signal(r, false, 0, last.EffectiveAt, r.Name+" cleared (newest samples within the limit)", nil)
			return
		}
		rs.PendingSince, rs.Deque = end.PendingSince, end.Deque
	case !rs.Active && end != nil:
		rs.PendingSince, rs.Deque = end.PendingSince, end.Deque
	case rs.Active && end != nil && end.Active && end.Severity > rs.Severity:
		var last *alarms.Signal
		for i := range sim.sigs {
			if sim.sigs[i].Raise {
				last = &sim.sigs[i]
			}
		}
		rs.Severity = end.Severity
		if last != nil {
			x.signal(r, true, end.Severity, last.At, last.Message+" (late samples)", lateDetail(last.Detail))
		}
	case rs.Active && r.Kind == KindRate && end != nil:
		rs.Deque = end.Deque
	}
}

// anomalyLate scores a late sample against the current baseline (without folding it in, the
// baseline being order-dependent).
func (x *runner) anomalyLate(r *Rule, o Observation) {
	p := r.Anomaly
	rs := x.ps.rule(r)
	if rs.Active || rs.N <= p.Warmup {
		return
	}
	sd := math.Max(math.Sqrt(rs.Var), p.MinStdDev)
	if !(sd > 0) {
		return
	}
	z := (o.Value - rs.Mean) / sd
	if math.Abs(z) > p.Z {
		rs.Active, rs.Severity, rs.Normal = true, p.Severity, 0
		x.signal(r, true, p.Severity, o.EffectiveAt, r.Name+": late sample far from this patient's baseline",
			map[string]any{"code": o.Code, "value": o.Value, "unit": o.Unit, "z": z, "baseline_mean": rs.Mean, "baseline_sd": sd, "at": o.EffectiveAt, "late_samples": true})
	}
}

// HumanUnit is how a UCUM unit is written for a clinician: "Cel" → " °C", "mm[Hg]" →
// " mmHg", "%" → " %", "/min" → "/min", "{score}" → "". The result is appended to a number.
func HumanUnit(ucum string) string {
	switch ucum {
	case "Cel":
		return " °C"
	case "mm[Hg]":
		return " mmHg"
	case "%":
		return " %"
	case "/min":
		return "/min"
	case "L/min":
		return " L/min"
	case "{score}", "":
		return ""
	}
	return " " + ucum
}

// fmtValue writes a measured value as charted: no exponent, at most one decimal.
func fmtValue(v float64) string {
	if v == math.Trunc(v) {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}
