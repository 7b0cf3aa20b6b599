// Package storedfeed reads the stored uploads and alarms in the order their transactions
// committed (core_uploads.txid, alarms.feed_txid / alarms.opened_txid: migrations 00371 and
// 00713), for durable readers that resume from a saved position: it reads only rows whose
// transaction is older than every transaction still running (pg_snapshot_xmin), so a row
// that commits late is never skipped. The cursors it keeps are in interop_feed_cursors
// (migration 00713), one per reader name.
package storedfeed

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vigilhealth/vigil/core"
)

// Kinds of row, in their order within one transaction.
const (
	KindStart  int16 = -1 // before both: a new cursor
	KindAlarm  int16 = 0
	KindUpload int16 = 1
)

// Position orders the stored rows: by the writing transaction, then alarms before uploads,
// then id.
type Position struct {
	TxID uint64
	Kind int16
	ID   uuid.UUID
}

// Less reports whether p comes before q.
func (p Position) Less(q Position) bool {
	if p.TxID != q.TxID {
		return p.TxID < q.TxID
	}
	if p.Kind != q.Kind {
		return p.Kind < q.Kind
	}
	return string(p.ID[:]) < string(q.ID[:])
}

// Alarm columns: which transaction of an alarm places it in the order.
const (
	AlarmChanges  = "feed_txid"   // its last opening or change of state or severity
	AlarmOpenings = "opened_txid" // its opening only (each alarm once)
)

// Row is one stored row: an upload (KindUpload) or an alarm (KindAlarm).
type Row struct {
	Pos      Position
	Patient  uuid.UUID
	At       time.Time // upload: received; alarm: updated
	Text     string    // upload: device id; alarm: rule id
	First    *time.Time
	Last     *time.Time
	Severity int
	State    string
	Message  string
	Obs      []core.Observation // Observations fills them
}

// Querier is a pool, connection or transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Read returns up to batch rows after from, in commit order, whose transactions are older
// than every transaction still running; alarmCol (AlarmChanges or AlarmOpenings) places the
// alarms.
func Read(ctx context.Context, q Querier, from Position, batch int, alarmCol string) ([]Row, error) {
	if alarmCol != AlarmChanges && alarmCol != AlarmOpenings {
		return nil, fmt.Errorf("storedfeed: unknown alarm column %q", alarmCol)
	}
	rs, err := q.Query(ctx, `SELECT t::text, kind, id, patient_id, at, txt, first_at, last_at, severity, state, message FROM (
		(SELECT u.txid AS t, 1::smallint AS kind, u.id, u.patient_id, u.received_at AS at, u.device_id AS txt,
			u.first_effective_at AS first_at, u.last_effective_at AS last_at, 0 AS severity, '' AS state, '' AS message
		 FROM core_uploads u
		 WHERE u.txid IS NOT NULL AND u.txid >= $1::text::xid8 AND u.txid < pg_snapshot_xmin(pg_current_snapshot())
		   AND (u.txid > $1::text::xid8 OR $2 < 1 OR ($2 = 1 AND u.id > $3)) AND u.stored > 0
		 ORDER BY u.txid, u.id LIMIT $4)
		UNION ALL
		(SELECT a.`+alarmCol+`, 0::smallint, a.id, a.patient_id, a.updated_at, a.rule_id, NULL, NULL, a.severity, a.state, a.message
		 FROM alarms a
		 WHERE a.`+alarmCol+` IS NOT NULL AND a.`+alarmCol+` >= $1::text::xid8 AND a.`+alarmCol+` < pg_snapshot_xmin(pg_current_snapshot())
		   AND (a.`+alarmCol+` > $1::text::xid8 OR $2 < 0 OR ($2 = 0 AND a.id > $3))
		 ORDER BY a.`+alarmCol+`, a.id LIMIT $4)
	) x ORDER BY t, kind, id LIMIT $4`, strconv.FormatUint(from.TxID, 10), from.Kind, from.ID, batch)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []Row
	for rs.Next() {
		var r Row
		var txid string
		if err := rs.Scan(&txid, &r.Pos.Kind, &r.Pos.ID, &r.Patient, &r.At, &r.Text, &r.First, &r.Last, &r.Severity, &r.State, &r.Message); err != nil {
			return nil, err
		}
		if r.Pos.TxID, err = strconv.ParseUint(txid, 10, 64); err != nil {
			return nil, fmt.Errorf("txid %q: %w", txid, err)
		}
		out = append(out, r)
	}
	return out, rs.Err()
}

// Observations fills the uploads' observations (found by patient and time range through the
// primary key), each upload's in effective time then code order.
func Observations(ctx context.Context, q Querier, rows []Row) error {
	var ids, pats []uuid.UUID
	var los, his []time.Time
	at := map[uuid.UUID]*Row{}
	for i := range rows {
		r := &rows[i]
		if r.Pos.Kind != KindUpload || r.First == nil || r.Last == nil {
			continue
		}
		ids, pats, los, his = append(ids, r.Pos.ID), append(pats, r.Patient), append(los, *r.First), append(his, *r.Last)
		at[r.Pos.ID] = r
	}
	if len(ids) == 0 {
		return nil
	}
	rs, err := q.Query(ctx, `SELECT o.upload_id, o.code, o.value, o.effective_at, o.flags & 1 = 1
		FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::timestamptz[]) AS u(id, patient_id, lo, hi)
		CROSS JOIN LATERAL (SELECT * FROM core_observations o WHERE o.patient_id = u.patient_id
			AND o.effective_at >= u.lo AND o.effective_at <= u.hi AND o.upload_id = u.id) o
		ORDER BY o.upload_id, o.effective_at, o.code`, ids, pats, los, his)
	if err != nil {
		return err
	}
	defer rs.Close()
	for rs.Next() {
		var o core.Observation
		if err := rs.Scan(&o.UploadID, &o.Code, &o.Value, &o.EffectiveAt, &o.Artifact); err != nil {
			return err
		}
		r := at[o.UploadID]
		o.PatientID, o.DeviceID, o.EffectiveAt = r.Patient, r.Text, o.EffectiveAt.UTC()
		if ci, ok := core.LookupCode(o.Code); ok {
			o.Unit = ci.Unit
		}
		r.Obs = append(r.Obs, o)
	}
	return rs.Err()
}

// StartCursor loads the cursor of reader name, creating it at the present when there is none
// (a new reader gets what commits from now on, not the history); created says it was.
func StartCursor(ctx context.Context, q Querier, name string, now time.Time) (p Position, created bool, err error) {
	tag, err := q.Exec(ctx, `INSERT INTO interop_feed_cursors (name, txid, kind, source_id, updated_at)
		VALUES ($1, pg_snapshot_xmin(pg_current_snapshot()), -1, $2, $3) ON CONFLICT (name) DO NOTHING`, name, uuid.Nil, now)
	if err != nil {
		return p, false, err
	}
	var txid string
	if err := q.QueryRow(ctx, `SELECT txid::text, kind, source_id FROM interop_feed_cursors WHERE name = $1`, name).
		Scan(&txid, &p.Kind, &p.ID); err != nil {
		return p, false, err
	}
	if p.TxID, err = strconv.ParseUint(txid, 10, 64); err != nil {
		return p, false, fmt.Errorf("cursor txid %q: %w", txid, err)
	}
	return p, tag.RowsAffected() == 1, nil
}

// SaveCursor moves the cursor of reader name to p, never back.
func SaveCursor(ctx context.Context, q Querier, name string, p Position, now time.Time) error {
	_, err := q.Exec(ctx, `UPDATE interop_feed_cursors SET txid = $2::text::xid8, kind = $3, source_id = $4, updated_at = $5
		WHERE name = $1 AND (txid, kind, source_id) < ($2::text::xid8, $3, $4)`,
		name, strconv.FormatUint(p.TxID, 10), p.Kind, p.ID, now)
	return err
}
