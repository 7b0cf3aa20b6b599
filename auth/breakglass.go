package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/rowdigest"
)

// BreakGlassGrant is an emergency access of one user to one patient outside their wards and
// care teams, for a bounded time, with a stated reason.
type BreakGlassGrant struct {
	ID         uuid.UUID  `json:"id"`
	UserID     uuid.UUID  `json:"user_id"`
	PatientID  uuid.UUID  `json:"patient_id"`
	Reason     string     `json:"reason"`
	OpenedAt   time.Time  `json:"opened_at"`
	ExpiresAt  time.Time  `json:"expires_at"`
	ClosedAt   *time.Time `json:"closed_at,omitempty"`
	ReviewedAt *time.Time `json:"reviewed_at,omitempty"`
	ReviewedBy string     `json:"reviewed_by,omitempty"`
}

func reasonAAD(id uuid.UUID) []byte { return []byte("auth/break-glass/" + id.String() + "/reason") }

// BreakGlass opens a patient for p: the policy must allow (break_glass, open) for p, the
// reason must be stated (at least 10 characters) and the duration within BreakGlassConfig.Max
// (0 = BreakGlassConfig.Default). The grant is a policy change (applied at once on every server) recorded
// as the audit event "access.break_glass.opened" with the patient, the reason and the expiry;
// it is listed by BreakGlassGrants until reviewed. A refusal is audited as
// "access.break_glass.refused". The server notifies (SSE, webhook) on success.
func (s *Service) BreakGlass(ctx context.Context, p *Principal, o Origin, patient uuid.UUID, reason string, d time.Duration) (BreakGlassGrant, error) {
	now := s.now()
	refuse := func(pub *Error, code string) (BreakGlassGrant, error) {
		_, err := s.cfg.Audit.RecordNow(ctx, o.event(now, "access.break_glass.refused", audit.Object{Type: "patient", ID: patient.String()},
			audit.OutcomeRejected, code, nil))
		if err != nil {
			return BreakGlassGrant{}, fmt.Errorf("break glass: audit refusal: %w", err)
		}
		return BreakGlassGrant{}, fail(pub, code)
	}
	if p == nil || p.Kind != audit.ActorUser {
		return refuse(ErrForbidden, "not_a_user")
	}
	if _, err := s.enf.Allow(p, "open", Target{Object: ObjBreakGlass}); err != nil {
		return refuse(ErrForbidden, "policy_denied")
	}
	reason = strings.TrimSpace(reason)
	if d == 0 {
		d = s.cfg.BreakGlass.Default
	}
	switch {
	case utf8.RuneCountInString(reason) < 10 || len(reason) > 2000:
		return refuse(ErrBreakGlassReason, "reason_missing")
	case d < 0 || d > s.cfg.BreakGlass.Max:
		return refuse(ErrBreakGlassReason, "duration_out_of_bounds")
	case patient == uuid.Nil:
		return BreakGlassGrant{}, fmt.Errorf("%w: patient id is required", ErrInvalid)
	}
	g := BreakGlassGrant{ID: uuid.Must(uuid.NewV7()), UserID: p.ID, PatientID: patient, Reason: reason, OpenedAt: now, ExpiresAt: now.Add(d)}
	sealed, err := s.cfg.Sealer.Seal(ctx, []byte(reason), reasonAAD(g.ID))
	if err != nil {
		return BreakGlassGrant{}, fmt.Errorf("break glass: %w", err)
	}
	detail := map[string]any{"grant_id": g.ID, "user_id": p.ID, "patient_id": patient, "expires_at": g.ExpiresAt}
	err = s.changePolicy(ctx, o, "break_glass_opened", detail, noRows, func(tx pgx.Tx, _ int64, d *policyDelta) error {
		if _, err := tx.Exec(ctx, `INSERT INTO auth_break_glass (id, user_id, patient_id, reason_sealed, opened_at, expires_at)
			VALUES ($1, $2, $3, $4, $5, $6)`, g.ID, g.UserID, patient, sealed, now, g.ExpiresAt); err != nil {
			return err
		}
		// The access event: the payload (which stays in PostgreSQL, committed to in the log) holds the reason.
		// The grant's row is tied to it (audit/rowdigest).
		ev := o.event(now, "access.break_glass.opened", audit.Object{Type: "patient", ID: patient.String()},
			audit.OutcomeSuccess, "", map[string]any{"grant_id": g.ID, "reason": reason, "expires_at": g.ExpiresAt,
				"session_id": p.SessionID})
		if err := stampBreakGlass(ctx, tx, &ev, g.ID); err != nil {
			return err
		}
		_, err := s.cfg.Audit.Record(ctx, tx, ev)
		// The grant takes effect at once, here and on every other server, without reloading
		// the whole policy.
		d.Glass = &glassDelta{ID: g.ID, User: g.UserID, Patient: patient, Expires: g.ExpiresAt}
		return err
	})
	if err != nil {
		return BreakGlassGrant{}, fmt.Errorf("break glass: %w", err)
	}
	return g, nil
}

// BreakGlassGrants lists grants, newest first: only those not reviewed yet when unreviewed.
func (s *Service) BreakGlassGrants(ctx context.Context, unreviewed bool, limit int) ([]BreakGlassGrant, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, user_id, patient_id, reason_sealed, opened_at, expires_at, closed_at, reviewed_at, coalesce(reviewed_by, '')
		FROM auth_break_glass WHERE NOT $1 OR reviewed_at IS NULL ORDER BY opened_at DESC, id DESC LIMIT $2`, unreviewed, limit)
	if err != nil {
		return nil, fmt.Errorf("break-glass grants: %w", err)
	}
	type row struct {
		g      BreakGlassGrant
		sealed []byte
	}
	raw, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		err := r.Scan(&x.g.ID, &x.g.UserID, &x.g.PatientID, &x.sealed, &x.g.OpenedAt, &x.g.ExpiresAt, &x.g.ClosedAt, &x.g.ReviewedAt, &x.g.ReviewedBy)
		return x, err
	})
	if err != nil {
		return nil, fmt.Errorf("break-glass grants: %w", err)
	}
	out := make([]BreakGlassGrant, len(raw))
	for i, x := range raw {
		plain, err := s.cfg.Sealer.Open(ctx, x.sealed, reasonAAD(x.g.ID))
		if err != nil {
			return nil, fmt.Errorf("break-glass grant %s: %w", x.g.ID, err)
		}
		x.g.Reason = string(plain)
		out[i] = x.g
	}
	return out, nil
}

// ReviewBreakGlass marks a grant reviewed (by the reviewer of o), audited as
// "access.break_glass.reviewed" with the reviewer's note.
func (s *Service) ReviewBreakGlass(ctx context.Context, o Origin, id uuid.UUID, note string) error {
	now := s.now()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "UPDATE auth_break_glass SET reviewed_at = $2, reviewed_by = $3 WHERE id = $1 AND reviewed_at IS NULL",
			id, now, o.Actor.ID)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("review break-glass grant %s: %w (or already reviewed)", id, ErrNotFound)
		}
		ev := o.event(now, "access.break_glass.reviewed", audit.Object{Type: "break_glass", ID: id.String()},
			audit.OutcomeSuccess, "", map[string]any{"note": note})
		if err := stampBreakGlass(ctx, tx, &ev, id); err != nil {
			return err
		}
		_, err = s.cfg.Audit.Record(ctx, tx, ev)
		return err
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("review break glass: %w", err)
	}
	return err
}

// stampBreakGlass ties the grant's row to ev (audit/rowdigest): `vigil audit verify` finds a
// grant extended, re-opened, marked reviewed or inserted behind the system's back.
func stampBreakGlass(ctx context.Context, tx pgx.Tx, ev *audit.Event, grant uuid.UUID) error {
	return stampEvent(ctx, tx, ev, func(ds rowdigest.Digests, id uuid.UUID) error {
		return ds.Stamp(ctx, tx, rowdigest.BreakGlass, grant.String(), id)
	})
}
