package chain

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/vigilhealth/vigil/audit"
)

// ErrIncidentNotFound is returned for an incident id that does not exist or is resolved.
var ErrIncidentNotFound = errors.New("audit incident not found or already resolved")

// Incident is a loud failure of the audit chain (an inconsistent log). While one is
// unresolved, readiness fails and verify reports it.
type Incident struct {
	ID         int64      `json:"id"`
	At         time.Time  `json:"at"`
	Kind       string     `json:"kind"`
	Detail     string     `json:"detail"`
	ResolvedAt *time.Time `json:"resolved_at,omitempty"`
}

// Incidents lists every incident, newest first.
func (s *Service) Incidents(ctx context.Context) ([]Incident, error) {
	rows, err := s.cfg.Pool.Query(ctx, `SELECT id, at, kind, detail, resolved_at FROM audit_incidents ORDER BY id DESC`)
	if err != nil {
		return nil, fmt.Errorf("list audit incidents: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Incident, error) {
		var i Incident
		return i, r.Scan(&i.ID, &i.At, &i.Kind, &i.Detail, &i.ResolvedAt)
	})
	if err != nil {
		return nil, fmt.Errorf("list audit incidents: %w", err)
	}
	return list, nil
}

// ResolveIncident marks an incident resolved after an operator investigated it, and records
// who did so and why (`audit.incident.resolved`) in the same transaction. Resolving does not
// make an inconsistent log consistent: verify keeps reporting the fork in the stored
// checkpoints, and a log that still does not extend the last checkpoint raises a new incident.
func (s *Service) ResolveIncident(ctx context.Context, id int64, by audit.Actor, note string) error {
	return pgx.BeginFunc(ctx, s.cfg.Pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE audit_incidents SET resolved_at = $1 WHERE id = $2 AND resolved_at IS NULL`, s.cfg.Now(), id)
		if err != nil {
			return fmt.Errorf("resolve audit incident %d: %w", id, err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("resolve audit incident %d: %w", id, ErrIncidentNotFound)
		}
		_, err = s.cfg.Recorder.Record(ctx, tx, audit.Event{Time: s.cfg.Now(), Actor: by, Action: "audit.incident.resolved",
			Object: audit.Object{Type: "audit_incident", ID: fmt.Sprint(id)}, Outcome: audit.OutcomeSuccess,
			Payload: map[string]string{"note": note}})
		return err
	})
}
