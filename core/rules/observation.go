package rules

import (
	"github.com/vigilhealth/vigil/core/obs"
)

// Observation is one validated, normalized measurement: a known LOINC code, its value in the
// canonical UCUM unit of that code (the one type of package core/obs, which core stores and
// hands to the engine).
type Observation = obs.Observation

// LOINC codes the rules know, with the canonical unit core normalizes each one to.
const (
	CodeRespiratoryRate = "9279-1"  // respiratory rate, /min
	CodeSpO2            = "59408-5" // oxygen saturation by pulse oximetry, %
	CodeSpO2Arterial    = "2708-6"  // oxygen saturation in arterial blood, % (accepted for NEWS2 too)
	CodeInhaledO2Conc   = "3150-0"  // inhaled oxygen concentration (FiO2), %: > 21 means supplemental oxygen
	CodeInhaledO2Flow   = "3151-8"  // inhaled oxygen flow rate, L/min: > 0 means supplemental oxygen
	CodeSystolicBP      = "8480-6"  // systolic blood pressure, mm[Hg]
	CodeDiastolicBP     = "8462-4"  // diastolic blood pressure, mm[Hg]
	CodeHeartRate       = "8867-4"  // heart rate, /min
	CodeBodyTemperature = "8310-5"  // body temperature, Cel
	// CodeConsciousness is the level of consciousness on the ACVPU scale, value encoded as
	// 0 Alert, 1 new Confusion, 2 Voice, 3 Pain, 4 Unresponsive (unit "{score}").
	CodeConsciousness = "80288-4"
	// CodeNEWS2 is the NEWS2 total score (unit "{score}"), the derived observation this
	// package produces.
	CodeNEWS2 = "88330-6"
)

// ACVPU levels as encoded in CodeConsciousness observations.
const (
	ACVPUAlert        = 0
	ACVPUConfusion    = 1
	ACVPUVoice        = 2
	ACVPUPain         = 3
	ACVPUUnresponsive = 4
)
