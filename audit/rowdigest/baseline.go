package rowdigest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
)

// The baseline (docs/audit.md "Adopting rows written before they carried their event"): rows
// written before their table carried audit_event_id and audit_digest (migration 00610 and
// later ones) name no event, and verify reports each as an unaudited change. Baseline
// adopts them, once per table: in one transaction, for each audited table not baselined
// before, it records audit.baseline events ("pre-existing row adopted at baseline") whose
// payload commits to the digests of the table's un-stamped rows, and stamps those rows with
// them. A table with no such row is baselined too (an event adopting none): from then on a
// row of it that names no event was written behind the system's back, and a later baseline
// does not adopt it. A row that names an event is never touched, nor one that carries a
// digest but no event (its event id was removed): both stay findings.

const (
	// BaselineAction is the action of a baseline event (object audit_baseline/<table>).
	BaselineAction = "audit.baseline"
	// BaselineReason is what a baseline event says of the rows it adopts.
	BaselineReason = "pre-existing row adopted at baseline"
	// BaselineObject is the object type of a baseline event (its id is the table).
	BaselineObject = "audit_baseline"
	// ReasonAlreadyBaselined is the reason of the rejected event a run that finds every
	// table baselined records.
	ReasonAlreadyBaselined = "already_baselined"

	baselineLock = "vigil.audit.baseline"
	// baselinePayloadBytes bounds the row digests one event carries (audit.MaxPayloadBytes
	// is the cap); a table with more rows is adopted by several events.
	baselinePayloadBytes = 12 << 10
)

// BaselineTable is what a baseline did (or, dry, would do) with one table.
type BaselineTable struct {
	Table string `json:"table"`
	// Adopted is the rows stamped by this run; Keys their keys (at most 20, dry run only).
	Adopted int      `json:"adopted"`
	Keys    []string `json:"keys,omitempty"`
	// Events are the baseline events this run recorded for the table.
	Events []uuid.UUID `json:"events,omitempty"`
	// Earlier is the event of the earlier baseline of the table (nothing adopted now).
	Earlier *uuid.UUID `json:"earlier,omitempty"`
	// Unstamped is the rows that name no event and were not adopted: the table was baselined
	// before, or the row carries a digest without an event.
	Unstamped int `json:"unstamped"`
}

// BaselineResult is a baseline run's result.
type BaselineResult struct {
	Tables  []BaselineTable `json:"tables"`
	Adopted int             `json:"adopted"` // rows stamped in all
	// Already: every table was baselined before; nothing was stamped (the run is recorded
	// as a rejected audit.baseline, reason already_baselined).
	Already bool `json:"already"`
	DryRun  bool `json:"dry_run"`
}

// TxBeginner is what Baseline needs of a pool.
type TxBeginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Baseline adopts the un-stamped rows of every audited table (All) that has its columns and
// was not baselined before, on behalf of by (an event template: actor, request id, source),
// in one transaction recorded through rec. dryRun reports what it would do and changes
// nothing (and records nothing).
func Baseline(ctx context.Context, db TxBeginner, rec audit.Recorder, by audit.Event, dryRun bool) (BaselineResult, error) {
	res := BaselineResult{DryRun: dryRun, Tables: []BaselineTable{}}
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, baselineLock); err != nil {
			return err
		}
		earlier, err := earlierBaselines(ctx, tx)
		if err != nil {
			return err
		}
		newTables := 0
		for _, s := range All {
			var ok bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM information_schema.columns
				WHERE table_schema = current_schema() AND table_name = $1 AND column_name = 'audit_event_id')`, s.Table).Scan(&ok); err != nil {
				return fmt.Errorf("baseline %s: %w", s.Table, err)
			}
			if !ok {
				continue
			}
			bt := BaselineTable{Table: s.Table}
			if ev, done := earlier[s.Table]; done {
				e := ev
				bt.Earlier = &e
				if err := tx.QueryRow(ctx, `SELECT count(*) FROM `+s.Table+` WHERE audit_event_id IS NULL`).Scan(&bt.Unstamped); err != nil {
					return fmt.Errorf("baseline %s: %w", s.Table, err)
				}
				res.Tables = append(res.Tables, bt)
				continue
			}
			newTables++
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM `+s.Table+` WHERE audit_event_id IS NULL AND audit_digest IS NOT NULL`).Scan(&bt.Unstamped); err != nil {
				return fmt.Errorf("baseline %s: %w", s.Table, err)
			}
			rows, err := tx.Query(ctx, `SELECT `+s.Key+` FROM `+s.Table+` t
				WHERE t.audit_event_id IS NULL AND t.audit_digest IS NULL ORDER BY 1 FOR UPDATE`)
			if err != nil {
				return fmt.Errorf("baseline %s: %w", s.Table, err)
			}
			keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return fmt.Errorf("baseline %s: %w", s.Table, err)
			}
			if dryRun {
				bt.Adopted = len(keys)
				bt.Keys = keys[:min(len(keys), 20)]
				res.Adopted += len(keys)
				res.Tables = append(res.Tables, bt)
				continue
			}
			if bt.Events, err = adopt(ctx, tx, rec, by, s, keys); err != nil {
				return fmt.Errorf("baseline %s: %w", s.Table, err)
			}
			bt.Adopted = len(keys)
			res.Adopted += len(keys)
			res.Tables = append(res.Tables, bt)
		}
		if newTables > 0 || dryRun {
			res.Already = newTables == 0
			return nil
		}
		res.Already = true
		ev := by
		ev.Action, ev.Object, ev.Outcome, ev.Reason = BaselineAction, audit.Object{Type: BaselineObject}, audit.OutcomeRejected, ReasonAlreadyBaselined
		ev.Payload = map[string]any{"error": "every audited table was baselined before; nothing stamped"}
		_, err = rec.Record(ctx, tx, ev)
		return err
	})
	if err != nil {
		return BaselineResult{}, fmt.Errorf("audit baseline: %w", err)
	}
	return res, nil
}

// earlierBaselines returns, for each table baselined before, the first baseline event.
func earlierBaselines(ctx context.Context, tx pgx.Tx) (map[string]uuid.UUID, error) {
	rows, err := tx.Query(ctx, `SELECT DISTINCT ON (object_id) object_id, id FROM audit_events
		WHERE action = $1 AND object_type = $2 AND outcome = 'success' AND object_id IS NOT NULL ORDER BY object_id, seq`, BaselineAction, BaselineObject)
	if err != nil {
		return nil, fmt.Errorf("earlier baselines: %w", err)
	}
	defer rows.Close()
	out := map[string]uuid.UUID{}
	for rows.Next() {
		var t string
		var id uuid.UUID
		if err := rows.Scan(&t, &id); err != nil {
			return nil, err
		}
		out[t] = id
	}
	return out, rows.Err()
}

// adopt records the baseline events of one table (one with no row when keys is empty) and
// stamps its rows with them.
func adopt(ctx context.Context, tx pgx.Tx, rec audit.Recorder, by audit.Event, s Spec, keys []string) ([]uuid.UUID, error) {
	var ids []uuid.UUID
	for start, part := 0, 1; part == 1 || start < len(keys); part++ {
		id, err := uuid.NewV7()
		if err != nil {
			return nil, err
		}
		ds := Digests{}
		end, size := start, 0
		for ; end < len(keys) && size < baselinePayloadBytes; end++ {
			if err := ds.Stamp(ctx, tx, s, keys[end], id); err != nil {
				return nil, err
			}
			ref, _ := json.Marshal(s.Ref(keys[end])) // as the payload will spell it (escapes included)
			size += len(ref) + 64 + 4
		}
		ev := by
		ev.ID, ev.Action, ev.Object, ev.Outcome, ev.Reason = id, BaselineAction, audit.Object{Type: BaselineObject, ID: s.Table}, audit.OutcomeSuccess, ""
		ev.Payload = map[string]any{"reason": BaselineReason, "table": s.Table, "part": part, "rows": end - start, PayloadKey: ds}
		got, err := rec.Record(ctx, tx, ev)
		if err != nil {
			return nil, err
		}
		if got != id {
			return nil, errors.New("the recorder gave the event another id than the one its rows carry")
		}
		ids = append(ids, id)
		start = end
	}
	return ids, nil
}
