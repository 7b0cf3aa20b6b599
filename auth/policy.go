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
func (s *Service) bumpPolicy(ctx context.Context, tx pgx.Tx, o Origin, change string, detail map[string]any, scope []rowScope) (int64, audit.Event, map[string]rowdigest.Row, error) {
	v, ev, err := s.bumpVersion(ctx, tx, o, change, detail)
	if err != nil {
		return 0, audit.Event{}, nil, err
	}
	before, err := policyRows(ctx, tx, scope)
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

// rowScope is a part of an audited table: the rows of spec that match where (SQL over the
// table aliased t, with args).
type rowScope struct {
	spec  rowdigest.Spec
	where string
	args  []any
}

// allRows is the scope of a change that may write any row of policySpecs; noRows that of one
// that writes none of them (a break-glass grant).
var (
	allRows []rowScope
	noRows  = []rowScope{}
)

// grantsOf is the scope of a change of one subject's grants.
func grantsOf(subject string) rowScope {
	return rowScope{rowdigest.PolicyRules, "WHERE t.ptype = 'g' AND t.v0 = $1", []any{subject}}
}

// policyLines is the scope of a change of the policy lines (what roles may do).
var policyLines = rowScope{rowdigest.PolicyRules, "WHERE t.ptype = 'p'", nil}

// policyRows reads the rows of policySpecs with their event ids and digests
// (audit/rowdigest), by rowdigest.Spec.Ref: those of scope, or all of them when scope is nil.
// A change reads the rows it may write before and after (recordPolicy): its scope keeps the
// cost of a change independent of the size of the tables (one indexed read of one subject's
// grants for a role grant).
func policyRows(ctx context.Context, tx pgx.Tx, scope []rowScope) (map[string]rowdigest.Row, error) {
	out := map[string]rowdigest.Row{}
	add := func(sp rowdigest.Spec) func(rowdigest.Row) error {
		return func(r rowdigest.Row) error {
			out[sp.Ref(r.Key)] = r
			return nil
		}
	}
	if scope == nil {
		for _, sp := range policySpecs {
			if err := sp.Rows(ctx, tx, add(sp)); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	for _, sc := range scope {
		if err := scopedRows(ctx, tx, sc, add(sc.spec)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// scopedRows is rowdigest.Spec.Rows over the rows of one scope: the same columns and digest.
func scopedRows(ctx context.Context, tx pgx.Tx, sc rowScope, fn func(rowdigest.Row) error) error {
	sp := sc.spec
	q := "SELECT " + sp.Key + ", t.audit_event_id, t.audit_digest"
	for _, c := range sp.Cols {
		q += ", " + c
	}
	rows, err := tx.Query(ctx, q+" FROM "+sp.Table+" t "+sc.where, sc.args...)
	if err != nil {
		return fmt.Errorf("%s: %w", sp.Table, err)
	}
	defer rows.Close()
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return fmt.Errorf("%s: %w", sp.Table, err)
		}
		r := rowdigest.Row{}
		r.Key, _ = vals[0].(string)
		if id, ok := vals[1].([16]byte); ok {
			u := uuid.UUID(id)
			r.EventID = &u
		}
		r.Stored, _ = vals[2].([]byte)
		if r.Digest, err = rowdigest.Digest(sp.Table, sp.Names, vals[3:]); err != nil {
			return fmt.Errorf("%s %s: %w", sp.Table, r.Key, err)
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("%s: %w", sp.Table, err)
	}
	return nil
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
func (s *Service) recordPolicy(ctx context.Context, tx pgx.Tx, ev audit.Event, before map[string]rowdigest.Row, scope []rowScope) error {
	after, err := policyRows(ctx, tx, scope)
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

// changePolicy runs fn, the version bump, the change's audit event and its announcement to
// the other processes (NOTIFY, delivered on commit) in one transaction; fn describes what it
// changed in the delta. Once committed, the change is applied to this process's enforcer
// incrementally. scope is the audited rows fn may write (nil: any).
func (s *Service) changePolicy(ctx context.Context, o Origin, change string, detail map[string]any, scope []rowScope,
	fn func(tx pgx.Tx, version int64, d *policyDelta) error) error {
	var d policyDelta
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		d = policyDelta{}
		v, ev, before, err := s.bumpPolicy(ctx, tx, o, change, detail, scope)
		if err != nil {
			return err
		}
		d.Version = v
		if err := fn(tx, v, &d); err != nil {
			return err
		}
		if err := s.recordPolicy(ctx, tx, ev, before, scope); err != nil {
			return err
		}
		return notifyPolicy(ctx, tx, d)
	})
	if err != nil {
		return err
	}
	return s.enf.apply(ctx, d)
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
		v, ev, before, err := s.bumpPolicy(ctx, tx, o, "default_installed", map[string]any{"rules": len(rules)}, allRows)
		if err != nil {
			return err
		}
		if err := notifyPolicy(ctx, tx, policyDelta{Version: v, Reload: true}); err != nil {
			return err
		}
		if v != 1 {
			return s.recordPolicy(ctx, tx, ev, before, allRows) // another process installed it meanwhile
		}
		for _, r := range rules {
			if _, err := tx.Exec(ctx, `INSERT INTO auth_policy_rules (ptype, v0, v1, v2, v3, source, version)
				VALUES ('p', $1, $2, $3, $4, 'default', $5) ON CONFLICT DO NOTHING`, r.Role, r.Object, r.Action, r.Scope, v); err != nil {
				return err
			}
		}
		return s.recordPolicy(ctx, tx, ev, before, allRows)
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
	return s.changePolicy(ctx, o, "rule_added", map[string]any{"rule": r}, []rowScope{policyLines}, func(tx pgx.Tx, v int64, d *policyDelta) error {
		tag, err := tx.Exec(ctx, `INSERT INTO auth_policy_rules (ptype, v0, v1, v2, v3, source, version)
			VALUES ('p', $1, $2, $3, $4, 'admin', $5) ON CONFLICT DO NOTHING`, r.Role, r.Object, r.Action, r.Scope, v)
		if err == nil && tag.RowsAffected() == 0 {
			return fmt.Errorf("add rule %s: %w", r, ErrConflict)
		}
		d.Added = []Rule{r}
		return err
	})
}

// RemoveRule removes a policy line, audited as "policy.rule_removed".
func (s *Service) RemoveRule(ctx context.Context, o Origin, r Rule) error {
	return s.changePolicy(ctx, o, "rule_removed", map[string]any{"rule": r}, []rowScope{policyLines}, func(tx pgx.Tx, _ int64, d *policyDelta) error {
		tag, err := tx.Exec(ctx, `DELETE FROM auth_policy_rules WHERE ptype = 'p' AND v0 = $1 AND v1 = $2 AND v2 = $3 AND v3 = $4`,
			r.Role, r.Object, r.Action, r.Scope)
		if err == nil && tag.RowsAffected() == 0 {
			return fmt.Errorf("remove rule %s: %w", r, ErrNotFound)
		}
		d.Removed = []Rule{r}
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
	return s.changePolicy(ctx, o, "role_granted", detail, []rowScope{grantsOf(subject)}, func(tx pgx.Tx, v int64, pd *policyDelta) error {
		tag, err := tx.Exec(ctx, `INSERT INTO auth_policy_rules (ptype, v0, v1, v2, source, version)
			VALUES ('g', $1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`, subject, role, string(d), source, v)
		if err == nil && tag.RowsAffected() == 0 {
			return fmt.Errorf("grant %s %s in %s: %w", subject, role, d, ErrConflict)
		}
		pd.Grants = []RoleGrant{{Subject: subject, Role: role, Domain: d, Source: source}}
		return err
	})
}

// RevokeRole takes role in domain from subject, audited as "policy.role_revoked".
func (s *Service) RevokeRole(ctx context.Context, o Origin, subject, role string, d Domain) error {
	detail := map[string]any{"subject": subject, "role": role, "domain": string(d)}
	return s.changePolicy(ctx, o, "role_revoked", detail, []rowScope{grantsOf(subject)}, func(tx pgx.Tx, _ int64, pd *policyDelta) error {
		tag, err := tx.Exec(ctx, `DELETE FROM auth_policy_rules WHERE ptype = 'g' AND v0 = $1 AND v1 = $2 AND v2 = $3`,
			subject, role, string(d))
		if err == nil && tag.RowsAffected() == 0 {
			return fmt.Errorf("revoke %s %s in %s: %w", subject, role, d, ErrNotFound)
		}
		pd.Revoked = []RoleGrant{{Subject: subject, Role: role, Domain: d}}
		return err
	})
}

// deleteGrants deletes grouping lines (del: a DELETE of auth_policy_rules) and returns them.
func deleteGrants(ctx context.Context, tx pgx.Tx, del string, args ...any) ([]RoleGrant, error) {
	rows, err := tx.Query(ctx, del+" RETURNING v0, v1, v2", args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (RoleGrant, error) {
		var g RoleGrant
		var d string
		err := r.Scan(&g.Subject, &g.Role, &d)
		g.Domain = Domain(d)
		return g, err
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
