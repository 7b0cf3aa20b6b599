package fhir

import (
	"errors"
	"fmt"
	"sort"
	"time"

	m "github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// ErrUnknownCode: a sample's code is not one the mapping knows.
var ErrUnknownCode = errors.New("fhir: unknown observation code")

// codeInfo is how one LOINC code of core is rendered.
type codeInfo struct {
	display  string
	category string // observation-category code
	profile  string // FHIR R4 vital-signs profile of the code ("" for none)
	extra    []m.Coding
}

// The codes of core.codes.go. SpO2 by pulse oximetry also carries 2708-6, the code the R4
// oxygensat profile requires.
var codes = map[string]codeInfo{
	"8867-4":  {"Heart rate", "vital-signs", "http://hl7.org/fhir/StructureDefinition/heartrate", nil},
	"9279-1":  {"Respiratory rate", "vital-signs", "http://hl7.org/fhir/StructureDefinition/resprate", nil},
	"59408-5": {"Oxygen saturation in Arterial blood by Pulse oximetry", "vital-signs", "http://hl7.org/fhir/StructureDefinition/oxygensat", []m.Coding{coding(LOINC, "2708-6", "Oxygen saturation in Arterial blood")}},
	"2708-6":  {"Oxygen saturation in Arterial blood", "vital-signs", "http://hl7.org/fhir/StructureDefinition/oxygensat", nil},
	"8310-5":  {"Body temperature", "vital-signs", "http://hl7.org/fhir/StructureDefinition/bodytemp", nil},
	"8480-6":  {"Systolic blood pressure", "vital-signs", "", nil},
	"8462-4":  {"Diastolic blood pressure", "vital-signs", "", nil},
	"8478-0":  {"Mean blood pressure", "vital-signs", "", nil},
	"3151-8":  {"Inhaled oxygen flow rate", "vital-signs", "", nil},
	"3150-0":  {"Inhaled oxygen concentration", "vital-signs", "", nil},
	"29463-7": {"Body weight", "vital-signs", "http://hl7.org/fhir/StructureDefinition/bodyweight", nil},
	"80288-4": {"Level of consciousness (ACVPU)", "exam", "", nil},
	"2339-0":  {"Glucose [Mass/volume] in Blood", "laboratory", "", nil},
}

// Sample is one stored observation (core's normalized sample: canonical UCUM unit).
type Sample struct {
	ID          string
	PatientID   string
	DeviceID    string
	EncounterID string
	Code        string // LOINC
	Value       float64
	Unit        string // UCUM
	Time        time.Time
	// Artifact: stored flagged as outside the physiological range.
	Artifact bool
}

func category(code string) []m.CodeableConcept {
	display := map[string]string{"vital-signs": "Vital Signs", "exam": "Exam", "laboratory": "Laboratory", "survey": "Survey"}[code]
	return []m.CodeableConcept{concept(ObsCategory, code, display)}
}

func quantity(v float64, unit string) *m.Quantity {
	return &m.Quantity{Value: decimal(v), Unit: &unit, System: ptr(UCUM), Code: &unit}
}

// RenderObservation renders one sample. Vital signs conform to the FHIR vital-signs profile
// (category vital-signs, LOINC code, UCUM quantity, effectiveDateTime, subject) and name
// it and their specific profile (heartrate, resprate, …) in meta.profile.
func RenderObservation(s Sample) (m.Observation, error) {
	ci, ok := codes[s.Code]
	if !ok {
		return m.Observation{}, fmt.Errorf("%w: %q", ErrUnknownCode, s.Code)
	}
	o := m.Observation{Id: &s.ID, Status: m.ObservationStatusFinal, Category: category(ci.category),
		Code:    m.CodeableConcept{Coding: append([]m.Coding{coding(LOINC, s.Code, ci.display)}, ci.extra...), Text: &ci.display},
		Subject: ref("Patient", s.PatientID), Encounter: ref("Encounter", s.EncounterID),
		EffectiveDateTime: ptr(instant(s.Time)), ValueQuantity: quantity(s.Value, s.Unit), Device: ref("Device", s.DeviceID)}
	if ci.category == "vital-signs" {
		o.Meta = &m.Meta{Profile: []string{VitalSignsProf}}
		if ci.profile != "" {
			o.Meta.Profile = append(o.Meta.Profile, ci.profile)
		}
	}
	if s.Artifact {
		o.Note = []m.Annotation{{Text: "Possible artifact: the value is outside the physiological range; clinical rules did not act on it."}}
	}
	return o, nil
}

// BloodPressure is one blood-pressure measurement: systolic and diastolic (and mean when
// measured) taken together.
type BloodPressure struct {
	ID          string
	PatientID   string
	DeviceID    string
	EncounterID string
	Time        time.Time
	Systolic    float64 // mm[Hg]
	Diastolic   float64 // mm[Hg]
	Mean        *float64
}

// RenderBloodPressure renders the blood-pressure panel (LOINC 85354-9, FHIR bp profile):
// no value of its own, one component per pressure.
func RenderBloodPressure(b BloodPressure) m.Observation {
	comp := func(code, display string, v float64) m.ObservationComponent {
		// Coding only: the bp profile's component slices match the code by pattern.
		return m.ObservationComponent{Code: m.CodeableConcept{Coding: []m.Coding{coding(LOINC, code, display)}}, ValueQuantity: quantity(v, "mm[Hg]")}
	}
	o := m.Observation{Id: &b.ID, Meta: &m.Meta{Profile: []string{VitalSignsProf, BPProf}}, Status: m.ObservationStatusFinal,
		Category: category("vital-signs"), Code: concept(LOINC, "85354-9", "Blood pressure panel with all children optional"),
		Subject: ref("Patient", b.PatientID), Encounter: ref("Encounter", b.EncounterID), EffectiveDateTime: ptr(instant(b.Time)),
		Device: ref("Device", b.DeviceID),
		Component: []m.ObservationComponent{comp("8480-6", "Systolic blood pressure", b.Systolic),
			comp("8462-4", "Diastolic blood pressure", b.Diastolic)}}
	if b.Mean != nil {
		o.Component = append(o.Component, comp("8478-0", "Mean blood pressure", *b.Mean))
	}
	return o
}

// SNOMED CT (UK edition) codes of the Royal College of Physicians' NEWS2, as NHS England's
// FHIR profiles use them.
const (
	SNOMED      = "http://snomed.info/sct"
	NEWS2Total  = "1104051000000101"
	news2Suffix = " (Royal College of Physicians NEWS2)"
)

// NEWS2 parameters and their SNOMED CT score codes.
var news2Params = map[string][2]string{
	"respiration_rate": {"1104301000000104", "Respiration rate score"},
	"spo2_scale1":      {"1104311000000102", "Oxygen saturation scale 1 score"},
	"spo2_scale2":      {"1104321000000108", "Oxygen saturation scale 2 score"},
	"air_or_oxygen":    {"1104331000000105", "Air or oxygen score"},
	"systolic_bp":      {"1104341000000101", "Systolic blood pressure score"},
	"pulse":            {"1104351000000103", "Pulse score"},
	"consciousness":    {"1104361000000100", "Consciousness score"},
	"temperature":      {"1104371000000107", "Temperature score"},
}

// NEWS2 is a NEWS2 score and how it was derived.
type NEWS2 struct {
	ID          string
	PatientID   string
	EncounterID string
	Time        time.Time
	Score       int
	// Points per parameter: respiration_rate, spo2_scale1 or spo2_scale2, air_or_oxygen,
	// systolic_bp, pulse, consciousness, temperature.
	Points map[string]int
	// DerivedFrom are the ids of the Observations scored.
	DerivedFrom []string
}

// RenderNEWS2 renders the score as a derived Observation (category survey, SNOMED CT
// NEWS2 total score, valueQuantity {score}), one component per parameter's points, and
// derivedFrom the observations it scored.
func RenderNEWS2(n NEWS2) (m.Observation, error) {
	o := m.Observation{Id: &n.ID, Status: m.ObservationStatusFinal, Category: category("survey"),
		Code:    concept(SNOMED, NEWS2Total, "Royal College of Physicians NEWS2 (National Early Warning Score 2) total score"),
		Subject: ref("Patient", n.PatientID), Encounter: ref("Encounter", n.EncounterID), EffectiveDateTime: ptr(instant(n.Time)),
		ValueQuantity: quantity(float64(n.Score), "{score}")}
	for _, p := range []string{"respiration_rate", "spo2_scale1", "spo2_scale2", "air_or_oxygen", "systolic_bp", "pulse", "consciousness", "temperature"} {
		pts, ok := n.Points[p]
		if !ok {
			continue
		}
		c := news2Params[p]
		o.Component = append(o.Component, m.ObservationComponent{Code: concept(SNOMED, c[0], c[1]+news2Suffix), ValueQuantity: quantity(float64(pts), "{score}")})
	}
	if len(o.Component) != len(n.Points) {
		return m.Observation{}, fmt.Errorf("%w: NEWS2 parameter not known in %v", ErrUnknownCode, n.Points)
	}
	for _, id := range n.DerivedFrom {
		o.DerivedFrom = append(o.DerivedFrom, *ref("Observation", id))
	}
	return o, nil
}

// Alarm is one alarm of a patient.
type Alarm struct {
	ID         string
	PatientID  string
	Rule       string // rule id, e.g. "news2_high"
	RuleName   string // display
	Severity   string // low, medium, high, critical
	State      string // active, acknowledged, resolved
	OpenedAt   time.Time
	ResolvedAt time.Time // zero while open
}

var flagPriority = map[string][2]string{"low": {"PL", "Low priority"}, "medium": {"PM", "Medium priority"},
	"high": {"PH", "High priority"}, "critical": {"PH", "High priority"}}

// RenderFlag renders an alarm as a Flag (see docs/interop.md for why Flag, not
// DetectedIssue): active while the alarm is open (active or acknowledged), inactive once
// resolved, period from opening to resolution, code the rule, priority from the severity
// (FHIR's flag-priority extension), author the Vigil rule engine.
func RenderFlag(a Alarm) m.Flag {
	st := m.FlagStatusActive
	period := &m.Period{Start: ptr(instant(a.OpenedAt))}
	if a.State == "resolved" {
		st = m.FlagStatusInactive
		if !a.ResolvedAt.IsZero() {
			period.End = ptr(instant(a.ResolvedAt))
		}
	}
	name := a.RuleName
	if name == "" {
		name = a.Rule
	}
	f := m.Flag{Id: &a.ID, Status: st, Category: []m.CodeableConcept{concept("http://terminology.hl7.org/CodeSystem/flag-category", "clinical", "Clinical")},
		Code: concept(AlarmRuleSystem, a.Rule, name), Subject: *ref("Patient", a.PatientID), Period: period,
		Author: &m.Reference{Display: ptr("Vigil clinical rules")}}
	if p, ok := flagPriority[a.Severity]; ok {
		cc := concept("http://terminology.hl7.org/CodeSystem/flag-priority-code", p[0], p[1])
		f.Extension = []m.Extension{{Url: ExtFlagPriority, ValueCodeableConcept: &cc}}
	}
	return f
}

// Codes returns the LOINC codes the mapping renders, sorted.
func Codes() []string {
	out := make([]string, 0, len(codes))
	for c := range codes {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// KnownCode reports whether the mapping renders the LOINC code.
func KnownCode(code string) bool { _, ok := codes[code]; return ok }

// CategoryOf is the observation-category code of a LOINC code ("" for an unknown code).
func CategoryOf(code string) string { return codes[code].category }
