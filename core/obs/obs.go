// Package obs is what the clinical core stores and the rules evaluate: the Observation (a
// validated, normalized measurement), and the Handoff, the one explicit queue by which the
// observations of every committed upload reach the rules engine. Core (the producer) and
// core/rules (the consumer) both import this package; neither imports the other.
package obs

import (
	"time"

	"github.com/google/uuid"
)

// Observation is a validated, normalized measurement as stored: a known LOINC code and its
// value in the canonical UCUM unit of that code.
type Observation struct {
	PatientID   uuid.UUID `json:"patient_id"`
	Code        string    `json:"code"`  // LOINC code, e.g. "8867-4" (heart rate)
	Value       float64   `json:"value"` // in Unit
	Unit        string    `json:"unit"`  // canonical UCUM unit of Code, e.g. "/min", "Cel", "mm[Hg]", "%"
	EffectiveAt time.Time `json:"effective_at"`
	// Artifact: possible but outside the physiological plausibility range; stored flagged,
	// and the rules do not act on its value (only note that the device is not silent).
	Artifact bool      `json:"artifact"`
	UploadID uuid.UUID `json:"upload_id"`           // the upload (= its audit event id) that carried it
	DeviceID string    `json:"device_id,omitempty"` // registry id of the device ("" for manual entry)
}

// Status is the FHIR-style status of a stored observation: always "final".
func (o Observation) Status() string { return "final" }

// Committed is one patient's observations of one commit, newly stored, in ascending
// effective time: the unit of the hand-off.
type Committed struct {
	PatientID    uuid.UUID
	Observations []Observation
}
