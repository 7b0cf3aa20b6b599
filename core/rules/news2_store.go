package rules

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// NEWS2Record is one stored NEWS2 result: the derived observation with its components.
type NEWS2Record struct {
	ID          uuid.UUID  `json:"id"`
	PatientID   uuid.UUID  `json:"patient_id"`
	Code        string     `json:"code"` // CodeNEWS2
	EffectiveAt time.Time  `json:"effective_at"`
	Score       NEWS2Score `json:"score"`
	RuleID      string     `json:"rule_id"`
	RuleVersion int        `json:"rule_version"`
	RecordedAt  time.Time  `json:"recorded_at"`
}

// NEWS2History returns a patient's NEWS2 results with from <= effective time < to, newest
// first, at most limit (default 100, at most 1000). A zero to means no upper bound.
func (e *Engine) NEWS2History(ctx context.Context, patientID uuid.UUID, from, to time.Time, limit int) ([]NEWS2Record, error) {
	if limit <= 0 {
		limit = 100
	}
	if limit > 1000 {
		limit = 1000
	}
	if to.IsZero() {
		to = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	rows, err := e.cfg.Pool.Query(ctx, `SELECT id, patient_id, effective_at, components, rule_id, rule_version, recorded_at
		FROM rules_news2 WHERE patient_id=$1 AND effective_at >= $2 AND effective_at < $3
		ORDER BY effective_at DESC, recorded_at DESC LIMIT $4`, patientID, from, to, limit)
	if err != nil {
		return nil, fmt.Errorf("NEWS2 history: %w", err)
	}
	defer rows.Close()
	out := []NEWS2Record{}
	for rows.Next() {
		var r NEWS2Record
		var comp []byte
		if err := rows.Scan(&r.ID, &r.PatientID, &r.EffectiveAt, &comp, &r.RuleID, &r.RuleVersion, &r.RecordedAt); err != nil {
			return nil, fmt.Errorf("NEWS2 history: %w", err)
		}
		if err := json.Unmarshal(comp, &r.Score); err != nil {
			return nil, fmt.Errorf("NEWS2 history: components of %s: %w", r.ID, err)
		}
		r.Code = CodeNEWS2
		r.EffectiveAt, r.RecordedAt = r.EffectiveAt.UTC(), r.RecordedAt.UTC()
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("NEWS2 history: %w", err)
	}
	return out, nil
}
