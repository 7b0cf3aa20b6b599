package auth

import (
	"context"
	"encoding/base64"
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

// ServiceAccount is a machine principal (CI, an integration).
type ServiceAccount struct {
	ID        uuid.UUID   `json:"id"`
	Name      string      `json:"name"`
	Status    string      `json:"status"`
	CreatedAt time.Time   `json:"created_at"`
	Roles     []RoleGrant `json:"roles"`
}

// APIToken is a service account's bearer token. Token is shown once, at issue; only its
// SHA-256 is stored.
type APIToken struct {
	ID               uuid.UUID  `json:"id"`
	ServiceAccountID uuid.UUID  `json:"service_account_id"`
	Name             string     `json:"name"`
	Token            string     `json:"token,omitempty"`
	Roles            []string   `json:"roles"`
	CreatedAt        time.Time  `json:"created_at"`
	ExpiresAt        time.Time  `json:"expires_at"`
	RevokedAt        *time.Time `json:"revoked_at,omitempty"`
	LastUsedAt       *time.Time `json:"last_used_at,omitempty"`
}

const (
	tokenPrefix     = "vgt_"
	defaultTokenTTL = 90 * 24 * time.Hour
	maxTokenTTL     = 366 * 24 * time.Hour
)

// CreateServiceAccount adds a service account, audited as "service_account.created". Give it
// roles with GrantRole(ServiceSubject(id), …); its tokens carry a subset of them.
func (s *Service) CreateServiceAccount(ctx context.Context, o Origin, name string) (ServiceAccount, error) {
	name = strings.TrimSpace(name)
	if !nameRE(strings.ReplaceAll(name, "-", "_")) {
		return ServiceAccount{}, fmt.Errorf("%w: service account name %q: lower-case letters, digits, - and _", ErrInvalid, name)
	}
	now := s.now()
	sa := ServiceAccount{ID: uuid.Must(uuid.NewV7()), Name: name, Status: StatusActive, CreatedAt: now}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO auth_service_accounts (id, name, status, created_at) VALUES ($1, $2, 'active', $3)",
			sa.ID, name, now); err != nil {
			return err
		}
		ev := o.event(now, "service_account.created", audit.Object{Type: "service_account", ID: sa.ID.String()}, audit.OutcomeSuccess, "", map[string]any{"name": name})
		if err := stampEvent(ctx, tx, &ev, func(ds rowdigest.Digests, id uuid.UUID) error {
			return ds.Stamp(ctx, tx, rowdigest.ServiceAccounts, sa.ID.String(), id)
		}); err != nil {
			return err
		}
		_, err := s.cfg.Audit.Record(ctx, tx, ev)
		return err
	})
	if isUnique(err) {
		return ServiceAccount{}, fmt.Errorf("create service account %q: %w", name, ErrConflict)
	}
	if err != nil {
		return ServiceAccount{}, fmt.Errorf("create service account: %w", err)
	}
	return sa, nil
}

// ServiceAccounts lists the service accounts.
func (s *Service) ServiceAccounts(ctx context.Context) ([]ServiceAccount, error) {
	rows, err := s.pool.Query(ctx, "SELECT id, name, status, created_at FROM auth_service_accounts ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("service accounts: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ServiceAccount, error) {
		var a ServiceAccount
		err := r.Scan(&a.ID, &a.Name, &a.Status, &a.CreatedAt)
		return a, err
	})
	for i := range out {
		out[i].Roles = s.enf.RolesOf(ServiceSubject(out[i].ID))
	}
	return out, err
}

// IssueAPIToken issues a bearer token for a service account, scoped to roles (each held by the
// account; empty = all of them, in the same domains), valid for ttl (0 = 90 days, at most 366
// days). The token's grants are policy lines of its own subject (token:<id>), removed when it
// is revoked. Audited as "policy.token_issued".
func (s *Service) IssueAPIToken(ctx context.Context, o Origin, account uuid.UUID, name string, roles []string, ttl time.Duration) (APIToken, error) {
	if ttl == 0 {
		ttl = defaultTokenTTL
	}
	if ttl < 0 || ttl > maxTokenTTL {
		return APIToken{}, fmt.Errorf("%w: token lifetime must be between 0 and 366 days", ErrInvalid)
	}
	var status string
	if err := s.pool.QueryRow(ctx, "SELECT status FROM auth_service_accounts WHERE id = $1", account).Scan(&status); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return APIToken{}, fmt.Errorf("service account %s: %w", account, ErrNotFound)
		}
		return APIToken{}, fmt.Errorf("issue token: %w", err)
	}
	if status != StatusActive {
		return APIToken{}, fmt.Errorf("%w: service account %s is disabled", ErrInvalid, account)
	}
	held := s.enf.RolesOf(ServiceSubject(account))
	var grants []RoleGrant
	for _, g := range held {
		if len(roles) == 0 || slices.Contains(roles, g.Role) {
			grants = append(grants, g)
		}
	}
	for _, r := range roles {
		if !slices.ContainsFunc(held, func(g RoleGrant) bool { return g.Role == r }) {
			return APIToken{}, fmt.Errorf("%w: the service account does not hold role %q", ErrInvalid, r)
		}
	}
	if len(grants) == 0 {
		return APIToken{}, fmt.Errorf("%w: the service account holds no role to give the token", ErrInvalid)
	}
	b, err := s.random(32)
	if err != nil {
		return APIToken{}, err
	}
	now := s.now()
	t := APIToken{ID: uuid.Must(uuid.NewV7()), ServiceAccountID: account, Name: name, Token: tokenPrefix + base64.RawURLEncoding.EncodeToString(b),
		CreatedAt: now, ExpiresAt: now.Add(ttl)}
	for _, g := range grants {
		if !slices.Contains(t.Roles, g.Role) {
			t.Roles = append(t.Roles, g.Role)
		}
	}
	detail := map[string]any{"token_id": t.ID, "service_account_id": account, "roles": t.Roles, "expires_at": t.ExpiresAt}
	scope := []rowScope{grantsOf(TokenSubject(t.ID)), {rowdigest.APITokens, "WHERE t.id = $1", []any{t.ID}}}
	err = s.changePolicy(ctx, o, "token_issued", detail, scope, func(tx pgx.Tx, v int64, d *policyDelta) error {
		if _, err := tx.Exec(ctx, `INSERT INTO auth_api_tokens (id, service_account_id, token_hash, name, roles, created_at, expires_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`, t.ID, account, tokenHash(t.Token), name, t.Roles, now, t.ExpiresAt); err != nil {
			return err
		}
		for _, g := range grants {
			if _, err := tx.Exec(ctx, `INSERT INTO auth_policy_rules (ptype, v0, v1, v2, source, version) VALUES ('g', $1, $2, $3, $4, $5)`,
				TokenSubject(t.ID), g.Role, string(g.Domain), "token:"+t.ID.String(), v); err != nil {
				return err
			}
			d.Grants = append(d.Grants, RoleGrant{Subject: TokenSubject(t.ID), Role: g.Role, Domain: g.Domain, Source: "token:" + t.ID.String()})
		}
		return nil
	})
	if err != nil {
		return APIToken{}, fmt.Errorf("issue token: %w", err)
	}
	return t, nil
}

// RevokeAPIToken revokes a token at once (its grants are removed), audited as
// "policy.token_revoked".
func (s *Service) RevokeAPIToken(ctx context.Context, o Origin, id uuid.UUID) error {
	scope := []rowScope{grantsOf(TokenSubject(id)), {rowdigest.APITokens, "WHERE t.id = $1", []any{id}}}
	return s.changePolicy(ctx, o, "token_revoked", map[string]any{"token_id": id}, scope, func(tx pgx.Tx, _ int64, d *policyDelta) error {
		tag, err := tx.Exec(ctx, "UPDATE auth_api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL", id, s.now())
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("revoke token %s: %w (or already revoked)", id, ErrNotFound)
		}
		d.Revoked, err = deleteGrants(ctx, tx, "DELETE FROM auth_policy_rules WHERE ptype = 'g' AND v0 = $1", TokenSubject(id))
		return err
	})
}

// DisableServiceAccount disables an account and revokes its tokens, audited as
// "service_account.disabled".
func (s *Service) DisableServiceAccount(ctx context.Context, o Origin, id uuid.UUID) error {
	now := s.now()
	return s.changePolicy(ctx, o, "service_account_disabled", map[string]any{"service_account_id": id}, allRows, func(tx pgx.Tx, _ int64, d *policyDelta) error {
		tag, err := tx.Exec(ctx, "UPDATE auth_service_accounts SET status = 'disabled', disabled_at = $2 WHERE id = $1 AND status = 'active'", id, now)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("disable service account %s: %w", id, ErrNotFound)
		}
		if d.Revoked, err = deleteGrants(ctx, tx, `DELETE FROM auth_policy_rules WHERE ptype = 'g' AND v0 IN
			(SELECT 'token:' || id::text FROM auth_api_tokens WHERE service_account_id = $1)`, id); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE auth_api_tokens SET revoked_at = $2 WHERE service_account_id = $1 AND revoked_at IS NULL", id, now); err != nil {
			return err
		}
		_, err = s.cfg.Audit.Record(ctx, tx, o.event(now, "service_account.disabled", audit.Object{Type: "service_account", ID: id.String()},
			audit.OutcomeSuccess, "", nil))
		return err
	})
}

// APITokens lists a service account's tokens (never their secrets).
func (s *Service) APITokens(ctx context.Context, account uuid.UUID) ([]APIToken, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, service_account_id, name, roles, created_at, expires_at, revoked_at, last_used_at
		FROM auth_api_tokens WHERE service_account_id = $1 ORDER BY created_at`, account)
	if err != nil {
		return nil, fmt.Errorf("tokens: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (APIToken, error) {
		var t APIToken
		err := r.Scan(&t.ID, &t.ServiceAccountID, &t.Name, &t.Roles, &t.CreatedAt, &t.ExpiresAt, &t.RevokedAt, &t.LastUsedAt)
		return t, err
	})
}

func (s *Service) authenticateToken(ctx context.Context, c Credentials) (*Principal, error) {
	now := s.now()
	o := Origin{RequestID: c.RequestID, SourceAddr: c.SourceAddr}
	reject := func(account, token uuid.UUID, reason string) (*Principal, error) {
		if account != uuid.Nil {
			o.Actor = audit.Actor{Kind: audit.ActorService, ID: account.String(), AuthMethod: MethodAPIToken}
		}
		id := ""
		if token != uuid.Nil {
			id = token.String()
		}
		if _, err := s.cfg.Audit.RecordNow(ctx, o.event(now, "auth.token.rejected", audit.Object{Type: "api_token", ID: id},
			audit.OutcomeRejected, reason, nil)); err != nil {
			return nil, fmt.Errorf("authenticate: audit refusal: %w", err)
		}
		return nil, fail(ErrUnauthenticated, reason)
	}
	if !strings.HasPrefix(c.BearerToken, tokenPrefix) || len(c.BearerToken) != len(tokenPrefix)+43 {
		return reject(uuid.Nil, uuid.Nil, "token_malformed")
	}
	var id, account uuid.UUID
	var name, status string
	var expires time.Time
	var revoked, lastUsed *time.Time
	err := s.pool.QueryRow(ctx, `SELECT t.id, t.service_account_id, a.name, a.status, t.expires_at, t.revoked_at, t.last_used_at
		FROM auth_api_tokens t JOIN auth_service_accounts a ON a.id = t.service_account_id WHERE t.token_hash = $1`,
		tokenHash(c.BearerToken)).Scan(&id, &account, &name, &status, &expires, &revoked, &lastUsed)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return reject(uuid.Nil, uuid.Nil, "token_unknown")
	case err != nil:
		return nil, fmt.Errorf("authenticate: %w", err)
	case revoked != nil:
		return reject(account, id, "token_revoked")
	case status != StatusActive:
		return reject(account, id, "principal_disabled")
	case !now.Before(expires):
		return reject(account, id, "token_expired")
	}
	if lastUsed == nil || now.Sub(*lastUsed) >= s.cfg.Session.TouchInterval {
		if _, err := s.pool.Exec(ctx, "UPDATE auth_api_tokens SET last_used_at = $2 WHERE id = $1", id, now); err != nil {
			return nil, fmt.Errorf("authenticate: %w", err)
		}
	}
	return &Principal{Kind: audit.ActorService, ID: account, Subject: TokenSubject(id), Name: name,
		AuthMethod: MethodAPIToken, TokenID: id}, nil
}
