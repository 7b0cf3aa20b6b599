package alarms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
)

// systemActor is who performs automatic transitions.
var systemActor = audit.Actor{Kind: audit.ActorService, ID: "vigil-alarms", AuthMethod: "internal"}

const alarmCols = `id, patient_id, rule_id, rule_version, state, severity, peak_severity, message, detail,
	opened_at, last_triggered_at, trigger_count, tier, acked_by, acked_at, silenced_by, silenced_until,
	silence_reason, next_escalation_at, next_reminder_at, reminder_count, reminder_interval_ms,
	resolved_at, resolved_by, resolve_reason, updated_at, revision`

// row is an Alarm plus the columns only the lifecycle needs.
type row struct {
	Alarm
	reminderInterval time.Duration
}

func scanRow(r pgx.Row) (row, error) {
	var a row
	var detail []byte
	var ms int64
	err := r.Scan(&a.ID, &a.PatientID, &a.RuleID, &a.RuleVersion, &a.State, &a.Severity, &a.PeakSeverity,
		&a.Message, &detail, &a.OpenedAt, &a.LastTriggeredAt, &a.TriggerCount, &a.Tier, &a.AckedBy,
		&a.AckedAt, &a.SilencedBy, &a.SilencedUntil, &a.SilenceReason, &a.NextEscalation, &a.NextReminder,
		&a.ReminderCount, &ms, &a.ResolvedAt, &a.ResolvedBy, &a.ResolveReason, &a.UpdatedAt, &a.Revision)
	if err != nil {
		return row{}, err
	}
	if len(detail) > 0 {
		a.Detail = json.RawMessage(detail)
	}
	a.reminderInterval = time.Duration(ms) * time.Millisecond
	normTimes(&a.Alarm)
	return a, nil
}

func normTimes(a *Alarm) {
	u := func(t *time.Time) *time.Time {
		if t == nil {
			return nil
		}
		v := t.UTC()
		return &v
	}
	a.OpenedAt, a.LastTriggeredAt, a.UpdatedAt = a.OpenedAt.UTC(), a.LastTriggeredAt.UTC(), a.UpdatedAt.UTC()
	a.AckedAt, a.SilencedUntil, a.NextEscalation = u(a.AckedAt), u(a.SilencedUntil), u(a.NextEscalation)
	a.NextReminder, a.ResolvedAt = u(a.NextReminder), u(a.ResolvedAt)
}

func (s *Service) now() time.Time { return s.cfg.Now().UTC().Truncate(time.Microsecond) }

func ptr(t time.Time) *time.Time { return &t }

// insert writes a new alarm row.
func insert(ctx context.Context, tx pgx.Tx, a row) error {
	_, err := tx.Exec(ctx, `INSERT INTO alarms (`+alarmCols+`) VALUES
		($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23,$24,$25,$26,$27)`,
		a.ID, a.PatientID, a.RuleID, a.RuleVersion, a.State, a.Severity, a.PeakSeverity, a.Message,
		nullRaw(a.Detail), a.OpenedAt, a.LastTriggeredAt, a.TriggerCount, a.Tier, a.AckedBy, a.AckedAt,
		a.SilencedBy, a.SilencedUntil, a.SilenceReason, a.NextEscalation, a.NextReminder, a.ReminderCount,
		a.reminderInterval.Milliseconds(), a.ResolvedAt, a.ResolvedBy, a.ResolveReason, a.UpdatedAt, a.Revision)
	if err != nil {
		return fmt.Errorf("insert alarm: %w", err)
	}
	return nil
}

// update writes every mutable column of a (whose Revision the caller has already advanced).
func update(ctx context.Context, tx pgx.Tx, a row) error {
	tag, err := tx.Exec(ctx, `UPDATE alarms SET rule_version=$2, state=$3, severity=$4, peak_severity=$5,
		message=$6, detail=$7, last_triggered_at=$8, trigger_count=$9, tier=$10, acked_by=$11, acked_at=$12,
		silenced_by=$13, silenced_until=$14, silence_reason=$15, next_escalation_at=$16, next_reminder_at=$17,
		reminder_count=$18, reminder_interval_ms=$19, resolved_at=$20, resolved_by=$21, resolve_reason=$22,
		updated_at=$23, revision=$24 WHERE id=$1`,
		a.ID, a.RuleVersion, a.State, a.Severity, a.PeakSeverity, a.Message, nullRaw(a.Detail),
		a.LastTriggeredAt, a.TriggerCount, a.Tier, a.AckedBy, a.AckedAt, a.SilencedBy, a.SilencedUntil,
		a.SilenceReason, a.NextEscalation, a.NextReminder, a.ReminderCount, a.reminderInterval.Milliseconds(),
		a.ResolvedAt, a.ResolvedBy, a.ResolveReason, a.UpdatedAt, a.Revision)
	if err != nil {
		return fmt.Errorf("update alarm %s: %w", a.ID, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("update alarm %s: %w", a.ID, ErrNotFound)
	}
	return nil
}

func nullRaw(b json.RawMessage) any {
	if len(b) == 0 {
		return nil
	}
	return string(b)
}

// record audits transition kind of a (after the change) in tx and returns the Transition.
func (s *Service) record(ctx context.Context, tx pgx.Tx, by audit.Event, kind TransitionKind, a row, reason string, extra map[string]any) (Transition, error) {
	payload := map[string]any{
		"patient_id": a.PatientID, "rule_id": a.RuleID, "rule_version": a.RuleVersion,
		"state": a.State, "severity": a.Severity.String(), "tier": a.Tier, "revision": a.Revision,
	}
	for k, v := range extra {
		payload[k] = v
	}
	ev := by
	ev.ID = uuid.Nil
	ev.Time = a.UpdatedAt
	ev.Action = "alarm." + string(kind)
	ev.Object = audit.Object{Type: "alarm", ID: a.ID.String()}
	ev.Outcome = audit.OutcomeSuccess
	ev.Reason = reason
	ev.Payload = payload
	if ev.Actor.Kind == "" {
		ev.Actor = systemActor
	}
	id, err := s.cfg.Recorder.Record(ctx, tx, ev)
	if err != nil {
		return Transition{}, fmt.Errorf("audit %s: %w", ev.Action, err)
	}
	return Transition{Kind: kind, Alarm: a.Alarm, At: a.UpdatedAt, Actor: ev.Actor, Reason: reason, AuditEventID: id}, nil
}

// reject audits a refused request (group-committed: nothing else is written) and returns err
// as a *RefusalError once that event is committed; if it cannot be recorded, err joined with
// the audit failure (not a RefusalError: RefusalRecorded is false).
func (s *Service) reject(ctx context.Context, by audit.Event, action string, id uuid.UUID, code string, err error) error {
	ev := by
	ev.ID = uuid.Nil
	ev.Time = s.now()
	ev.Action = "alarm." + action
	ev.Object = audit.Object{Type: "alarm", ID: id.String()}
	ev.Outcome = audit.OutcomeRejected
	ev.Reason = code
	ev.Payload = map[string]any{"error": err.Error()}
	if ev.Actor.Kind == "" {
		ev.Actor = systemActor
	}
	eid, terr := s.cfg.Recorder.RecordNow(context.WithoutCancel(ctx), ev)
	if terr != nil {
		return errors.Join(err, fmt.Errorf("audit rejection: %w", terr))
	}
	return &RefusalError{Code: code, AuditEventID: eid, Err: err}
}

func (s *Service) get(ctx context.Context, id uuid.UUID) (Alarm, error) {
	r, err := scanRow(s.cfg.Pool.QueryRow(ctx, `SELECT `+alarmCols+` FROM alarms WHERE id=$1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return Alarm{}, fmt.Errorf("get alarm %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Alarm{}, fmt.Errorf("get alarm %s: %w", id, err)
	}
	return r.Alarm, nil
}

func (s *Service) list(ctx context.Context, f Filter) ([]Alarm, error) {
	var where []string
	var args []any
	if f.PatientID != uuid.Nil {
		args = append(args, f.PatientID)
		where = append(where, fmt.Sprintf("patient_id=$%d", len(args)))
	}
	if f.RuleID != "" {
		args = append(args, f.RuleID)
		where = append(where, fmt.Sprintf("rule_id=$%d", len(args)))
	}
	if len(f.States) > 0 {
		st := make([]string, len(f.States))
		for i, v := range f.States {
			switch v {
			case StateActive, StateAcknowledged, StateResolved:
			default:
				return nil, fmt.Errorf("%w: unknown state %q", ErrInvalidRequest, v)
			}
			st[i] = string(v)
		}
		args = append(args, st)
		where = append(where, fmt.Sprintf("state = ANY($%d)", len(args)))
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	if limit > 1000 {
		limit = 1000
	}
	q := `SELECT ` + alarmCols + ` FROM alarms`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += fmt.Sprintf(" ORDER BY opened_at DESC, id LIMIT %d", limit)
	rows, err := s.cfg.Pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list alarms: %w", err)
	}
	defer rows.Close()
	out := []Alarm{}
	for rows.Next() {
		r, err := scanRow(rows)
		if err != nil {
			return nil, fmt.Errorf("list alarms: %w", err)
		}
		out = append(out, r.Alarm)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list alarms: %w", err)
	}
	return out, nil
}

// OpenAlarms returns every open (active or acknowledged) alarm of a patient.
func (s *Service) OpenAlarms(ctx context.Context, patientID uuid.UUID) ([]Alarm, error) {
	return s.list(ctx, Filter{PatientID: patientID, States: []State{StateActive, StateAcknowledged}, Limit: 1000})
}
