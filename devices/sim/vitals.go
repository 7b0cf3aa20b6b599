package sim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"time"
)

// LOINC codes and UCUM units of the vitals a simulated monitor sends. They are the codes and
// canonical units core's rules know (core/rules/observation.go).
const (
	CodeHeartRate       = "8867-4"  // /min
	CodeSpO2            = "59408-5" // %
	CodeRespiratoryRate = "9279-1"  // /min
	CodeSystolicBP      = "8480-6"  // mm[Hg]
	CodeDiastolicBP     = "8462-4"  // mm[Hg]
	CodeBodyTemperature = "8310-5"  // Cel
	CodeConsciousness   = "80288-4" // ACVPU, {score}: 0 Alert, 1 Confusion, 2 Voice, 3 Pain, 4 Unresponsive
	CodeOxygenFlow      = "3151-8"  // inhaled oxygen flow rate, L/min: 0 = breathing room air
)

// ACVPU levels as sent in CodeConsciousness samples.
const (
	ACVPUAlert        = 0
	ACVPUConfusion    = 1
	ACVPUVoice        = 2
	ACVPUPain         = 3
	ACVPUUnresponsive = 4
)

// Vitals is one set of readings of a bedside monitor.
type Vitals struct {
	HeartRate   float64 // /min
	SpO2        float64 // %
	RespRate    float64 // /min
	Systolic    float64 // mm[Hg]
	Diastolic   float64 // mm[Hg]
	Temperature float64 // Cel
	ACVPU       int     // 0..4
	OxygenFlow  float64 // L/min of supplemental oxygen; 0 = room air (NEWS2 needs to know)
}

// Scenario is what happens to a synthetic patient over the simulation.
type Scenario string

// Scenarios. Each one but Stable is built to make a clinical rule fire in core: NEWS2 for
// sepsis and hypoxia, the heart-rate threshold for bradycardia, artifact flagging for
// artifact, and the no-data rule for offline.
const (
	// Stable: healthy adult vitals with physiological noise (NEWS2 0–1).
	Stable Scenario = "stable"
	// Sepsis: over the ramp, tachycardia (→ ~122/min), tachypnoea (→ ~26/min), fever
	// (→ ~39.3 °C), hypotension (→ ~86 mm Hg systolic), SpO2 → ~93 %, new confusion in the
	// last fifth of the ramp. NEWS2 climbs past 7.
	Sepsis Scenario = "sepsis"
	// Hypoxia: SpO2 falls to ~84 %, respiratory rate rises to ~27/min, heart rate to ~112/min;
	// supplemental oxygen (2 L/min) is started in the last tenth of the ramp.
	Hypoxia Scenario = "hypoxia"
	// Bradycardia: heart rate falls to ~36/min, systolic pressure to ~92 mm Hg.
	Bradycardia Scenario = "bradycardia"
	// Artifact: stable vitals, but about one upload in ten carries one implausible reading
	// (a motion-artefact SpO2 of 30–45 %, a double-counted heart rate above 300/min, a
	// probe-off temperature of 18–22 °C) that core flags as an artefact.
	Artifact Scenario = "artifact"
	// Offline: stable vitals; the device loses its network for a while (Config.OfflineAfter,
	// Config.OfflineFor), keeps measuring into its disk buffer, and delivers the backlog
	// when it comes back. Vigil sees no data meanwhile.
	Offline Scenario = "offline"
	// Mixed assigns the scenarios above to the fleet in a fixed pattern: out of every ten
	// patients, five stable and one of each other scenario. It is the demo's default.
	Mixed Scenario = "mixed"
)

// Scenarios lists the scenarios a patient can follow (Mixed excluded).
var Scenarios = []Scenario{Stable, Sepsis, Hypoxia, Bradycardia, Artifact, Offline}

var mixedPattern = []Scenario{Stable, Sepsis, Stable, Hypoxia, Stable, Bradycardia, Stable, Artifact, Stable, Offline}

// ParseScenario parses a scenario name (case-insensitive).
func ParseScenario(s string) (Scenario, error) {
	sc := Scenario(strings.ToLower(strings.TrimSpace(s)))
	if sc == Mixed {
		return sc, nil
	}
	for _, k := range Scenarios {
		if sc == k {
			return sc, nil
		}
	}
	names := make([]string, 0, len(Scenarios)+1)
	for _, k := range Scenarios {
		names = append(names, string(k))
	}
	names = append(names, string(Mixed))
	return "", fmt.Errorf("unknown scenario %q (want one of %s)", s, strings.Join(names, ", "))
}

// ScenarioFor is the scenario of patient i (0-based) in a fleet running fleet.
func ScenarioFor(fleet Scenario, i int) Scenario {
	if fleet != Mixed {
		return fleet
	}
	return mixedPattern[i%len(mixedPattern)]
}

// Patient is one synthetic patient: a baseline drawn from the seed, a scenario, and the
// state of its physiological noise. Its readings depend only on the seed, the patient's
// index and the tick number, never on wall-clock time, so a run is reproducible.
type Patient struct {
	Index    int
	Scenario Scenario
	Baseline Vitals

	rng   *rand.Rand
	noise [6]float64 // AR(1) deviations of HR, SpO2, RR, SBP, DBP, Temp
}

// NewPatient draws patient i's baseline from seed.
func NewPatient(seed uint64, i int, sc Scenario) *Patient {
	rng := rand.New(rand.NewPCG(seed, uint64(i)*0x9E3779B97F4A7C15+1))
	b := Vitals{
		HeartRate:   clamp(72+rng.NormFloat64()*8, 58, 92),
		SpO2:        clamp(97.5+rng.NormFloat64()*0.8, 96, 99.5),
		RespRate:    clamp(15+rng.NormFloat64()*1.5, 12, 19),
		Systolic:    clamp(122+rng.NormFloat64()*8, 108, 138),
		Diastolic:   clamp(76+rng.NormFloat64()*5, 64, 86),
		Temperature: clamp(36.8+rng.NormFloat64()*0.25, 36.3, 37.3),
		ACVPU:       ACVPUAlert,
	}
	return &Patient{Index: i, Scenario: sc, Baseline: b, rng: rng}
}

// noise standard deviations and AR(1) coefficient per channel.
var (
	noiseSigma = [6]float64{1.2, 0.35, 0.5, 1.8, 1.3, 0.02}
	noisePhi   = 0.85
)

// Next returns the readings at progress p of the scenario's ramp (0 at the start, 1 when the
// scenario has fully developed; values outside are clamped). It advances the noise, so call
// it once per tick, in order.
func (pt *Patient) Next(p float64) Vitals {
	p = smoothstep(clamp(p, 0, 1))
	for i := range pt.noise {
		pt.noise[i] = noisePhi*pt.noise[i] + pt.rng.NormFloat64()*noiseSigma[i]
	}
	t := pt.target(p)
	v := Vitals{
		HeartRate:   t.HeartRate + pt.noise[0],
		SpO2:        t.SpO2 + pt.noise[1],
		RespRate:    t.RespRate + pt.noise[2],
		Systolic:    t.Systolic + pt.noise[3],
		Diastolic:   t.Diastolic + pt.noise[4],
		Temperature: t.Temperature + pt.noise[5],
		ACVPU:       t.ACVPU,
		OxygenFlow:  t.OxygenFlow,
	}
	v = round(v)
	// The draw happens on every tick, whatever the scenario, so that patients of different
	// scenarios with the same seed and index share their noise. Artefacts are possible
	// values (core stores them) outside the plausible range (core flags them).
	u, which, x := pt.rng.Float64(), pt.rng.IntN(3), pt.rng.Float64()
	if pt.Scenario == Artifact && u < 0.1 {
		switch which {
		case 0: // motion artefact on the pulse oximeter
			v.SpO2 = math.Round(30 + 15*x)
		case 1: // double counting of the heart rate
			v.HeartRate = math.Round(305 + 30*x)
		case 2: // temperature probe off the skin
			v.Temperature = math.Round((18+4*x)*10) / 10
		}
	}
	return v
}

// target is where the scenario pulls the vitals at (smoothed) progress p.
func (pt *Patient) target(p float64) Vitals {
	b := pt.Baseline
	to := func(from, goal float64) float64 { return from + p*(goal-from) }
	switch pt.Scenario {
	case Sepsis:
		b.HeartRate = to(b.HeartRate, 122)
		b.RespRate = to(b.RespRate, 26)
		b.Temperature = to(b.Temperature, 39.3)
		b.Systolic = to(b.Systolic, 86)
		b.Diastolic = to(b.Diastolic, 50)
		b.SpO2 = to(b.SpO2, 93)
		if p >= 0.8 {
			b.ACVPU = ACVPUConfusion
		}
	case Hypoxia:
		b.SpO2 = to(b.SpO2, 84)
		b.RespRate = to(b.RespRate, 27)
		b.HeartRate = to(b.HeartRate, 112)
		if p >= 0.9 {
			b.OxygenFlow = 2 // nasal cannula started
		}
	case Bradycardia:
		b.HeartRate = to(b.HeartRate, 36)
		b.Systolic = to(b.Systolic, 92)
	}
	return b
}

// round gives readings the resolution a monitor displays, and keeps them in the ranges a
// sensor can report.
func round(v Vitals) Vitals {
	v.HeartRate = math.Round(clamp(v.HeartRate, 20, 300))
	v.SpO2 = math.Round(clamp(v.SpO2, 0, 100))
	v.RespRate = math.Round(clamp(v.RespRate, 4, 60))
	v.Systolic = math.Round(clamp(v.Systolic, 40, 260))
	v.Diastolic = math.Round(clamp(v.Diastolic, 20, 160))
	v.Temperature = math.Round(clamp(v.Temperature, 25, 43)*10) / 10
	return v
}

// Sample is one reading as the SDK sends it.
type Sample struct {
	Code  string
	Value float64
	Unit  string
}

// Samples returns the readings as coded samples (the seven NEWS2 parameters and the diastolic
// pressure), in a fixed order.
func (v Vitals) Samples() []Sample {
	return []Sample{
		{CodeHeartRate, v.HeartRate, "/min"},
		{CodeSpO2, v.SpO2, "%"},
		{CodeRespiratoryRate, v.RespRate, "/min"},
		{CodeSystolicBP, v.Systolic, "mm[Hg]"},
		{CodeDiastolicBP, v.Diastolic, "mm[Hg]"},
		{CodeBodyTemperature, v.Temperature, "Cel"},
		{CodeConsciousness, float64(v.ACVPU), "{score}"},
		{CodeOxygenFlow, v.OxygenFlow, "L/min"},
	}
}

// NEWS2 is the National Early Warning Score 2 (Royal College of Physicians, 2017; SpO2
// scale 1, room air) of v. The simulator uses it to check that its scenarios are built to
// fire the rules; core computes its own.
func NEWS2(v Vitals) int {
	s := 0
	switch rr := v.RespRate; {
	case rr <= 8:
		s += 3
	case rr <= 11:
		s++
	case rr <= 20:
	case rr <= 24:
		s += 2
	default:
		s += 3
	}
	switch o := v.SpO2; {
	case o <= 91:
		s += 3
	case o <= 93:
		s += 2
	case o <= 95:
		s++
	}
	switch sbp := v.Systolic; {
	case sbp <= 90:
		s += 3
	case sbp <= 100:
		s += 2
	case sbp <= 110:
		s++
	case sbp <= 219:
	default:
		s += 3
	}
	switch hr := v.HeartRate; {
	case hr <= 40:
		s += 3
	case hr <= 50:
		s++
	case hr <= 90:
	case hr <= 110:
		s++
	case hr <= 130:
		s += 2
	default:
		s += 3
	}
	if v.ACVPU != ACVPUAlert {
		s += 3
	}
	if v.OxygenFlow > 0 {
		s += 2
	}
	switch t := v.Temperature; {
	case t <= 35.0:
		s += 3
	case t <= 36.0:
		s++
	case t <= 38.0:
	case t <= 39.0:
		s++
	default:
		s += 2
	}
	return s
}

func clamp(x, lo, hi float64) float64 { return math.Max(lo, math.Min(hi, x)) }

func smoothstep(x float64) float64 { return x * x * (3 - 2*x) }

// progress is the fraction of the ramp elapsed at offset since the start.
func progress(offset, ramp time.Duration) float64 {
	if ramp <= 0 {
		return 1
	}
	return float64(offset) / float64(ramp)
}
