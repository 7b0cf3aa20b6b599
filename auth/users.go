package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vigilhealth/vigil/audit"
)

// User statuses.
const (
	StatusActive   = "active"
	StatusDisabled = "disabled"
)

// Profile is a user's personal data. It is stored only sealed.
type Profile struct {
	Email       string `json:"email"`
	DisplayName string `json:"display_name"`
}

// User is a person who signs in, with the profile opened.
type User struct {
	ID          uuid.UUID   `json:"id"`
	Profile     Profile     `json:"profile"`
	Status      string      `json:"status"`
	HasPassword bool        `json:"has_password"`
	HasTOTP     bool        `json:"has_totp"`
	OIDC        bool        `json:"oidc"`
	Roles       []RoleGrant `json:"roles"`
	CreatedAt   time.Time   `json:"created_at"`
	DisabledAt  *time.Time  `json:"disabled_at,omitempty"`
}

// NormalizeEmail is the form of an e-mail address that is indexed: trimmed, lower case.
func NormalizeEmail(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

func profileAAD(id uuid.UUID) []byte { return []byte("auth/user/" + id.String() + "/profile") }
func totpAAD(id uuid.UUID) []byte    { return []byte("auth/user/" + id.String() + "/totp") }

func (s *Service) emailIndex(ctx context.Context, email string) ([]byte, error) {
	idx, err := s.cfg.Sealer.BlindIndex(ctx, []byte("auth/email\x00"+NormalizeEmail(email)))
	if err != nil {
		return nil, fmt.Errorf("auth: blind index: %w", err)
	}
	return idx, nil
}

func (s *Service) oidcIndex(ctx context.Context, issuer, subject string) ([]byte, error) {
	idx, err := s.cfg.Sealer.BlindIndex(ctx, []byte("auth/oidc\x00"+issuer+"\x00"+subject))
	if err != nil {
		return nil, fmt.Errorf("auth: blind index: %w", err)
	}
	return idx, nil
}

func (s *Service) sealProfile(ctx context.Context, id uuid.UUID, p Profile) ([]byte, error) {
	plain, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	sealed, err := s.cfg.Sealer.Seal(ctx, plain, profileAAD(id))
	if err != nil {
		return nil, fmt.Errorf("auth: seal profile: %w", err)
	}
	return sealed, nil
}

func (s *Service) openProfile(ctx context.Context, id uuid.UUID, sealed []byte) (Profile, error) {
	plain, err := s.cfg.Sealer.Open(ctx, sealed, profileAAD(id))
	if err != nil {
		return Profile{}, fmt.Errorf("auth: open profile of %s: %w", id, err)
	}
	defer clear(plain)
	var p Profile
	if err := json.Unmarshal(plain, &p); err != nil {
		return Profile{}, fmt.Errorf("auth: profile of %s: %w", id, err)
	}
	return p, nil
}

func isUnique(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && pg.Code == "23505"
}

// CreateUser adds a user (active, with no credentials yet: issue an enrollment link, or sign
// in through OIDC), audited as "user.created". The profile is sealed; the e-mail address is
// the login name (unique).
func (s *Service) CreateUser(ctx context.Context, o Origin, p Profile) (User, error) {
	return s.createUser(ctx, o, p, nil)
}

func (s *Service) createUser(ctx context.Context, o Origin, p Profile, oidcIdx []byte) (User, error) {
	p.Email = strings.TrimSpace(p.Email)
	p.DisplayName = strings.TrimSpace(p.DisplayName)
	if a, err := mail.ParseAddress(p.Email); err != nil || a.Address != p.Email {
		return User{}, fmt.Errorf("%w: e-mail address %q", ErrInvalid, p.Email)
	}
	if p.DisplayName == "" {
		p.DisplayName = p.Email
	}
	now := s.now()
	u := User{ID: uuid.Must(uuid.NewV7()), Profile: p, Status: StatusActive, OIDC: oidcIdx != nil, CreatedAt: now}
	idx, err := s.emailIndex(ctx, p.Email)
	if err != nil {
		return User{}, err
	}
	sealed, err := s.sealProfile(ctx, u.ID, p)
	if err != nil {
		return User{}, err
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO auth_users (id, email_index, profile_sealed, oidc_index, status, created_at, updated_at)
			VALUES ($1, $2, $3, $4, 'active', $5, $5)`, u.ID, idx, sealed, oidcIdx, now); err != nil {
			return err
		}
		via := "admin"
		if oidcIdx != nil {
			via = "oidc"
		}
		return s.recordUserEvent(ctx, tx, o.event(now, "user.created", audit.Object{Type: "user", ID: u.ID.String()},
			audit.OutcomeSuccess, "", map[string]any{"via": via}), u.ID)
	})
	if isUnique(err) {
		return User{}, fmt.Errorf("create user: %w: e-mail address or identity in use", ErrConflict)
	}
	if err != nil {
		return User{}, fmt.Errorf("create user: %w", err)
	}
	return u, nil
}

type userRow struct {
	id         uuid.UUID
	sealed     []byte
	oidc       []byte
	pwHash     *string
	totpSealed []byte
	lastStep   int64
	status     string
	created    time.Time
	disabled   *time.Time
}

const userCols = "id, profile_sealed, oidc_index, password_hash, totp_sealed, totp_last_step, status, created_at, disabled_at"

func scanUser(row pgx.Row) (userRow, error) {
	var r userRow
	err := row.Scan(&r.id, &r.sealed, &r.oidc, &r.pwHash, &r.totpSealed, &r.lastStep, &r.status, &r.created, &r.disabled)
	return r, err
}

func (s *Service) toUser(ctx context.Context, r userRow) (User, error) {
	p, err := s.openProfile(ctx, r.id, r.sealed)
	if err != nil {
		return User{}, err
	}
	return User{ID: r.id, Profile: p, Status: r.status, HasPassword: r.pwHash != nil, HasTOTP: r.totpSealed != nil,
		OIDC: r.oidc != nil, Roles: s.enf.RolesOf(UserSubject(r.id)), CreatedAt: r.created, DisabledAt: r.disabled}, nil
}

// User returns a user by id.
func (s *Service) User(ctx context.Context, id uuid.UUID) (User, error) {
	r, err := scanUser(s.pool.QueryRow(ctx, "SELECT "+userCols+" FROM auth_users WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return User{}, fmt.Errorf("user %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return User{}, fmt.Errorf("user %s: %w", id, err)
	}
	return s.toUser(ctx, r)
}

// UserByEmail returns a user by e-mail address (through its blind index).
func (s *Service) UserByEmail(ctx context.Context, email string) (User, error) {
	idx, err := s.emailIndex(ctx, email)
	if err != nil {
		return User{}, err
	}
	r, err := scanUser(s.pool.QueryRow(ctx, "SELECT "+userCols+" FROM auth_users WHERE email_index = $1", idx))
	if errors.Is(err, pgx.ErrNoRows) {
		return User{}, fmt.Errorf("user: %w", ErrNotFound)
	}
	if err != nil {
		return User{}, fmt.Errorf("user: %w", err)
	}
	return s.toUser(ctx, r)
}

// Users lists every user, oldest first (profiles opened: an administrator's view).
func (s *Service) Users(ctx context.Context) ([]User, error) {
	rows, err := s.pool.Query(ctx, "SELECT "+userCols+" FROM auth_users ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	raw, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (userRow, error) { return scanUser(r) })
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	out := make([]User, 0, len(raw))
	for _, r := range raw {
		u, err := s.toUser(ctx, r)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

// DisableUser disables a user and ends every session of theirs, audited as "user.disabled".
// A disabled user cannot sign in and their sessions are refused.
func (s *Service) DisableUser(ctx context.Context, o Origin, id uuid.UUID) error {
	now := s.now()
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE auth_users SET status = 'disabled', disabled_at = $2, updated_at = $2
			WHERE id = $1 AND status = 'active'`, id, now)
		if err != nil {
			return fmt.Errorf("disable user %s: %w", id, err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("disable user %s: %w (or already disabled)", id, ErrNotFound)
		}
		n, err := endSessions(ctx, tx, id, now, "user_disabled")
		if err != nil {
			return err
		}
		return s.recordUserEvent(ctx, tx, o.event(now, "user.disabled", audit.Object{Type: "user", ID: id.String()},
			audit.OutcomeSuccess, "", map[string]any{"sessions_ended": n}), id)
	})
}

// EnableUser re-enables a disabled user, audited as "user.enabled".
func (s *Service) EnableUser(ctx context.Context, o Origin, id uuid.UUID) error {
	now := s.now()
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE auth_users SET status = 'active', disabled_at = NULL, updated_at = $2
			WHERE id = $1 AND status = 'disabled'`, id, now)
		if err != nil {
			return fmt.Errorf("enable user %s: %w", id, err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("enable user %s: %w (or not disabled)", id, ErrNotFound)
		}
		return s.recordUserEvent(ctx, tx, o.event(now, "user.enabled", audit.Object{Type: "user", ID: id.String()},
			audit.OutcomeSuccess, "", nil), id)
	})
}

// ResetMFA removes a user's second factors (TOTP, recovery codes, passkeys), ends their
// sessions and issues a new enrollment link (returned), audited as "user.mfa_reset". Until the
// user enrolls again, sign-in stops at mfa_required for roles that need a second factor.
func (s *Service) ResetMFA(ctx context.Context, o Origin, id uuid.UUID) (Enrollment, error) {
	return s.resetMFA(ctx, o, id, "")
}

// ResetMFAWithReason is ResetMFA with the administrator's reason, kept in the audit event
// (required: ErrInvalid without one, nothing changed).
func (s *Service) ResetMFAWithReason(ctx context.Context, o Origin, id uuid.UUID, reason string) (Enrollment, error) {
	if strings.TrimSpace(reason) == "" {
		return Enrollment{}, fmt.Errorf("reset MFA: %w: a reason is required", ErrInvalid)
	}
	return s.resetMFA(ctx, o, id, strings.TrimSpace(reason))
}

func (s *Service) resetMFA(ctx context.Context, o Origin, id uuid.UUID, reason string) (Enrollment, error) {
	now := s.now()
	var en Enrollment
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE auth_users SET totp_sealed = NULL, updated_at = $2 WHERE id = $1`, id, now)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("reset MFA of %s: %w", id, ErrNotFound)
		}
		for _, q := range []string{"DELETE FROM auth_recovery_codes WHERE user_id = $1", "DELETE FROM auth_webauthn_credentials WHERE user_id = $1"} {
			if _, err := tx.Exec(ctx, q, id); err != nil {
				return err
			}
		}
		if _, err := endSessions(ctx, tx, id, now, "mfa_reset"); err != nil {
			return err
		}
		if en, err = s.issueEnrollment(ctx, tx, id, now); err != nil {
			return err
		}
		detail := map[string]any{"enrollment_expires_at": en.ExpiresAt}
		if reason != "" {
			detail["reason"] = reason
		}
		return s.recordUserEvent(ctx, tx, o.event(now, "user.mfa_reset", audit.Object{Type: "user", ID: id.String()},
			audit.OutcomeSuccess, "", detail), id)
	})
	if err != nil {
		return Enrollment{}, fmt.Errorf("reset MFA: %w", err)
	}
	return en, nil
}

func tokenHash(tok string) []byte {
	h := sha256.Sum256([]byte(tok))
	return h[:]
}

func hexIndex(idx []byte) string { return hex.EncodeToString(idx) }
