package auth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/rowdigest"
)

// PolicyVersion is one change of the policy.
type PolicyVersion struct {
	Version   int64          `json:"version"`
	ChangedAt time.Time      `json:"changed_at"`
	Actor     string         `json:"actor"`
	Change    string         `json:"change"`
	Detail    map[string]any `json:"detail"`
}

// bumpPolicy starts a policy change inside tx: a new version row, and the audit event
// "policy.<change>" that recordPolicy records after the change (all commit or roll back
// together). It returns the version, the event and the policy lines as they were before.
func (s *Service) bumpPolicy(ctx context.Context, tx pgx.Tx, o Origin, change string, detail map[string]any) (int64, audit.Event, map[string]rowdigest.Row, error) {
	v, ev, err := s.bumpVersion(ctx, tx, o, change, detail)
	if err != nil {
		return 0, audit.Event{}, nil, err
	}
	before, err := policyRows(ctx, tx)
	return v, ev, before, err
}

func (s *Service) bumpVersion(ctx context.Context, tx pgx.Tx, o Origin, change string, detail map[string]any) (int64, audit.Event, error) {
	// Serialise versions: the row lock of the advisory key orders concurrent changes.
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('vigil.auth.policy'))"); err != nil {
		return 0, audit.Event{}, err
	}
	var v int64
	if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) + 1 FROM auth_policy_versions").Scan(&v); err != nil {
		return 0, audit.Event{}, err
	}
	now := s.now()
	ev := o.event(now, "policy."+change, audit.Object{Type: "policy", ID: fmt.Sprint(v)}, audit.OutcomeSuccess, "", detail)
	if _, err := tx.Exec(ctx, `INSERT INTO auth_policy_versions (version, changed_at, actor_kind, actor_id, change, detail)
		VALUES ($1, $2, $3, $4, $5, $6)`, v, now, string(ev.Actor.Kind), ev.Actor.ID, change, detail); err != nil {
		return 0, audit.Event{}, err
	}
	return v, ev, nil
}

// policySpecs are the tables a policy change writes: the policy lines, and the service
// accounts and API tokens whose changes (a token issued or revoked, an account disabled) are
// policy changes.
var policySpecs = []rowdigest.Spec{rowdigest.PolicyRules, rowdigest.ServiceAccounts, rowdigest.APITokens}

// policyRows reads the rows of policySpecs with their event ids and digests
// (audit/rowdigest), by rowdigest.Spec.Ref.
func policyRows(ctx context.Context, tx pgx.Tx) (map[string]rowdigest.Row, error) {
	out := map[string]rowdigest.Row{}
	for _, sp := range policySpecs {
		err := sp.Rows(ctx, tx, func(r rowdigest.Row) error {
			out[sp.Ref(r.Key)] = r
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// specOf returns the spec of policySpecs whose rows ref names, and the row's key.
func specOf(ref string) (rowdigest.Spec, string, error) {
	for _, sp := range policySpecs {
		if k, ok := strings.CutPrefix(ref, sp.Table+"/"); ok {
			return sp, k, nil
		}
	}
	return rowdigest.Spec{}, "", fmt.Errorf("auth: no audited table for row %s", ref)
}

// policyStampsPerEvent bounds the policy lines one event ties to itself (their digests stay
// well under audit.MaxPayloadBytes); more go in "auth.policy_rows_written" events of the version.
const policyStampsPerEvent = 100

// recordPolicy records ev, the event of a policy change, after the change: every line the
// change added or rewrote is tied to it (audit/rowdigest: the event's id and the digest of the
// line), and its payload names every line the change removed, so that `vigil audit verify`
// finds a policy line added, changed, put back or removed behind the system's back.
func (s *Service) recordPolicy(ctx context.Context, tx pgx.Tx, ev audit.Event, before map[string]rowdigest.Row) error {
	after, err := policyRows(ctx, tx)
	if err != nil {
		return err
	}
	var written, removed []string
	for k, r := range after {
		b, ok := before[k]
		if !ok || r.EventID == nil || b.EventID == nil || *r.EventID != *b.EventID || r.Digest != b.Digest {
			written = append(written, k)
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			removed = append(removed, k)
		}
	}
	slices.Sort(written)
	slices.Sort(removed)
	for first := true; first || len(written)+len(removed) > 0; first = false {
		if !first {
			ev = audit.Event{Time: ev.Time, Actor: ev.Actor, Action: "auth.policy_rows_written", Object: ev.Object, Outcome: ev.Outcome,
				RequestID: ev.RequestID, SourceAddr: ev.SourceAddr}
		}
		w := written[:min(len(written), policyStampsPerEvent)]
		written = written[len(w):]
		r := removed[:min(len(removed), policyStampsPerEvent-len(w))]
		removed = removed[len(r):]
		if err := stampEvent(ctx, tx, &ev, func(ds rowdigest.Digests, id uuid.UUID) error {
			for _, ref := range w {
				sp, k, err := specOf(ref)
				if err == nil {
					err = ds.Stamp(ctx, tx, sp, k, id)
				}
				if err != nil {
					return err
				}
			}
			for _, ref := range r {
				sp, k, err := specOf(ref)
				if err != nil {
					return err
				}
				ds.Deleted(sp, k)
			}
			return nil
		}); err != nil {
			return err
		}
		if _, err := s.cfg.Audit.Record(ctx, tx, ev); err != nil {
			return err
		}
	}
	return nil
}

// changePolicy runs fn and the version bump in one transaction, then reloads the enforcer.
func (s *Service) changePolicy(ctx context.Context, o Origin, change string, detail map[string]any, fn func(tx pgx.Tx, version int64) error) error {
	if _, err := s.changePolicyTx(ctx, o, change, detail, fn); err != nil {
		return err
	}
	return s.enf.Reload(ctx)
}

// changePolicyTx runs fn and the version bump in one transaction and returns the version.
func (s *Service) changePolicyTx(ctx context.Context, o Origin, change string, detail map[string]any, fn func(tx pgx.Tx, version int64) error) (int64, error) {
	var v int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		var ev audit.Event
		var before map[string]rowdigest.Row
		if v, ev, before, err = s.bumpPolicy(ctx, tx, o, change, detail); err != nil {
			return err
		}
		if err := fn(tx, v); err != nil {
			return err
		}
		return s.recordPolicy(ctx, tx, ev, before)
	})
	return v, err
}

func (s *Service) installDefaultPolicy(ctx context.Context) error {
	var n int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM auth_policy_versions").Scan(&n); err != nil {
		return fmt.Errorf("auth: policy: %w", err)
	}
	if n > 0 {
		return nil
	}
	rules := DefaultPolicy()
	o := Origin{Actor: audit.Actor{Kind: audit.ActorService, ID: "vigil", AuthMethod: "internal"}}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		v, ev, before, err := s.bumpPolicy(ctx, tx, o, "default_installed", map[string]any{"rules": len(rules)})
		if err != nil {
			return err
		}
		if v != 1 {
			return s.recordPolicy(ctx, tx, ev, before) // another process installed it meanwhile
		}
		for _, r := range rules {
			if _, err := tx.Exec(ctx, `INSERT INTO auth_policy_rules (ptype, v0, v1, v2, v3, source, version)
				VALUES ('p', $1, $2, $3, $4, 'default', $5) ON CONFLICT DO NOTHING`, r.Role, r.Object, r.Action, r.Scope, v); err != nil {
				return err
			}
		}
		return s.recordPolicy(ctx, tx, ev, before)
	})
	if err != nil {
		return fmt.Errorf("auth: install default policy: %w", err)
	}
	return nil
}

// AddRule adds a policy line, audited as "policy.rule_added".
func (s *Service) AddRule(ctx context.Context, o Origin, r Rule) error {
	if err := r.validate(); err != nil {
		return err
	}
	return s.changePolicy(ctx, o, "rule_added", map[string]any{"rule": r}, func(tx pgx.Tx, v int64) error {
		tag, err := tx.Exec(ctx, `INSERT INTO auth_policy_rules (ptype, v0, v1, v2, v3, source, version)
			VALUES ('p', $1, $2, $3, $4, 'admin', $5) ON CONFLICT DO NOTHING`, r.Role, r.Object, r.Action, r.Scope, v)
		if err == nil && tag.RowsAffected() == 0 {
			return fmt.Errorf("add rule %s: %w", r, ErrConflict)
		}
		return err
	})
}

// RemoveRule removes a policy line, audited as "policy.rule_removed".
func (s *Service) RemoveRule(ctx context.Context, o Origin, r Rule) error {
	return s.changePolicy(ctx, o, "rule_removed", map[string]any{"rule": r}, func(tx pgx.Tx, _ int64) error {
		tag, err := tx.Exec(ctx, `DELETE FROM auth_policy_rules WHERE ptype = 'p' AND v0 = $1 AND v1 = $2 AND v2 = $3 AND v3 = $4`,
			r.Role, r.Object, r.Action, r.Scope)
		if err == nil && tag.RowsAffected() == 0 {
			return fmt.Errorf("remove rule %s: %w", r, ErrNotFound)
		}
		return err
	})
}

// Rules lists the policy lines in the database.
func (s *Service) Rules(ctx context.Context) ([]Rule, error) {
	rows, err := s.pool.Query(ctx, "SELECT v0, v1, v2, v3 FROM auth_policy_rules WHERE ptype = 'p' ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("auth: rules: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[Rule])
}

// PolicyHistory lists the policy's versions, newest first (at most limit).
func (s *Service) PolicyHistory(ctx context.Context, limit int) ([]PolicyVersion, error) {
	rows, err := s.pool.Query(ctx, `SELECT version, changed_at, actor_kind || ':' || actor_id, change, detail
		FROM auth_policy_versions ORDER BY version DESC LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("auth: policy history: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[PolicyVersion])
}

func validSubject(sub string) bool {
	kind, id, ok := strings.Cut(sub, ":")
	if !ok || (kind != "user" && kind != "svc" && kind != "token") {
		return false
	}
	_, err := uuid.Parse(id)
	return err == nil
}

// GrantRole gives subject role in domain, audited as "policy.role_granted". Non-clinical roles
// are granted for "*" only.
func (s *Service) GrantRole(ctx context.Context, o Origin, subject, role string, d Domain) error {
	return s.grantRole(ctx, o, subject, role, d, "admin")
}

func (s *Service) grantRole(ctx context.Context, o Origin, subject, role string, d Domain, source string) error {
	ri, ok := LookupRole(role)
	if !ok {
		return fmt.Errorf("%w: unknown role %q", ErrInvalid, role)
	}
	if !validSubject(subject) {
		return fmt.Errorf("%w: subject %q: want user:<id>, svc:<id> or token:<id>", ErrInvalid, subject)
	}
	if _, isWard := d.Ward(); !isWard && d != AllDomains {
		return fmt.Errorf("%w: domain %q", ErrInvalid, d)
	}
	if d != AllDomains && !ri.Clinical {
		return fmt.Errorf("%w: role %s is granted for every ward (\"*\") only", ErrInvalid, role)
	}
	if err := s.subjectExists(ctx, subject); err != nil {
		return err
	}
	detail := map[string]any{"subject": subject, "role": role, "domain": string(d), "source": source}
	return s.changePolicy(ctx, o, "role_granted", detail, func(tx pgx.Tx, v int64) error {
		tag, err := tx.Exec(ctx, `INSERT INTO auth_policy_rules (ptype, v0, v1, v2, source, version)
			VALUES ('g', $1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`, subject, role, string(d), source, v)
		if err == nil && tag.RowsAffected() == 0 {
			return fmt.Errorf("grant %s %s in %s: %w", subject, role, d, ErrConflict)
		}
		return err
	})
}

// RevokeRole takes role in domain from subject, audited as "policy.role_revoked".
func (s *Service) RevokeRole(ctx context.Context, o Origin, subject, role string, d Domain) error {
	detail := map[string]any{"subject": subject, "role": role, "domain": string(d)}
	return s.changePolicy(ctx, o, "role_revoked", detail, func(tx pgx.Tx, _ int64) error {
		tag, err := tx.Exec(ctx, `DELETE FROM auth_policy_rules WHERE ptype = 'g' AND v0 = $1 AND v1 = $2 AND v2 = $3`,
			subject, role, string(d))
		if err == nil && tag.RowsAffected() == 0 {
			return fmt.Errorf("revoke %s %s in %s: %w", subject, role, d, ErrNotFound)
		}
		return err
	})
}

// Grants lists the role grants in the database, of one subject ("" for all).
func (s *Service) Grants(ctx context.Context, subject string) ([]RoleGrant, error) {
	rows, err := s.pool.Query(ctx, `SELECT v0, v1, v2, source FROM auth_policy_rules
		WHERE ptype = 'g' AND ($1 = '' OR v0 = $1) ORDER BY v0, v1, v2`, subject)
	if err != nil {
		return nil, fmt.Errorf("auth: grants: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (RoleGrant, error) {
		var g RoleGrant
		var d string
		err := r.Scan(&g.Subject, &g.Role, &d, &g.Source)
		g.Domain = Domain(d)
		return g, err
	})
}

func (s *Service) subjectExists(ctx context.Context, subject string) error {
	kind, id, _ := strings.Cut(subject, ":")
	table := map[string]string{"user": "auth_users", "svc": "auth_service_accounts", "token": "auth_api_tokens"}[kind]
	var ok bool
	if err := s.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+table+" WHERE id = $1)", id).Scan(&ok); err != nil {
		return fmt.Errorf("auth: subject %s: %w", subject, err)
	}
	if !ok {
		return fmt.Errorf("subject %s: %w", subject, ErrNotFound)
	}
	return nil
}

// errorsIsAuth reports whether err is one of the auth outcomes (not an internal failure).
func errorsIsAuth(err error) bool {
	var e *Error
	return errors.As(err, &e)
}
