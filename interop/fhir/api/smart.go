package api

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/interop/fhir"
)

// Grant is an API token's SMART on FHIR scopes.
type Grant struct {
	TokenID uuid.UUID   `json:"token_id"`
	Scopes  fhir.Scopes `json:"-"`
	Scope   string      `json:"scope"` // the scopes, space-separated
	// Patient is the launch patient of patient/ scopes (uuid.Nil without them).
	Patient uuid.UUID `json:"patient_id,omitzero"`
}

// ErrUnknownToken: no API token with that id.
var ErrUnknownToken = errors.New("fhir: unknown API token")

// SetScopes gives an API token SMART scopes (replacing its earlier ones), audited as
// "fhir.smart_scopes.set" with by's actor in the same transaction. patient/ scopes need the
// patient; other scopes refuse one. Errors wrap fhir.ErrInvalidScope or ErrUnknownToken.
func (s *Service) SetScopes(ctx context.Context, by audit.Event, token uuid.UUID, scope string, patient uuid.UUID) (Grant, error) {
	if s.cfg.Recorder == nil {
		return Grant{}, errors.New("fhir api: Config.Recorder is required to set scopes")
	}
	ss, err := fhir.ParseScopes(scope)
	if err != nil {
		return Grant{}, err
	}
	if ss.NeedsPatient() != (patient != uuid.Nil) {
		return Grant{}, fmt.Errorf("%w: patient/ scopes need a patient, and only they", fhir.ErrInvalidScope)
	}
	g := Grant{TokenID: token, Scopes: ss, Scope: ss.String(), Patient: patient}
	now := s.cfg.Now().UTC()
	err = pgx.BeginFunc(ctx, s.cfg.Pool, func(tx pgx.Tx) error {
		var ok bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM auth_api_tokens WHERE id = $1)`, token).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return ErrUnknownToken
		}
		var pid any
		if patient != uuid.Nil {
			pid = patient
		}
		if _, err := tx.Exec(ctx, `INSERT INTO interop_smart_scopes (token_id, scopes, patient_id, granted_at, granted_by)
			VALUES ($1, $2, $3, $4, $5) ON CONFLICT (token_id) DO UPDATE SET scopes = $2, patient_id = $3, granted_at = $4, granted_by = $5`,
			token, g.Scope, pid, now, by.Actor.ID); err != nil {
			return err
		}
		ev := by
		ev.Action, ev.Outcome, ev.Time = "fhir.smart_scopes.set", audit.OutcomeSuccess, now
		ev.Object = audit.Object{Type: "api_token", ID: token.String()}
		ev.Payload = map[string]any{"scope": g.Scope, "patient_id": pid}
		_, err := s.cfg.Recorder.Record(ctx, tx, ev)
		return err
	})
	if err != nil {
		return Grant{}, fmt.Errorf("set SMART scopes: %w", err)
	}
	return g, nil
}

// ScopesOf returns a token's SMART scopes; ok is false for a token without any (it reads
// FHIR as its roles allow).
func (s *Service) ScopesOf(ctx context.Context, token uuid.UUID) (g Grant, ok bool, err error) {
	var pid *uuid.UUID
	err = s.cfg.Pool.QueryRow(ctx, `SELECT scopes, patient_id FROM interop_smart_scopes WHERE token_id = $1`, token).Scan(&g.Scope, &pid)
	if errors.Is(err, pgx.ErrNoRows) {
		return Grant{}, false, nil
	}
	if err != nil {
		return Grant{}, false, fmt.Errorf("SMART scopes: %w", err)
	}
	if g.Scopes, err = fhir.ParseScopes(g.Scope); err != nil {
		return Grant{}, false, err
	}
	g.TokenID = token
	if pid != nil {
		g.Patient = *pid
	}
	return g, true, nil
}
