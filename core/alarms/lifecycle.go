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

// ruleActor is the actor of transitions caused by rule signals.
var ruleActor = audit.Actor{Kind: audit.ActorService, ID: "vigil-rules", AuthMethod: "internal"}

func (s *Service) apply(ctx context.Context, tx pgx.Tx, sig Signal) ([]Transition, error) {
	if sig.PatientID == uuid.Nil || sig.RuleID == "" {
		return nil, fmt.Errorf("%w: signal without patient or rule", ErrInvalidRequest)
	}
	if sig.Raise && !sig.Severity.Valid() {
		return nil, fmt.Errorf("%w: signal severity %d", ErrInvalidRequest, int(sig.Severity))
	}
	var detail json.RawMessage
	if sig.Detail != nil {
		b, err := json.Marshal(sig.Detail)
		if err != nil {
			return nil, fmt.Errorf("%w: signal detail: %v", ErrInvalidRequest, err)
		}
		detail = b
	}
	now := s.now()
	by := audit.Event{Actor: ruleActor}
	extra := map[string]any{}
	if !sig.At.IsZero() {
		extra["condition_at"] = sig.At.UTC()
	}

	cur, err := scanRow(tx.QueryRow(ctx, `SELECT `+alarmCols+` FROM alarms
		WHERE patient_id=$1 AND rule_id=$2 AND state <> 'resolved' FOR UPDATE`, sig.PatientID, sig.RuleID))
	if errors.Is(err, pgx.ErrNoRows) {
		if !sig.Raise {
			return nil, nil
		}
		id, err := uuid.NewV7()
		if err != nil {
			return nil, fmt.Errorf("new alarm id: %w", err)
		}
		a := row{Alarm: Alarm{
			ID: id, PatientID: sig.PatientID, RuleID: sig.RuleID, RuleVersion: sig.RuleVersion,
			State: StateActive, Severity: sig.Severity, PeakSeverity: sig.Severity, Message: sig.Message,
			Detail: detail, OpenedAt: now, LastTriggeredAt: now, TriggerCount: 1,
			NextEscalation: ptr(now.Add(s.cfg.EscalateAfter)), NextReminder: ptr(now.Add(s.cfg.ReminderFirst)),
			UpdatedAt: now, Revision: 1,
		}, reminderInterval: s.cfg.ReminderFirst}
		if err := insert(ctx, tx, a); err != nil {
			return nil, err
		}
		extra["message"] = sig.Message
		if sig.Sustain {
			// The condition held all along: its alarm was resolved by hand (or by a release)
			// while it persisted. It re-opens.
			extra["reopened"] = "condition_persists"
		}
		t, err := s.record(ctx, tx, by, Opened, a, "", extra)
		if err != nil {
			return nil, err
		}
		return []Transition{t}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load open alarm: %w", err)
	}

	if sig.Raise && sig.Sustain && !sig.Worse && sig.Severity <= cur.Severity {
		return nil, nil // still holds, the open alarm says so: nothing to write
	}
	a := cur
	a.UpdatedAt = now
	a.Revision++
	if !sig.Raise {
		a.State = StateResolved
		a.ResolvedAt, a.ResolvedBy, a.ResolveReason = ptr(now), ruleActor.ID, "condition_cleared"
		a.NextEscalation, a.NextReminder = nil, nil
		if err := update(ctx, tx, a); err != nil {
			return nil, err
		}
		t, err := s.record(ctx, tx, by, Resolved, a, "condition_cleared", extra)
		if err != nil {
			return nil, err
		}
		return []Transition{t}, nil
	}

	kind := Retriggered
	a.RuleVersion, a.Message, a.LastTriggeredAt = sig.RuleVersion, sig.Message, now
	a.TriggerCount++
	if detail != nil {
		a.Detail = detail
	}
	extra["from_severity"] = cur.Severity.String()
	extra["message"] = sig.Message
	switch {
	case sig.Severity > cur.Severity || sig.Worse && sig.Severity == cur.Severity:
		kind = SeverityEscalated
		if sig.Severity == cur.Severity {
			kind = Worsened
		}
		a.Severity = sig.Severity
		if sig.Severity > a.PeakSeverity {
			a.PeakSeverity = sig.Severity
		}
		// A worse condition must be seen again: an acknowledged alarm becomes active (and
		// escalates and reminds anew), and a silence is cancelled.
		if a.State == StateAcknowledged {
			a.State = StateActive
			a.AckedBy, a.AckedAt = "", nil
			a.NextEscalation = ptr(now.Add(s.cfg.EscalateAfter))
			a.NextReminder = ptr(now)
			a.reminderInterval = s.cfg.ReminderFirst
			extra["reactivated"] = true
		}
		if a.SilencedUntil != nil {
			a.SilencedUntil, a.SilencedBy, a.SilenceReason = nil, "", ""
			extra["silence_cancelled"] = true
			if a.State == StateActive {
				a.NextReminder = ptr(now)
			}
		}
	case sig.Severity < cur.Severity:
		kind = SeverityDeescalate
		a.Severity = sig.Severity
	}
	if err := update(ctx, tx, a); err != nil {
		return nil, err
	}
	t, err := s.record(ctx, tx, by, kind, a, "", extra)
	if err != nil {
		return nil, err
	}
	return []Transition{t}, nil
}

// change runs one manual transition: it locks the alarm, lets fn check and mutate it
// (returning a rejection code and error to refuse), writes it and its audit event, commits,
// and notifies.
func (s *Service) change(ctx context.Context, id uuid.UUID, by audit.Event, kind TransitionKind,
	reason string, extra map[string]any, fn func(a *row, now time.Time) (string, error)) (Alarm, error) {
	action := string(kind)
	verb := map[TransitionKind]string{Acknowledged: "acknowledge", Silenced: "silence", Resolved: "resolve"}[kind]
	tx, err := s.cfg.Pool.Begin(ctx)
	if err != nil {
		return Alarm{}, fmt.Errorf("%s alarm %s: %w", verb, id, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	a, err := scanRow(tx.QueryRow(ctx, `SELECT `+alarmCols+` FROM alarms WHERE id=$1 FOR UPDATE`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		_ = tx.Rollback(ctx)
		return Alarm{}, s.reject(ctx, by, action, id, "alarm_not_found", fmt.Errorf("%s alarm %s: %w", verb, id, ErrNotFound))
	}
	if err != nil {
		return Alarm{}, fmt.Errorf("%s alarm %s: %w", verb, id, err)
	}
	now := s.now()
	if code, err := fn(&a, now); err != nil {
		_ = tx.Rollback(ctx)
		return Alarm{}, s.reject(ctx, by, action, id, code, fmt.Errorf("%s alarm %s: %w", verb, id, err))
	}
	a.UpdatedAt = now
	a.Revision++
	if err := update(ctx, tx, a); err != nil {
		return Alarm{}, err
	}
	t, err := s.record(ctx, tx, by, kind, a, reason, extra)
	if err != nil {
		return Alarm{}, err
	}
	if err := tx.Commit(ctx); err != nil {
		return Alarm{}, fmt.Errorf("%s alarm %s: commit: %w", verb, id, err)
	}
	s.Notify(ctx, []Transition{t})
	return a.Alarm, nil
}

func (s *Service) acknowledge(ctx context.Context, id uuid.UUID, by audit.Event, note string) (Alarm, error) {
	return s.change(ctx, id, by, Acknowledged, "", map[string]any{"note": note}, func(a *row, now time.Time) (string, error) {
		switch a.State {
		case StateResolved:
			return "alarm_resolved", fmt.Errorf("%w: alarm is resolved", ErrConflict)
		case StateAcknowledged:
			return "alarm_already_acknowledged", fmt.Errorf("%w: alarm is already acknowledged by %s", ErrConflict, a.AckedBy)
		}
		a.State = StateAcknowledged
		a.AckedBy, a.AckedAt = actorID(by), ptr(now)
		a.NextEscalation, a.NextReminder = nil, nil
		return "", nil
	})
}

func (s *Service) silence(ctx context.Context, id uuid.UUID, by audit.Event, reason string, d time.Duration) (Alarm, error) {
	reason = strings.TrimSpace(reason)
	var until time.Time
	return s.change(ctx, id, by, Silenced, reason, map[string]any{"duration_seconds": d.Seconds()}, func(a *row, now time.Time) (string, error) {
		if reason == "" {
			return "silence_reason_required", fmt.Errorf("%w: a silence needs a reason", ErrInvalidRequest)
		}
		if d <= 0 || d > s.cfg.MaxSilence {
			return "silence_duration_invalid", fmt.Errorf("%w: silence duration %s (want >0 and <= %s)", ErrInvalidRequest, d, s.cfg.MaxSilence)
		}
		if a.State == StateResolved {
			return "alarm_resolved", fmt.Errorf("%w: alarm is resolved", ErrConflict)
		}
		until = now.Add(d)
		a.SilencedUntil, a.SilencedBy, a.SilenceReason = ptr(until), actorID(by), reason
		a.NextReminder = nil // reminders resume when the silence expires (Tick)
		return "", nil
	})
}

func (s *Service) resolve(ctx context.Context, id uuid.UUID, by audit.Event, reason string) (Alarm, error) {
	reason = strings.TrimSpace(reason)
	return s.change(ctx, id, by, Resolved, reason, map[string]any{"manual": true}, func(a *row, now time.Time) (string, error) {
		if reason == "" {
			return "resolve_reason_required", fmt.Errorf("%w: resolving by hand needs a reason", ErrInvalidRequest)
		}
		if a.State == StateResolved {
			return "alarm_resolved", fmt.Errorf("%w: alarm is already resolved", ErrConflict)
		}
		a.State = StateResolved
		a.ResolvedAt, a.ResolvedBy, a.ResolveReason = ptr(now), actorID(by), reason
		a.NextEscalation, a.NextReminder = nil, nil
		return "", nil
	})
}

func actorID(by audit.Event) string {
	if by.Actor.ID == "" {
		return "unknown"
	}
	return by.Actor.ID
}

// tick runs due silence expiries, then escalations, then reminders, in batches, until none is due.
func (s *Service) tick(ctx context.Context) ([]Transition, error) {
	var all []Transition
	steps := []struct {
		kind  TransitionKind
		where string
		fn    func(a *row, now time.Time) (string, map[string]any)
	}{
		{SilenceExpired, `state <> 'resolved' AND silenced_until <= $1`, func(a *row, now time.Time) (string, map[string]any) {
			extra := map[string]any{"silenced_by": a.SilencedBy, "silence_reason": a.SilenceReason}
			a.SilencedUntil, a.SilencedBy, a.SilenceReason = nil, "", ""
			if a.State == StateActive {
				a.NextReminder = ptr(now) // remind at once: the alarm is still unacknowledged
			}
			return "silence_expired", extra
		}},
		{Escalated, `state = 'active' AND next_escalation_at <= $1`, func(a *row, now time.Time) (string, map[string]any) {
			due := *a.NextEscalation
			extra := map[string]any{"from_tier": a.Tier, "unacknowledged_since": a.OpenedAt}
			a.Tier++
			if a.Tier >= s.cfg.MaxTier {
				a.NextEscalation = nil
			} else {
				a.NextEscalation = ptr(due.Add(s.cfg.EscalateAfter))
			}
			return "unacknowledged", extra
		}},
		{Reminded, `state = 'active' AND next_reminder_at <= $1 AND (silenced_until IS NULL OR silenced_until <= $1)`, func(a *row, now time.Time) (string, map[string]any) {
			a.ReminderCount++
			iv := time.Duration(float64(a.reminderInterval) * s.cfg.ReminderFactor)
			if iv < s.cfg.ReminderMin {
				iv = s.cfg.ReminderMin
			}
			a.reminderInterval = iv
			a.NextReminder = ptr(now.Add(iv))
			return "unacknowledged", map[string]any{"reminder": a.ReminderCount, "next_interval_seconds": iv.Seconds()}
		}},
	}
	for _, st := range steps {
		for {
			ts, err := s.tickBatch(ctx, st.kind, st.where, st.fn)
			all = append(all, ts...)
			if err != nil {
				return all, err
			}
			if len(ts) == 0 {
				break
			}
		}
	}
	return all, nil
}

func (s *Service) tickBatch(ctx context.Context, kind TransitionKind, where string, fn func(a *row, now time.Time) (string, map[string]any)) ([]Transition, error) {
	now := s.now()
	tx, err := s.cfg.Pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("alarm tick %s: %w", kind, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	rows, err := tx.Query(ctx, `SELECT `+alarmCols+` FROM alarms WHERE `+where+`
		ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED`, now)
	if err != nil {
		return nil, fmt.Errorf("alarm tick %s: %w", kind, err)
	}
	var due []row
	for rows.Next() {
		a, err := scanRow(rows)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("alarm tick %s: %w", kind, err)
		}
		due = append(due, a)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("alarm tick %s: %w", kind, err)
	}
	var ts []Transition
	for _, a := range due {
		reason, extra := fn(&a, now)
		a.UpdatedAt = now
		a.Revision++
		if err := update(ctx, tx, a); err != nil {
			return nil, err
		}
		t, err := s.record(ctx, tx, audit.Event{Actor: systemActor}, kind, a, reason, extra)
		if err != nil {
			return nil, err
		}
		ts = append(ts, t)
	}
	if len(ts) == 0 {
		return nil, nil
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("alarm tick %s: commit: %w", kind, err)
	}
	s.Notify(ctx, ts)
	return ts, nil
}

// ResolveRule resolves, inside tx, every open alarm of a rule (when the rule is disabled),
// each audited; by is the actor disabling the rule. The caller notifies after commit.
func (s *Service) ResolveRule(ctx context.Context, tx pgx.Tx, ruleID string, by audit.Event, reason string) ([]Transition, error) {
	return s.resolveWhere(ctx, tx, `rule_id=$1`, ruleID, by, reason, map[string]any{"rule_disabled": true})
}

// ResolvePatient resolves, inside tx, every open alarm of a patient (discharge, end of
// monitoring), each audited. The caller notifies after commit.
func (s *Service) ResolvePatient(ctx context.Context, tx pgx.Tx, patientID uuid.UUID, by audit.Event, reason string) ([]Transition, error) {
	return s.resolveWhere(ctx, tx, `patient_id=$1`, patientID, by, reason, map[string]any{"patient_released": true})
}

func (s *Service) resolveWhere(ctx context.Context, tx pgx.Tx, where string, arg any, by audit.Event, reason string, extra map[string]any) ([]Transition, error) {
	rows, err := tx.Query(ctx, `SELECT `+alarmCols+` FROM alarms WHERE `+where+` AND state <> 'resolved' ORDER BY id FOR UPDATE`, arg)
	if err != nil {
		return nil, fmt.Errorf("resolve alarms: %w", err)
	}
	var open []row
	for rows.Next() {
		a, err := scanRow(rows)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("resolve alarms: %w", err)
		}
		open = append(open, a)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("resolve alarms: %w", err)
	}
	now := s.now()
	var ts []Transition
	for _, a := range open {
		a.State = StateResolved
		a.ResolvedAt, a.ResolvedBy, a.ResolveReason = ptr(now), actorID(by), reason
		a.NextEscalation, a.NextReminder = nil, nil
		a.UpdatedAt = now
		a.Revision++
		if err := update(ctx, tx, a); err != nil {
			return nil, err
		}
		t, err := s.record(ctx, tx, by, Resolved, a, reason, extra)
		if err != nil {
			return nil, err
		}
		ts = append(ts, t)
	}
	return ts, nil
}
