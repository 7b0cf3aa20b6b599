package auth

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
)

// LoginRequest is a local sign-in attempt: e-mail address and password, and the second factor
// (a TOTP code or a recovery code) for accounts that need one.
type LoginRequest struct {
	Email        string
	Password     string
	TOTPCode     string
	RecoveryCode string
	SourceAddr   string // client address (the server's view, not a header)
	RequestID    string
}

// Auth methods recorded in sessions and audit events.
const (
	MethodPasswordTOTP     = "password+totp"
	MethodPasswordRecovery = "password+recovery_code"
	MethodPassword         = "password"
	MethodWebAuthn         = "webauthn"
	MethodOIDC             = "oidc"
	MethodAPIToken         = "api_token"
)

// ---- throttling

func accountKey(idx []byte) string { return "account:" + hexIndex(idx) }
func sourceKey(addr string) string { return "source:" + addr }

// lockedUntil returns when the first of keys stops being locked (zero if none is locked).
func (s *Service) lockedUntil(ctx context.Context, now time.Time, keys ...string) (time.Time, string, error) {
	var until time.Time
	var which string
	err := s.pool.QueryRow(ctx, `SELECT locked_until, key FROM auth_throttle WHERE key = ANY($1) AND locked_until > $2
		ORDER BY locked_until DESC LIMIT 1`, keys, now).Scan(&until, &which)
	if errors.Is(err, pgx.ErrNoRows) {
		return time.Time{}, "", nil
	}
	return until, which, err
}

// recordFailure counts a failed attempt for key and locks it with back-off past threshold.
func (s *Service) recordFailure(ctx context.Context, now time.Time, key string, threshold int) error {
	l := s.cfg.Lockout
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var failures int
		var last time.Time
		var locked *time.Time
		err := tx.QueryRow(ctx, "SELECT failures, last_failure_at, locked_until FROM auth_throttle WHERE key = $1 FOR UPDATE", key).
			Scan(&failures, &last, &locked)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		quiet := last
		if locked != nil && locked.After(quiet) {
			quiet = *locked
		}
		if errors.Is(err, pgx.ErrNoRows) || now.Sub(quiet) > l.Window {
			failures = 0
		}
		failures++
		var until *time.Time
		if failures >= threshold {
			d := l.BaseDelay
			for i := threshold; i < failures && d < l.MaxDelay; i++ {
				d *= 2
			}
			d = min(d, l.MaxDelay)
			t := now.Add(d)
			until = &t
		}
		_, err = tx.Exec(ctx, `INSERT INTO auth_throttle (key, failures, last_failure_at, locked_until) VALUES ($1, $2, $3, $4)
			ON CONFLICT (key) DO UPDATE SET failures = $2, last_failure_at = $3, locked_until = $4`, key, failures, now, until)
		return err
	})
}

// ---- local sign-in

// Login signs a user in with a local password and, when the account needs one, a second
// factor. It returns a new session (its token is in Session.Token, shown once: set it as the
// cookie). Every attempt is audited: "auth.login.succeeded" with the method, or
// "auth.login.failed" with a reason code (unknown_user, password_wrong, user_disabled,
// not_enrolled, mfa_missing, mfa_not_enrolled, totp_wrong, totp_replayed,
// recovery_code_wrong, locked_account, locked_source); never the password or code.
//
// Errors: ErrAccountLocked, ErrInvalidCredentials, ErrMFARequired (password right, second
// factor missing or not enrolled: ask for it and try again).
func (s *Service) Login(ctx context.Context, req LoginRequest) (Session, error) {
	now := s.now()
	o := Origin{RequestID: req.RequestID, SourceAddr: req.SourceAddr}
	idx, err := s.emailIndex(ctx, req.Email)
	if err != nil {
		return Session{}, err
	}
	acct, src := accountKey(idx), sourceKey(req.SourceAddr)
	failed := func(user uuid.UUID, pub *Error, reason string, count bool) (Session, error) {
		if count {
			if err := s.recordFailure(ctx, now, acct, s.cfg.Lockout.Threshold); err != nil {
				return Session{}, fmt.Errorf("login: %w", err)
			}
			if err := s.recordFailure(ctx, now, src, s.cfg.Lockout.SourceThreshold); err != nil {
				return Session{}, fmt.Errorf("login: %w", err)
			}
		}
		return Session{}, s.auditLoginFailure(ctx, o, user, MethodPassword, pub, reason)
	}
	until, which, err := s.lockedUntil(ctx, now, acct, src)
	if err != nil {
		return Session{}, fmt.Errorf("login: %w", err)
	}
	if !until.IsZero() {
		reason := "locked_account"
		if which == src {
			reason = "locked_source"
		}
		_, err := failed(uuid.Nil, ErrAccountLocked, reason, false)
		var r *reasoned
		if errors.As(err, &r) {
			r.retryAfter = until.Sub(now).Round(time.Second) + time.Second
		}
		return Session{}, err
	}
	r, err := scanUser(s.pool.QueryRow(ctx, "SELECT "+userCols+" FROM auth_users WHERE email_index = $1", idx))
	if errors.Is(err, pgx.ErrNoRows) {
		checkPassword(s.dummy, req.Password) // the same work as for a real account
		return failed(uuid.Nil, ErrInvalidCredentials, "unknown_user", true)
	}
	if err != nil {
		return Session{}, fmt.Errorf("login: %w", err)
	}
	if r.pwHash == nil {
		checkPassword(s.dummy, req.Password)
		return failed(r.id, ErrInvalidCredentials, "not_enrolled", true)
	}
	if !checkPassword(*r.pwHash, req.Password) {
		return failed(r.id, ErrInvalidCredentials, "password_wrong", true)
	}
	if r.status != StatusActive {
		return failed(r.id, ErrInvalidCredentials, "user_disabled", true)
	}
	method := MethodPassword
	if r.totpSealed != nil || s.needsMFA(r.id) {
		switch {
		case req.TOTPCode == "" && req.RecoveryCode == "" && r.totpSealed == nil:
			return failed(r.id, ErrMFARequired, "mfa_not_enrolled", false)
		case req.TOTPCode == "" && req.RecoveryCode == "":
			return failed(r.id, ErrMFARequired, "mfa_missing", false)
		case req.TOTPCode != "":
			if r.totpSealed == nil {
				return failed(r.id, ErrInvalidCredentials, "totp_wrong", true)
			}
			secret, err := s.cfg.Sealer.Open(ctx, r.totpSealed, totpAAD(r.id))
			if err != nil {
				return Session{}, fmt.Errorf("login: %w", err)
			}
			step := matchTOTP(string(secret), req.TOTPCode, now)
			clear(secret)
			if step == 0 {
				return failed(r.id, ErrInvalidCredentials, "totp_wrong", true)
			}
			// A code is good once: the step must move forward (also against a concurrent use).
			tag, err := s.pool.Exec(ctx, "UPDATE auth_users SET totp_last_step = $2 WHERE id = $1 AND totp_last_step < $2", r.id, step)
			if err != nil {
				return Session{}, fmt.Errorf("login: %w", err)
			}
			if tag.RowsAffected() == 0 {
				return failed(r.id, ErrInvalidCredentials, "totp_replayed", true)
			}
			method = MethodPasswordTOTP
		default:
			tag, err := s.pool.Exec(ctx, `UPDATE auth_recovery_codes SET used_at = $3 WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL`,
				r.id, tokenHash(normalizeRecovery(req.RecoveryCode)), now)
			if err != nil {
				return Session{}, fmt.Errorf("login: %w", err)
			}
			if tag.RowsAffected() == 0 {
				return failed(r.id, ErrInvalidCredentials, "recovery_code_wrong", true)
			}
			method = MethodPasswordRecovery
		}
	}
	return s.signIn(ctx, o, r.id, method, acct, nil)
}

// needsMFA reports whether the user holds a role that sees PHI (so a second factor is required).
func (s *Service) needsMFA(user uuid.UUID) bool {
	return s.enf.holdsAny(UserSubject(user), func(r RoleInfo) bool { return r.SeesPHI })
}

// signIn opens a session for user after a successful authentication, clears the account's
// failure counter and records "auth.login.succeeded" in the session's transaction.
func (s *Service) signIn(ctx context.Context, o Origin, user uuid.UUID, method, acctKey string, extra map[string]any) (Session, error) {
	now := s.now()
	var sess Session
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		if sess, err = s.createSession(ctx, tx, user, method, o.SourceAddr, now); err != nil {
			return err
		}
		if acctKey != "" {
			if _, err := tx.Exec(ctx, "DELETE FROM auth_throttle WHERE key = $1", acctKey); err != nil {
				return err
			}
		}
		payload := map[string]any{"session_id": sess.ID, "method": method}
		for k, v := range extra {
			payload[k] = v
		}
		o.Actor = audit.Actor{Kind: audit.ActorUser, ID: user.String(), AuthMethod: method}
		_, err = s.cfg.Audit.Record(ctx, tx, o.event(now, "auth.login.succeeded", audit.Object{Type: "session", ID: sess.ID.String()},
			audit.OutcomeSuccess, "", payload))
		return err
	})
	if err != nil {
		return Session{}, fmt.Errorf("sign in: %w", err)
	}
	return sess, nil
}

// auditLoginFailure records "auth.login.failed" and returns pub carrying reason.
func (s *Service) auditLoginFailure(ctx context.Context, o Origin, user uuid.UUID, method string, pub *Error, reason string) error {
	id := ""
	if user != uuid.Nil {
		id = user.String()
	}
	ev := o.event(s.now(), "auth.login.failed", audit.Object{Type: "user", ID: id}, audit.OutcomeRejected, reason,
		map[string]any{"method": method, "code": pub.Code})
	if _, err := s.cfg.Audit.RecordNow(ctx, ev); err != nil {
		return fmt.Errorf("login: audit refusal: %w", err)
	}
	return fail(pub, reason)
}
