package auth

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
	"golang.org/x/crypto/argon2"

	"github.com/vigilhealth/vigil/audit"
)

// ---- passwords: argon2id in the PHC string format ($argon2id$v=19$m=…,t=…,p=…$salt$hash)

func (s *Service) hashPassword(pw string) (string, error) {
	salt, err := s.random(16)
	if err != nil {
		return "", err
	}
	c := s.cfg.Password
	key := argon2.IDKey([]byte(pw), salt, c.Time, c.MemoryKiB, c.Threads, 32)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, c.MemoryKiB, c.Time, c.Threads,
		b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// phc is a decoded argon2id hash.
type phc struct {
	m, t       uint32
	p          uint8
	salt, want []byte
}

// parsePHC decodes a PHC argon2id string, refusing parameters outside sane bounds.
func parsePHC(encoded string) (phc, bool) {
	var h phc
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[1] != "argon2id" || parts[2] != "v="+strconv.Itoa(argon2.Version) {
		return h, false
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &h.m, &h.t, &h.p); err != nil || h.m < 8 || h.t == 0 || h.p == 0 || h.m > 1<<20 || h.t > 16 {
		return h, false
	}
	b64 := base64.RawStdEncoding
	var err1, err2 error
	h.salt, err1 = b64.DecodeString(parts[4])
	h.want, err2 = b64.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(h.want) < 16 || len(h.want) > 64 {
		return h, false
	}
	return h, true
}

// checkPassword compares pw with a PHC argon2id hash in constant time.
func checkPassword(encoded, pw string) bool {
	h, ok := parsePHC(encoded)
	if !ok {
		return false
	}
	got := argon2.IDKey([]byte(pw), h.salt, h.t, h.m, h.p, uint32(len(h.want)))
	return subtle.ConstantTimeCompare(got, h.want) == 1
}

func (s *Service) checkPasswordPolicy(pw string) error {
	if utf8.RuneCountInString(pw) < s.cfg.Password.MinLength {
		return fmt.Errorf("%w: the password must have at least %d characters", ErrInvalid, s.cfg.Password.MinLength)
	}
	if len(pw) > 1024 {
		return fmt.Errorf("%w: the password is longer than 1024 bytes", ErrInvalid)
	}
	return nil
}

// ---- TOTP (RFC 6238: SHA-1, 6 digits, 30 s; one step of skew either way)

const totpPeriod = 30

var totpOpts = totp.ValidateOpts{Period: totpPeriod, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1}

// matchTOTP returns the time step code matches at now (±1 step), or 0.
func matchTOTP(secret, code string, now time.Time) int64 {
	code = strings.TrimSpace(code)
	if len(code) != 6 {
		return 0
	}
	var step int64
	for _, k := range []int64{-1, 0, 1} {
		t := now.Add(time.Duration(k*totpPeriod) * time.Second)
		want, err := totp.GenerateCodeCustom(secret, t, totpOpts)
		if err == nil && subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 {
			step = t.Unix() / totpPeriod
		}
	}
	return step
}

// ---- recovery codes: 10 one-time codes of 16 base32 characters (80 bits), stored as SHA-256

const recoveryCodes = 10

var recoveryEnc = base32.StdEncoding.WithPadding(base32.NoPadding)

func normalizeRecovery(c string) string {
	return strings.ToUpper(strings.NewReplacer("-", "", " ", "").Replace(strings.TrimSpace(c)))
}

func (s *Service) newRecoveryCodes(ctx context.Context, tx pgx.Tx, user uuid.UUID, now time.Time) ([]string, error) {
	if _, err := tx.Exec(ctx, "DELETE FROM auth_recovery_codes WHERE user_id = $1", user); err != nil {
		return nil, err
	}
	out := make([]string, recoveryCodes)
	for i := range out {
		b, err := s.random(10)
		if err != nil {
			return nil, err
		}
		c := recoveryEnc.EncodeToString(b)
		out[i] = c[:4] + "-" + c[4:8] + "-" + c[8:12] + "-" + c[12:]
		if _, err := tx.Exec(ctx, "INSERT INTO auth_recovery_codes (user_id, code_hash, created_at) VALUES ($1, $2, $3)",
			user, tokenHash(normalizeRecovery(c)), now); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ---- enrollment links

// Enrollment is a one-time enrollment link's token, shown once.
type Enrollment struct {
	UserID    uuid.UUID `json:"user_id"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// EnrollmentPath is where the portal serves enrollment; the token travels in the fragment, so
// it never reaches a server log.
const EnrollmentPath = "/enroll"

// Link returns the enrollment URL under base (e.g. https://vigil.example).
func (e Enrollment) Link(base string) string {
	return strings.TrimRight(base, "/") + EnrollmentPath + "#token=" + e.Token
}

const enrollPrefix = "vge_"

func (s *Service) issueEnrollment(ctx context.Context, tx pgx.Tx, user uuid.UUID, now time.Time) (Enrollment, error) {
	b, err := s.random(32)
	if err != nil {
		return Enrollment{}, err
	}
	en := Enrollment{UserID: user, Token: enrollPrefix + base64.RawURLEncoding.EncodeToString(b), ExpiresAt: now.Add(s.cfg.EnrollmentTTL)}
	if _, err := tx.Exec(ctx, "UPDATE auth_enrollments SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL", user, now); err != nil {
		return Enrollment{}, err
	}
	if _, err := tx.Exec(ctx, "INSERT INTO auth_enrollments (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
		tokenHash(en.Token), user, now, en.ExpiresAt); err != nil {
		return Enrollment{}, err
	}
	return en, nil
}

// IssueEnrollment issues a one-time enrollment link for a user (earlier unused links stop
// working), audited as "user.enrollment_issued".
func (s *Service) IssueEnrollment(ctx context.Context, o Origin, user uuid.UUID) (Enrollment, error) {
	now := s.now()
	var en Enrollment
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var status string
		if err := tx.QueryRow(ctx, "SELECT status FROM auth_users WHERE id = $1", user).Scan(&status); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("user %s: %w", user, ErrNotFound)
			}
			return err
		}
		var err error
		if en, err = s.issueEnrollment(ctx, tx, user, now); err != nil {
			return err
		}
		_, err = s.cfg.Audit.Record(ctx, tx, o.event(now, "user.enrollment_issued", audit.Object{Type: "user", ID: user.String()},
			audit.OutcomeSuccess, "", map[string]any{"expires_at": en.ExpiresAt}))
		return err
	})
	if err != nil {
		return Enrollment{}, fmt.Errorf("issue enrollment: %w", err)
	}
	return en, nil
}

// TOTPOffer is the authenticator secret offered during enrollment.
type TOTPOffer struct {
	UserID uuid.UUID `json:"user_id"`
	Secret string    `json:"secret"` // base32, for manual entry
	URL    string    `json:"url"`    // otpauth:// URL, for a QR code
}

// lookupEnrollment returns the live enrollment of token inside tx, locked.
func (s *Service) lookupEnrollment(ctx context.Context, tx pgx.Tx, token string, now time.Time) (uuid.UUID, []byte, error) {
	if !strings.HasPrefix(token, enrollPrefix) || len(token) > 128 {
		return uuid.Nil, nil, fail(ErrEnrollmentInvalid, "token_malformed")
	}
	var user uuid.UUID
	var exp time.Time
	var used *time.Time
	var sealed []byte
	err := tx.QueryRow(ctx, `SELECT user_id, expires_at, used_at, totp_sealed FROM auth_enrollments WHERE token_hash = $1 FOR UPDATE`,
		tokenHash(token)).Scan(&user, &exp, &used, &sealed)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return uuid.Nil, nil, fail(ErrEnrollmentInvalid, "token_unknown")
	case err != nil:
		return uuid.Nil, nil, err
	case used != nil:
		return user, nil, fail(ErrEnrollmentInvalid, "token_used")
	case !now.Before(exp):
		return user, nil, fail(ErrEnrollmentInvalid, "token_expired")
	}
	return user, sealed, nil
}

// auditEnrollFailure records "auth.enrollment.failed" for the refusal err and returns err once
// that event is committed; if it cannot be recorded, it returns an internal (uncoded) error
// instead, so that a coded refusal of StartEnrollment or CompleteEnrollment always means
// "refused, and recorded" (the caller may take auth's event as the request's one record).
func (s *Service) auditEnrollFailure(ctx context.Context, o Origin, user uuid.UUID, err error) error {
	id := ""
	if user != uuid.Nil {
		id = user.String()
	}
	if _, aerr := s.cfg.Audit.RecordNow(ctx, o.event(s.now(), "auth.enrollment.failed", audit.Object{Type: "user", ID: id},
		audit.OutcomeRejected, ReasonOf(err), nil)); aerr != nil {
		return fmt.Errorf("enrollment: audit refusal (%s): %w", ReasonOf(err), aerr)
	}
	return err
}

// StartEnrollment opens an enrollment link: it generates the TOTP secret the user adds to an
// authenticator app (kept sealed with the link until confirmed). Calling it again offers a new
// secret. A refusal (ErrEnrollmentInvalid) is returned only once its "auth.enrollment.failed"
// event is committed: if that record fails, the caller gets an internal error instead.
func (s *Service) StartEnrollment(ctx context.Context, o Origin, token string) (TOTPOffer, error) {
	now := s.now()
	var offer TOTPOffer
	var user uuid.UUID
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		if user, _, err = s.lookupEnrollment(ctx, tx, token, now); err != nil {
			return err
		}
		u, err := s.User(ctx, user)
		if err != nil {
			return err
		}
		key, err := totp.Generate(totp.GenerateOpts{Issuer: s.cfg.TOTPIssuer, AccountName: u.Profile.Email,
			Period: totpPeriod, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1, Rand: s.cfg.Rand})
		if err != nil {
			return err
		}
		sealed, err := s.cfg.Sealer.Seal(ctx, []byte(key.Secret()), totpAAD(user))
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE auth_enrollments SET totp_sealed = $2 WHERE token_hash = $1", tokenHash(token), sealed); err != nil {
			return err
		}
		offer = TOTPOffer{UserID: user, Secret: key.Secret(), URL: key.URL()}
		return nil
	})
	if err != nil {
		if errorsIsAuth(err) {
			return TOTPOffer{}, s.auditEnrollFailure(ctx, o, user, err)
		}
		return TOTPOffer{}, fmt.Errorf("start enrollment: %w", err)
	}
	return offer, nil
}

// CompleteEnrollment finishes an enrollment link: it sets the password (policy: at least
// PasswordConfig.MinLength characters), confirms the offered TOTP secret with a current code,
// and returns the user's recovery codes (shown once). Audited as "user.enrolled"; a refused
// attempt (ErrEnrollmentInvalid, ErrInvalidCredentials: the link or the code) as
// "auth.enrollment.failed", returned only once that event is committed (an internal error if
// it cannot be recorded); a password refused by the policy (ErrInvalid) is not recorded here.
// The link cannot be used again.
func (s *Service) CompleteEnrollment(ctx context.Context, o Origin, token, password, totpCode string) ([]string, error) {
	if err := s.checkPasswordPolicy(password); err != nil {
		return nil, err
	}
	now := s.now()
	hash, err := s.hashPassword(password)
	if err != nil {
		return nil, err
	}
	var codes []string
	var user uuid.UUID
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var sealed []byte
		var err error
		if user, sealed, err = s.lookupEnrollment(ctx, tx, token, now); err != nil {
			return err
		}
		if sealed == nil {
			return fail(ErrEnrollmentInvalid, "totp_not_offered")
		}
		secret, err := s.cfg.Sealer.Open(ctx, sealed, totpAAD(user))
		if err != nil {
			return err
		}
		step := matchTOTP(string(secret), totpCode, now)
		clear(secret)
		if step == 0 {
			return fail(ErrInvalidCredentials, "totp_wrong")
		}
		if _, err := tx.Exec(ctx, `UPDATE auth_users SET password_hash = $2, totp_sealed = $3, totp_last_step = $4, updated_at = $5
			WHERE id = $1`, user, hash, sealed, step, now); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE auth_enrollments SET used_at = $2 WHERE token_hash = $1", tokenHash(token), now); err != nil {
			return err
		}
		if codes, err = s.newRecoveryCodes(ctx, tx, user, now); err != nil {
			return err
		}
		return s.recordUserEvent(ctx, tx, o.event(now, "user.enrolled", audit.Object{Type: "user", ID: user.String()},
			audit.OutcomeSuccess, "", map[string]any{"factors": []string{"password", "totp"}}), user)
	})
	if err != nil {
		if errorsIsAuth(err) {
			return nil, s.auditEnrollFailure(ctx, o, user, err)
		}
		return nil, fmt.Errorf("complete enrollment: %w", err)
	}
	return codes, nil
}

// constantTimeEqual compares two strings in constant time (for equal lengths).
func constantTimeEqual(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 && bytes.Equal([]byte(a), []byte(b))
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
