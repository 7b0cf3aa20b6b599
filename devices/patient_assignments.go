package devices

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// PatientAssignment is one period a device was assigned to a patient.
type PatientAssignment struct {
	DeviceID  uuid.UUID  `json:"device_id"`
	Serial    string     `json:"serial"`
	Model     string     `json:"model"`
	StartedAt time.Time  `json:"started_at"`
	EndedAt   *time.Time `json:"ended_at,omitempty"`
	ActorID   string     `json:"actor_id"`
}

// PatientAssignments returns the devices assigned to a patient over time, newest first (the
// device history of a patient page): at most limit (default 100, at most 1000).
func (s *Service) PatientAssignments(ctx context.Context, patient uuid.UUID, limit int) ([]PatientAssignment, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	rows, err := s.cfg.Pool.Query(ctx, `SELECT a.device_id, d.serial, d.model, a.started_at, a.ended_at, a.actor_id
		FROM devices_assignments a JOIN devices_devices d ON d.id = a.device_id
		WHERE a.patient_id = $1 ORDER BY a.started_at DESC, a.id DESC LIMIT $2`, patient, limit)
	if err != nil {
		return nil, fmt.Errorf("patient device assignments: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (PatientAssignment, error) {
		var a PatientAssignment
		err := r.Scan(&a.DeviceID, &a.Serial, &a.Model, &a.StartedAt, &a.EndedAt, &a.ActorID)
		a.StartedAt = a.StartedAt.UTC()
		if a.EndedAt != nil {
			t := a.EndedAt.UTC()
			a.EndedAt = &t
		}
		return a, err
	})
	if err != nil {
		return nil, fmt.Errorf("patient device assignments: %w", err)
	}
	return out, nil
}

// AssignedTo returns the device currently assigned to each of the patients (decommissioned
// devices excluded), in one query: the device status of a page of patients (the portal's ward
// overview). A patient without a device has no entry.
func (s *Service) AssignedTo(ctx context.Context, patients []uuid.UUID) (map[uuid.UUID]Device, error) {
	out := map[uuid.UUID]Device{}
	if len(patients) == 0 {
		return out, nil
	}
	if len(patients) > 1000 {
		return nil, reject(ErrInvalidInput, "%d patients, at most 1000", len(patients))
	}
	rows, err := s.cfg.Pool.Query(ctx, `SELECT `+deviceCols+` FROM devices_devices
		WHERE patient_id = ANY($1) AND status <> 'decommissioned' ORDER BY updated_at`, patients)
	if err != nil {
		return nil, fmt.Errorf("devices of patients: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("devices of patients: %w", err)
		}
		out[*d.PatientID] = *d // the most recently updated one wins, as on the device list
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("devices of patients: %w", err)
	}
	return out, nil
}
