package alarms

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// MaxBatchPatients is the most patients one batched read accepts.
const MaxBatchPatients = 1000

// OpenAlarmsOf returns the open (active or acknowledged) alarms of each of the patients in one
// query, by patient, each patient's newest first; a patient without open alarms has no entry.
// It is OpenAlarms for a page of many patients (the portal's ward overview and alarm inbox).
func (s *Service) OpenAlarmsOf(ctx context.Context, patients []uuid.UUID) (map[uuid.UUID][]Alarm, error) {
	out := map[uuid.UUID][]Alarm{}
	if len(patients) == 0 {
		return out, nil
	}
	if len(patients) > MaxBatchPatients {
		return nil, fmt.Errorf("%w: %d patients, at most %d", ErrInvalidRequest, len(patients), MaxBatchPatients)
	}
	rows, err := s.cfg.Pool.Query(ctx, `SELECT `+alarmCols+` FROM alarms
		WHERE patient_id = ANY($1) AND state <> 'resolved' ORDER BY patient_id, opened_at DESC, id`, patients)
	if err != nil {
		return nil, fmt.Errorf("open alarms of patients: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		r, err := scanRow(rows)
		if err != nil {
			return nil, fmt.Errorf("open alarms of patients: %w", err)
		}
		out[r.PatientID] = append(out[r.PatientID], r.Alarm)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("open alarms of patients: %w", err)
	}
	return out, nil
}

// History returns a patient's alarms opened at or after since, newest first, at most limit
// (default 100, at most 1000), resolved ones included: the alarm history of a patient page.
func (s *Service) History(ctx context.Context, patient uuid.UUID, since time.Time, limit int) ([]Alarm, error) {
	if limit <= 0 {
		limit = 100
	}
	if limit > 1000 {
		limit = 1000
	}
	rows, err := s.cfg.Pool.Query(ctx, `SELECT `+alarmCols+` FROM alarms
		WHERE patient_id = $1 AND opened_at >= $2 ORDER BY opened_at DESC, id LIMIT $3`, patient, since, limit)
	if err != nil {
		return nil, fmt.Errorf("alarm history: %w", err)
	}
	defer rows.Close()
	out := []Alarm{}
	for rows.Next() {
		r, err := scanRow(rows)
		if err != nil {
			return nil, fmt.Errorf("alarm history: %w", err)
		}
		out = append(out, r.Alarm)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("alarm history: %w", err)
	}
	return out, nil
}
