package core

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Batched reads for pages that show many patients at once (the portal's ward overview): one
// query for all the patients instead of one (or several) per patient.

// MaxBatchPatients is the most patients one batched read accepts.
const MaxBatchPatients = 1000

// LatestOf returns, for each of the patients, their most recent observation of each of the
// codes within the window before now (Config.Now), as Latest does for one patient: an
// artifact-flagged value is returned flagged, a sample stamped after now is left out. One
// query (an index probe per patient and code); a patient with no value in the window has no
// entry. window ≤ 0 means 24 hours; unknown patients simply have no entry.
func (s *Service) LatestOf(ctx context.Context, patients []uuid.UUID, codes []string, window time.Duration) (map[uuid.UUID][]Observation, error) {
	out := map[uuid.UUID][]Observation{}
	if len(patients) == 0 || len(codes) == 0 {
		return out, nil
	}
	if len(patients) > MaxBatchPatients {
		return nil, fmt.Errorf("%w: %d patients, at most %d", ErrInvalidRequest, len(patients), MaxBatchPatients)
	}
	for _, c := range codes {
		if _, ok := catalog[c]; !ok {
			return nil, fmt.Errorf("%w: unknown LOINC code %q", ErrInvalidRequest, c)
		}
	}
	if window <= 0 {
		window = 24 * time.Hour
	}
	now := s.cfg.Now()
	rows, err := s.pool.Query(ctx, `SELECT o.patient_id, o.code, o.value, o.effective_at, o.artifact, o.upload_id
		FROM unnest($1::uuid[]) AS p(id) CROSS JOIN unnest($2::text[]) AS c(code)
		CROSS JOIN LATERAL (SELECT patient_id, code, value, effective_at, flags & 1 = 1 AS artifact, upload_id
			FROM core_observations WHERE patient_id = p.id AND code = c.code AND effective_at > $3 AND effective_at <= $4
			ORDER BY effective_at DESC LIMIT 1) o
		ORDER BY o.patient_id, o.code`, patients, codes, now.Add(-window), now)
	if err != nil {
		return nil, fmt.Errorf("latest observations of patients: %w", err)
	}
	obs, err := pgx.CollectRows(rows, scanObservation)
	if err != nil {
		return nil, fmt.Errorf("latest observations of patients: %w", err)
	}
	for _, o := range obs {
		out[o.PatientID] = append(out[o.PatientID], o)
	}
	return out, nil
}

// CareTeams returns the care teams of the patients (one query), by patient; a patient without
// a care team has no entry.
func (s *Service) CareTeams(ctx context.Context, patients []uuid.UUID) (map[uuid.UUID][]CareTeamMember, error) {
	out := map[uuid.UUID][]CareTeamMember{}
	if len(patients) == 0 {
		return out, nil
	}
	if len(patients) > MaxBatchPatients {
		return nil, fmt.Errorf("%w: %d patients, at most %d", ErrInvalidRequest, len(patients), MaxBatchPatients)
	}
	rows, err := s.pool.Query(ctx, `SELECT patient_id, clinician_id, role, added_at FROM core_care_team
		WHERE patient_id = ANY($1) ORDER BY patient_id, clinician_id`, patients)
	if err != nil {
		return nil, fmt.Errorf("care teams: %w", err)
	}
	ms, err := pgx.CollectRows(rows, pgx.RowToStructByPos[CareTeamMember])
	if err != nil {
		return nil, fmt.Errorf("care teams: %w", err)
	}
	for _, m := range ms {
		out[m.PatientID] = append(out[m.PatientID], m)
	}
	return out, nil
}
