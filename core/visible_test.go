package core_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit/visibility"
	"github.com/vigilhealth/vigil/core"
)

// The visibility filter is applied in the list query itself: a ward's clinician gets the
// patients of their ward, plus their care-team patients and break-glass patients of other
// wards, never another ward's other patients; the narrowing of the list (ward, discharged,
// care-team member, limit) applies on top; the zero filter sees nobody.
// Verifies: REQ-ACC-025
func TestVisiblePatients(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	site, err := e.svc.CreateSite(e.ctx, clinician, "S")
	if err != nil {
		t.Fatal(err)
	}
	wardA, err := e.svc.CreateWard(e.ctx, clinician, site.ID, "A")
	if err != nil {
		t.Fatal(err)
	}
	wardB, err := e.svc.CreateWard(e.ctx, clinician, site.ID, "B")
	if err != nil {
		t.Fatal(err)
	}
	admit := func(w uuid.UUID) uuid.UUID {
		p, err := e.svc.CreatePatient(e.ctx, clinician, core.PatientPHI{MRN: "V-" + uuid.NewString()[:8], GivenName: "G", FamilyName: "F"}, &w)
		if err != nil {
			t.Fatal(err)
		}
		return p.ID
	}
	var onA, onB []uuid.UUID
	for range 4 {
		onA = append(onA, admit(wardA.ID))
		onB = append(onB, admit(wardB.ID))
	}
	const me = "0192aaaa-0000-7000-8000-000000000001"
	if _, err := e.svc.AddCareTeamMember(e.ctx, clinician, onB[0], me, "nurse"); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.DischargePatient(e.ctx, clinician, onA[3]); err != nil {
		t.Fatal(err)
	}
	all := append(slices.Clone(onA), onB...)

	tests := []struct {
		name string
		vis  visibility.Filter
		f    core.PatientFilter
		want []uuid.UUID
	}{
		{"nobody", visibility.Filter{}, core.PatientFilter{}, nil},
		{"ward A", visibility.Filter{Wards: []uuid.UUID{wardA.ID}}, core.PatientFilter{}, onA[:3]},
		{"ward A, discharged too", visibility.Filter{Wards: []uuid.UUID{wardA.ID}}, core.PatientFilter{Discharged: true}, onA},
		{"ward A + care team", visibility.Filter{Wards: []uuid.UUID{wardA.ID}, CareTeamMember: me}, core.PatientFilter{}, append(slices.Clone(onA[:3]), onB[0])},
		{"ward A + break-glass", visibility.Filter{Wards: []uuid.UUID{wardA.ID}, Patients: []uuid.UUID{onB[2]}}, core.PatientFilter{}, append(slices.Clone(onA[:3]), onB[2])},
		{"ward A + care team, narrowed to ward B", visibility.Filter{Wards: []uuid.UUID{wardA.ID}, CareTeamMember: me}, core.PatientFilter{WardID: wardB.ID}, onB[:1]},
		{"care team only, asking for another's care team", visibility.Filter{CareTeamMember: me}, core.PatientFilter{Clinician: "someone-else"}, nil},
		{"every patient", visibility.Filter{All: true}, core.PatientFilter{Discharged: true}, all},
		{"every patient, limit 2", visibility.Filter{All: true}, core.PatientFilter{Limit: 2}, nil},
	}
	for _, tc := range tests {
		got, err := e.svc.VisiblePatients(e.ctx, tc.vis, tc.f)
		if err != nil {
			t.Fatalf("%s: VisiblePatients: %v", tc.name, err)
		}
		ids, err := e.svc.VisiblePatientIDs(e.ctx, tc.vis, tc.f)
		if err != nil {
			t.Fatalf("%s: VisiblePatientIDs: %v", tc.name, err)
		}
		gotIDs := make([]uuid.UUID, len(got))
		for i, p := range got {
			gotIDs[i] = p.ID
			if p.PHI.MRN == "" {
				t.Errorf("%s: patient %s without its PHI opened", tc.name, p.ID)
			}
		}
		if !slices.Equal(gotIDs, ids) {
			t.Errorf("%s: VisiblePatients ids = %v, VisiblePatientIDs = %v, want the same", tc.name, gotIDs, ids)
		}
		if tc.f.Limit > 0 { // cut in SQL
			if len(ids) != tc.f.Limit {
				t.Errorf("%s: %d patients, want %d", tc.name, len(ids), tc.f.Limit)
			}
			continue
		}
		byID := func(a, b uuid.UUID) int { return strings.Compare(a.String(), b.String()) }
		slices.SortFunc(ids, byID)
		want := slices.Clone(tc.want)
		slices.SortFunc(want, byID)
		if !slices.Equal(ids, want) {
			t.Errorf("%s: = %v, want %v", tc.name, ids, want)
		}
	}
}

// The facts an authorization decision needs (ward, care team) come without the PHI, and an
// unknown patient is ErrNotFound.
// Verifies: REQ-ACC-021
func TestAccessFactsOf(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	site, err := e.svc.CreateSite(e.ctx, clinician, "S")
	if err != nil {
		t.Fatal(err)
	}
	w, err := e.svc.CreateWard(e.ctx, clinician, site.ID, "A")
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.svc.CreatePatient(e.ctx, clinician, core.PatientPHI{MRN: "F-1", GivenName: "G", FamilyName: "F"}, &w.ID)
	if err != nil {
		t.Fatal(err)
	}
	f, err := e.svc.AccessFactsOf(e.ctx, p.ID)
	if err != nil || f.WardID == nil || *f.WardID != w.ID || len(f.CareTeam) != 0 {
		t.Fatalf("AccessFactsOf(new patient) = %+v, %v; want ward %s, no care team", f, err, w.ID)
	}
	for _, c := range []string{"u2", "u1"} {
		if _, err := e.svc.AddCareTeamMember(e.ctx, clinician, p.ID, c, "nurse"); err != nil {
			t.Fatal(err)
		}
	}
	if f, err = e.svc.AccessFactsOf(e.ctx, p.ID); err != nil || !slices.Equal(f.CareTeam, []string{"u1", "u2"}) {
		t.Fatalf("AccessFactsOf = %+v, %v; want care team [u1 u2]", f, err)
	}
	unplaced := e.patient(t)
	if f, err = e.svc.AccessFactsOf(e.ctx, unplaced); err != nil || f.WardID != nil {
		t.Fatalf("AccessFactsOf(no ward) = %+v, %v; want no ward", f, err)
	}
	if _, err := e.svc.AccessFactsOf(e.ctx, uuid.New()); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("AccessFactsOf(unknown) = %v, want ErrNotFound", err)
	}
}
