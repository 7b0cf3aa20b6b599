package rules

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// LatestNEWS2Of returns the newest NEWS2 result of each of the patients with an effective time
// at or after from, in one query (an index probe per patient); a patient without one has no
// entry. It is NEWS2History(…, 1) for a page of many patients (the portal's ward overview).
func (e *Engine) LatestNEWS2Of(ctx context.Context, patients []uuid.UUID, from time.Time) (map[uuid.UUID]NEWS2Record, error) {
	out := map[uuid.UUID]NEWS2Record{}
	if len(patients) == 0 {
		return out, nil
	}
	if len(patients) > 1000 {
		return nil, fmt.Errorf("latest NEWS2: %d patients, at most 1000", len(patients))
	}
	rows, err := e.cfg.Pool.Query(ctx, `SELECT n.id, n.patient_id, n.effective_at, n.components, n.rule_id, n.rule_version, n.recorded_at
		FROM unnest($1::uuid[]) AS p(id) CROSS JOIN LATERAL (SELECT * FROM rules_news2
			WHERE patient_id = p.id AND effective_at >= $2 ORDER BY effective_at DESC, recorded_at DESC LIMIT 1) n`, patients, from)
	if err != nil {
		return nil, fmt.Errorf("latest NEWS2: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r NEWS2Record
		var comp []byte
		if err := rows.Scan(&r.ID, &r.PatientID, &r.EffectiveAt, &comp, &r.RuleID, &r.RuleVersion, &r.RecordedAt); err != nil {
			return nil, fmt.Errorf("latest NEWS2: %w", err)
		}
		if err := json.Unmarshal(comp, &r.Score); err != nil {
			return nil, fmt.Errorf("latest NEWS2: components of %s: %w", r.ID, err)
		}
		r.Code = CodeNEWS2
		r.EffectiveAt, r.RecordedAt = r.EffectiveAt.UTC(), r.RecordedAt.UTC()
		out[r.PatientID] = r
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("latest NEWS2: %w", err)
	}
	return out, nil
}
