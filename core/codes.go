package core

import (
	"math"
	"sort"
)

// LOINC codes known to core. A sample with any other code is rejected (CodeUnknownCode).
const (
	LOINCHeartRate       = "8867-4"  // Heart rate, /min
	LOINCRespiratoryRate = "9279-1"  // Respiratory rate, /min
	LOINCSpO2            = "59408-5" // Oxygen saturation in arterial blood by pulse oximetry, %
	LOINCSpO2Arterial    = "2708-6"  // Oxygen saturation in arterial blood, %
	LOINCBodyTemperature = "8310-5"  // Body temperature, Cel
	LOINCSystolicBP      = "8480-6"  // Systolic blood pressure, mm[Hg]
	LOINCDiastolicBP     = "8462-4"  // Diastolic blood pressure, mm[Hg]
	LOINCMeanBP          = "8478-0"  // Mean blood pressure, mm[Hg]
	LOINCOxygenFlow      = "3151-8"  // Inhaled oxygen flow rate, L/min (0 = room air)
	LOINCFiO2            = "3150-0"  // Inhaled oxygen concentration, % (21 = room air)
	LOINCConsciousness   = "80288-4" // Level of consciousness, ACVPU ordinal (see ACVPU), unit {score}
	LOINCGlucose         = "2339-0"  // Glucose [Mass/volume] in Blood, mg/dL
	LOINCBodyWeight      = "29463-7" // Body weight, kg
)

// ACVPU ordinal values carried by LOINCConsciousness samples (unit "{score}"): NEWS2 scores
// Alert 0 and every other level 3.
const (
	ACVPUAlert        = 0 // A
	ACVPUConfusion    = 1 // C: new confusion
	ACVPUVoice        = 2 // V: responds to voice
	ACVPUPain         = 3 // P: responds to pain
	ACVPUUnresponsive = 4 // U
)

// Range is a closed interval of values in a code's canonical unit.
type Range struct{ Min, Max float64 }

// Contains reports whether v lies in [Min, Max].
func (r Range) Contains(v float64) bool { return v >= r.Min && v <= r.Max }

// CodeInfo describes one known LOINC code: its canonical UCUM unit, the units accepted on
// input with their conversion to canonical, and two ranges in canonical units:
//   - Possible: values outside it cannot be a measurement of a living patient (or of the
//     quantity at all); such a sample is rejected (CodeImpossibleValue).
//   - Plausible: the physiological range; a value that is possible but outside it is stored
//     flagged as an artifact (sensor off, motion), and the rules do not act on it.
type CodeInfo struct {
	Code      string
	Display   string
	Unit      string // canonical UCUM unit
	Possible  Range
	Plausible Range
	// Integer codes accept integral values only (the ACVPU ordinal).
	Integer bool
	units   map[string]func(float64) float64
}

// Units returns the UCUM units accepted for the code, sorted.
func (c CodeInfo) Units() []string {
	out := make([]string, 0, len(c.units))
	for u := range c.units {
		out = append(out, u)
	}
	sort.Strings(out)
	return out
}

// Convert converts v from unit to the canonical unit; ok is false for a unit not accepted.
func (c CodeInfo) Convert(v float64, unit string) (float64, bool) {
	f, ok := c.units[unit]
	if !ok {
		return 0, false
	}
	return f(v), true
}

func identity(v float64) float64 { return v }

// round6 removes binary noise from conversions so that stored values compare equal whatever
// unit they came in (98.6 [degF] and 37 Cel are the same observation).
func round6(v float64) float64 { return math.Round(v*1e6) / 1e6 }

const mmHgPerKPa = 7.500615758456563 // 1 kPa = 1000/133.322387415 mm[Hg]

var catalog = map[string]CodeInfo{}

func addCode(c CodeInfo) { catalog[c.Code] = c }

func init() {
	perMin := map[string]func(float64) float64{"/min": identity, "{beats}/min": identity, "{breaths}/min": identity}
	pressure := map[string]func(float64) float64{
		"mm[Hg]": identity,
		"kPa":    func(v float64) float64 { return round6(v * mmHgPerKPa) },
	}
	addCode(CodeInfo{Code: LOINCHeartRate, Display: "Heart rate", Unit: "/min",
		Possible: Range{0, 350}, Plausible: Range{20, 300}, units: perMin})
	addCode(CodeInfo{Code: LOINCRespiratoryRate, Display: "Respiratory rate", Unit: "/min",
		Possible: Range{0, 120}, Plausible: Range{3, 80}, units: perMin})
	saturation := map[string]func(float64) float64{
		"%": identity,
		"1": func(v float64) float64 { return round6(v * 100) }, // a fraction
	}
	addCode(CodeInfo{Code: LOINCSpO2, Display: "Oxygen saturation by pulse oximetry", Unit: "%",
		Possible: Range{0, 100}, Plausible: Range{50, 100}, units: saturation})
	addCode(CodeInfo{Code: LOINCSpO2Arterial, Display: "Oxygen saturation in arterial blood", Unit: "%",
		Possible: Range{0, 100}, Plausible: Range{50, 100}, units: saturation})
	addCode(CodeInfo{Code: LOINCBodyTemperature, Display: "Body temperature", Unit: "Cel",
		Possible: Range{10, 47}, Plausible: Range{25, 44}, units: map[string]func(float64) float64{
			"Cel":    identity,
			"[degF]": func(v float64) float64 { return round6((v - 32) * 5 / 9) },
			"K":      func(v float64) float64 { return round6(v - 273.15) },
		}})
	addCode(CodeInfo{Code: LOINCSystolicBP, Display: "Systolic blood pressure", Unit: "mm[Hg]",
		Possible: Range{0, 400}, Plausible: Range{40, 300}, units: pressure})
	addCode(CodeInfo{Code: LOINCDiastolicBP, Display: "Diastolic blood pressure", Unit: "mm[Hg]",
		Possible: Range{0, 300}, Plausible: Range{15, 200}, units: pressure})
	addCode(CodeInfo{Code: LOINCMeanBP, Display: "Mean blood pressure", Unit: "mm[Hg]",
		Possible: Range{0, 350}, Plausible: Range{25, 250}, units: pressure})
	addCode(CodeInfo{Code: LOINCOxygenFlow, Display: "Inhaled oxygen flow rate", Unit: "L/min",
		Possible: Range{0, 80}, Plausible: Range{0, 70}, units: map[string]func(float64) float64{
			"L/min":  identity,
			"mL/min": func(v float64) float64 { return round6(v / 1000) },
		}})
	addCode(CodeInfo{Code: LOINCFiO2, Display: "Inhaled oxygen concentration", Unit: "%",
		Possible: Range{0, 100}, Plausible: Range{21, 100}, units: map[string]func(float64) float64{
			"%": identity,
			"1": func(v float64) float64 { return round6(v * 100) },
		}})
	addCode(CodeInfo{Code: LOINCConsciousness, Display: "Level of consciousness (ACVPU)", Unit: "{score}",
		Possible: Range{ACVPUAlert, ACVPUUnresponsive}, Plausible: Range{ACVPUAlert, ACVPUUnresponsive},
		Integer: true, units: map[string]func(float64) float64{"{score}": identity}})
	addCode(CodeInfo{Code: LOINCGlucose, Display: "Glucose in blood", Unit: "mg/dL",
		Possible: Range{0, 3000}, Plausible: Range{10, 1500}, units: map[string]func(float64) float64{
			"mg/dL":  identity,
			"mmol/L": func(v float64) float64 { return round6(v * 18.0156) }, // molar mass 180.156 g/mol
		}})
	addCode(CodeInfo{Code: LOINCBodyWeight, Display: "Body weight", Unit: "kg",
		Possible: Range{0.2, 700}, Plausible: Range{0.3, 400}, units: map[string]func(float64) float64{
			"kg":      identity,
			"g":       func(v float64) float64 { return round6(v / 1000) },
			"[lb_av]": func(v float64) float64 { return round6(v * 0.45359237) },
		}})
}

// LookupCode returns the description of a known LOINC code.
func LookupCode(code string) (CodeInfo, bool) {
	c, ok := catalog[code]
	return c, ok
}

// Codes returns every known code, sorted.
func Codes() []CodeInfo {
	out := make([]CodeInfo, 0, len(catalog))
	for _, c := range catalog {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Code < out[j].Code })
	return out
}
