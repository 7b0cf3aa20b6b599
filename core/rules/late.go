package rules

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
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
	case KindNEWS2:
		// A past moment is re-scored from the values of the window (older ones count as
		// missing: the score is then a lower bound).
		return maxLateHorizon
	}
	return 0
}

// maxLateHorizon is the longest look-back of any rule, and of Config.LateHorizon.
const maxLateHorizon = 20 * time.Minute

// maxLookback is the longest lookback of the rules, capped at 20 minutes.
func maxLookback(rules []*Rule) time.Duration {
	var d time.Duration
	for _, r := range rules {
		d = max(d, lookback(r))
	}
	return min(d, maxLateHorizon)
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
	if len(news2) > 0 {
		x.news2Past(news2, late)
	}
	if !rescore.IsZero() {
		for _, r := range news2 {
			x.news2(r, rescore)
		}
	}
}

// news2Past re-scores NEWS2 at each past moment a late sample of one of its parameters was
// taken, from the values current at that moment (the stored window x.hist, the late samples,
// and a parameter's current value if it was measured before the moment; a value older than
// the window counts as missing, so the score is a lower bound). Each different score is
// recorded (rescored_late); a score whose response is worse than the alarm's raises it at
// that severity ("late samples"), unless the alarm was cleared after that moment (the
// episode is over and was seen). What follows is the current score's business (a lower
// complete score resolves after the rule's hold, as usual).
func (x *runner) news2Past(news2 []*Rule, late []Observation) {
	series := map[string][]point{} // by NEWS2 parameter, in time order
	add := func(o Observation) {
		name, ok := news2Param[o.Code]
		if !ok || o.PatientID != x.pid || o.Artifact && !(x.ps.Suspect[o.Code] != nil && x.ps.Suspect[o.Code].Confirmed) ||
			math.IsNaN(o.Value) || math.IsInf(o.Value, 0) {
			return
		}
		series[name] = append(series[name], point{T: o.EffectiveAt, V: o.Value})
	}
	var moments []time.Time
	for _, o := range x.hist {
		add(o)
	}
	for _, o := range late {
		if _, ok := news2Param[o.Code]; ok && !o.Artifact {
			add(o)
			moments = append(moments, o.EffectiveAt)
		}
	}
	if len(moments) == 0 {
		return
	}
	for name := range series {
		ps := series[name]
		sort.SliceStable(ps, func(i, j int) bool { return ps[i].T.Before(ps[j].T) })
	}
	sort.Slice(moments, func(i, j int) bool { return moments[i].Before(moments[j]) })
	for _, r := range news2 {
		p := r.NEWS2
		var last *NEWS2Score
		for i, at := range moments {
			if i > 0 && at.Equal(moments[i-1]) {
				continue
			}
			fresh := func(param string) (point, bool) {
				ps := series[param]
				k := sort.Search(len(ps), func(k int) bool { return ps[k].T.After(at) }) // first after at
				var pt point
				ok := false
				if k > 0 {
					pt, ok = ps[k-1], true
				}
				if cur, had := x.ps.Latest[param]; had && !cur.T.After(at) && (!ok || cur.T.After(pt.T)) {
					pt, ok = cur, true
				}
				return pt, ok && !pt.T.Before(at.Add(-x.news2Window(p, param)))
			}
			score, missing, vals, ok := x.scoreNEWS2(p, fresh)
			if !ok {
				continue
			}
			score.RescoredLate = true
			if last == nil || !sameScore(*last, score) {
				vals.fill(&score)
				sc := score
				last = &sc
				x.derived = append(x.derived, Derived{
					Observation: Observation{PatientID: x.pid, Code: CodeNEWS2, Value: float64(score.Total), Unit: "{score}", EffectiveAt: at},
					RuleID:      r.ID, RuleVersion: r.Version, NEWS2: &sc,
				})
			}
			rs := x.ps.rule(r)
			sev := news2Severity(p, score)
			if sev == 0 || rs.Active && sev <= rs.Severity || !rs.Active && rs.Cleared != nil && !at.After(*rs.Cleared) {
				continue
			}
			rs.Active, rs.Severity, rs.LowerSince = true, sev, nil
			v := float64(score.Total)
			rs.Alerted = &v
			vals.fill(&score)
			x.signal(r, true, sev, at, news2Message(score, missing)+" (late samples)",
				map[string]any{"news2": score, "at": at, "late_samples": true})
		}
	}
}

// lateData raises the technical condition "late-data" for samples beyond the late horizon
// (Config.LateHorizon behind what was evaluated of their code): they are stored and charted,
// but no rule re-runs their window. The alarm names each code's samples — how many, their
// range in human units, when they were taken and how late they came — with the code
// late_beyond_lookback, and the threshold and rate conditions the late samples meet by
// themselves (the alarm's priority is the highest of them, at least medium), so that a
// clinician reviews the chart. It opens, or re-triggers the open one with the new samples; it
// never clears by itself (resolve it by hand once reviewed).
func (x *runner) lateData(byCode map[string][]*Rule, obs []Observation) {
	type span struct {
		code, unit string
		n          int
		lo, hi     float64
		from, to   time.Time
		behind     time.Duration
	}
	by := map[string]*span{}
	var codes []string
	for _, o := range obs {
		s := by[o.Code]
		if s == nil {
			s = &span{code: o.Code, unit: o.Unit, lo: o.Value, hi: o.Value, from: o.EffectiveAt, to: o.EffectiveAt}
			by[o.Code] = s
			codes = append(codes, o.Code)
		}
		s.n++
		s.lo, s.hi = min(s.lo, o.Value), max(s.hi, o.Value)
		if o.EffectiveAt.Before(s.from) {
			s.from = o.EffectiveAt
		}
		if o.EffectiveAt.After(s.to) {
			s.to = o.EffectiveAt
		}
		if d := x.ps.Codes[o.Code].Sub(o.EffectiveAt); d > s.behind {
			s.behind = d
		}
	}
	sort.Strings(codes)
	var parts []string
	var samples []map[string]any
	for _, c := range codes {
		s := by[c]
		name := paramWords[c]
		if name == "" {
			name = c
		}
		rng := humanText(s.lo, s.unit)
		if s.hi != s.lo {
			rng = fmtValue(s.lo) + "–" + humanText(s.hi, s.unit)
		}
		parts = append(parts, fmt.Sprintf("%s %s (%d samples, %s–%s UTC, up to %s behind)", name, rng, s.n,
			s.from.UTC().Format("15:04:05"), s.to.UTC().Format("15:04:05"), s.behind.Round(time.Second)))
		samples = append(samples, map[string]any{"code": c, "unit": s.unit, "count": s.n, "min": s.lo, "max": s.hi,
			"from": s.from, "to": s.to, "behind_seconds": s.behind.Seconds()})
	}
	// What the late samples show by themselves (their own run, without the stored window
	// around them): the threshold and rate conditions they meet, at what priority. The
	// late-data alarm takes the highest of them (at least medium).
	sev := alarms.SeverityMedium
	var shows []string
	for _, c := range codes {
		var own []Observation
		for _, o := range obs {
			if o.Code == c && (!o.Artifact || x.ps.Suspect[c] != nil && x.ps.Suspect[c].Confirmed) {
				own = append(own, o)
			}
		}
		sort.SliceStable(own, func(i, j int) bool { return own[i].EffectiveAt.Before(own[j].EffectiveAt) })
		for _, r := range byCode[c] {
			if r.Kind != KindThreshold && r.Kind != KindRate {
				continue
			}
			sim := &runner{pid: x.pid, ps: &patientState{Rules: map[string]*ruleState{}}, sim: true, opts: x.opts}
			for _, o := range own {
				if r.Kind == KindThreshold {
					sim.threshold(r, o)
				} else {
					sim.rate(r, o)
				}
			}
			var peak alarms.Severity
			for _, sg := range sim.sigs {
				if sg.Raise && sg.Severity > peak {
					peak = sg.Severity
				}
			}
			if peak > 0 {
				shows = append(shows, fmt.Sprintf("%s (%s priority)", r.Name, peak))
				sev = max(sev, peak)
			}
		}
	}
	msg := fmt.Sprintf("Samples that arrived more than %s late were not evaluated by the alarm rules: %s", x.opts.lateHorizon, strings.Join(parts, "; "))
	if len(shows) > 0 {
		msg += "; by themselves they meet " + strings.Join(shows, ", ")
	}
	msg += "; review the chart"
	r := &Rule{ID: LateDataRule, Version: 1, Name: "Late samples not evaluated", Kind: KindNoData}
	rs := x.ps.rule(r)
	rs.Active, rs.Severity = true, sev
	x.signal(r, true, sev, obs[len(obs)-1].EffectiveAt, msg,
		map[string]any{"code": CodeLateBeyondLookback, "samples": samples, "horizon": x.opts.lateHorizon.String(), "conditions": shows})
}

// LateDataRule is the id of the technical condition raised for samples beyond the late
// horizon (Config.LateHorizon); CodeLateBeyondLookback is its detail's code.
const (
	LateDataRule           = "late-data"
	CodeLateBeyondLookback = "late_beyond_lookback"
)

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
