package core

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit/visibility"
)

// Lists narrowed to what a caller may see, each one SQL query. The caller's identity layer
// computes the visibility filter (which wards, which care team, which break-glass patients, or
// every patient); the query applies it in its WHERE clause, so that no row of another care
// unit is read, counted or cut by the limit before being thrown away.

// visibleWhere is the visibility condition on core_patients p, with the filter's four
// parameters at $1…$4 (visibility.Filter.Args).
const visibleWhere = `($1
	OR p.ward_id = ANY($2::uuid[])
	OR p.id = ANY($3::uuid[])
	OR ($4::text <> '' AND EXISTS (SELECT 1 FROM core_care_team c WHERE c.patient_id = p.id AND c.clinician_id = $4)))`

// visibleQuery is the patient list of vis narrowed by f: its SQL after "SELECT <cols> FROM
// core_patients p" and its arguments.
func visibleQuery(vis visibility.Filter, f *PatientFilter) (string, []any) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	if f.Limit > 1000 {
		f.Limit = 1000
	}
	all, wards, patients, member := vis.Args()
	var clin any
	if f.Clinician != "" {
		clin = f.Clinician
	}
	return ` WHERE ` + visibleWhere + `
		  AND ($5::uuid IS NULL OR p.ward_id = $5) AND ($6 OR p.discharged_at IS NULL)
		  AND ($7::text IS NULL OR EXISTS (SELECT 1 FROM core_care_team c WHERE c.patient_id = p.id AND c.clinician_id = $7))
		ORDER BY p.admitted_at DESC, p.id LIMIT $8`,
		[]any{all, wards, patients, member, nullUUID(f.WardID), f.Discharged, clin, f.Limit}
}

// VisiblePatients lists the patients vis lets the caller see, narrowed by f (ward, care-team
// member, discharged, limit: as Patients), most recently admitted first, with their PHI
// opened — one query. The zero filter sees nobody (an empty list, no query).
func (s *Service) VisiblePatients(ctx context.Context, vis visibility.Filter, f PatientFilter) ([]Patient, error) {
	if s.cfg.PHI == nil {
		return nil, fmt.Errorf("list visible patients: %w", ErrNoPHISealer)
	}
	if vis.None() {
		return []Patient{}, nil
	}
	where, args := visibleQuery(vis, &f)
	rows, err := s.pool.Query(ctx, "SELECT "+prefixed(patientCols)+" FROM core_patients p"+where, args...)
	if err != nil {
		return nil, fmt.Errorf("list visible patients: %w", err)
	}
	defer rows.Close()
	out := []Patient{}
	for rows.Next() {
		p, err := s.scanPatient(ctx, rows)
		if err != nil {
			return nil, fmt.Errorf("list visible patients: %w", err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list visible patients: %w", err)
	}
	return out, nil
}

// VisiblePatientIDs is VisiblePatients without opening any PHI: the ids only (a stream
// subscription, the alarm list's patients) — one query.
func (s *Service) VisiblePatientIDs(ctx context.Context, vis visibility.Filter, f PatientFilter) ([]uuid.UUID, error) {
	if vis.None() {
		return []uuid.UUID{}, nil
	}
	where, args := visibleQuery(vis, &f)
	rows, err := s.pool.Query(ctx, "SELECT p.id FROM core_patients p"+where, args...)
	if err != nil {
		return nil, fmt.Errorf("list visible patient ids: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, fmt.Errorf("list visible patient ids: %w", err)
	}
	if ids == nil {
		ids = []uuid.UUID{}
	}
	return ids, nil
}

// prefixed qualifies a column list with the alias p.
func prefixed(cols string) string {
	return "p." + strings.ReplaceAll(cols, ", ", ", p.")
}

// AccessFacts are what an authorization decision about a patient needs to know: the ward the
// patient is on (nil when none) and the clinician ids of their care team. No PHI.
type AccessFacts struct {
	WardID   *uuid.UUID
	CareTeam []string
}

// AccessFactsOf returns a patient's access facts in one query without opening any PHI, or
// ErrNotFound.
func (s *Service) AccessFactsOf(ctx context.Context, id uuid.UUID) (AccessFacts, error) {
	var f AccessFacts
	err := s.pool.QueryRow(ctx, `SELECT p.ward_id,
			array(SELECT c.clinician_id FROM core_care_team c WHERE c.patient_id = p.id ORDER BY c.clinician_id)
		FROM core_patients p WHERE p.id = $1`, id).Scan(&f.WardID, &f.CareTeam)
	if errors.Is(err, pgx.ErrNoRows) {
		return AccessFacts{}, fmt.Errorf("patient %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return AccessFacts{}, fmt.Errorf("access facts of patient %s: %w", id, err)
	}
	return f, nil
}
