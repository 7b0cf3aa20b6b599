// Package visibility holds the filter of which patients a caller may see, as a plain value
// that the caller's identity layer (auth) computes and domain packages apply in SQL. It sits
// beside audit.Actor, the other half of "who is asking", so that domain packages receive
// identity without importing auth. It has no logic beyond describing the filter and imports
// nothing.
//
// A domain query applies it with four parameters (Args):
//
//	WHERE ($1                                   -- All: every patient
//	    OR p.ward_id = ANY($2)                  -- Wards: patients on these care units
//	    OR p.id = ANY($3)                       -- Patients: break-glass grants
//	    OR ($4 <> '' AND EXISTS (SELECT 1 FROM core_care_team c
//	            WHERE c.patient_id = p.id AND c.clinician_id = $4)))  -- CareTeamMember
//
// The zero Filter sees nothing.
package visibility

import "github.com/google/uuid"

// Filter says which patients a caller may see. Each field widens what is visible; the zero
// value sees nothing.
type Filter struct {
	// All: every patient (a clinical role held for every care unit).
	All bool
	// Wards: the patients currently on these wards (roles held per care unit).
	Wards []uuid.UUID
	// CareTeamMember: the patients whose care team lists this clinician id (the user's id);
	// empty for none.
	CareTeamMember string
	// Patients: individual patients opened by break-glass, until their grants expire.
	Patients []uuid.UUID
}

// None reports whether the filter sees no patient at all.
func (f Filter) None() bool {
	return !f.All && len(f.Wards) == 0 && f.CareTeamMember == "" && len(f.Patients) == 0
}

// Args returns the filter as the four SQL parameters of the package example: all (bool),
// wards (uuid[]), patients (uuid[]), care-team member (text). Slices are never nil.
func (f Filter) Args() (all bool, wards []uuid.UUID, patients []uuid.UUID, careTeamMember string) {
	wards, patients = f.Wards, f.Patients
	if wards == nil {
		wards = []uuid.UUID{}
	}
	if patients == nil {
		patients = []uuid.UUID{}
	}
	return f.All, wards, patients, f.CareTeamMember
}
