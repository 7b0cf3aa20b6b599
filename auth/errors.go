package auth

import (
	"errors"
	"time"
)

// Error is an outcome of authentication or authorization that a caller branches on. Code is
// stable and machine-readable (the server's JSON error envelope carries it; docs/api.md lists
// every one). Its message says nothing that helps an attacker: which of the name, the password
// or the second factor was wrong is recorded in the audit event's reason, never returned.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// Sentinels. Compare with errors.Is; wrapped errors keep them.
var (
	// ErrUnauthenticated: no credentials, or credentials that match nothing (a tampered or
	// unknown session cookie or token, a disabled principal). HTTP 401.
	ErrUnauthenticated = &Error{"unauthenticated", "authentication required"}
	// ErrInvalidCredentials: the name, password or second factor is wrong, expired or replayed.
	// HTTP 401.
	ErrInvalidCredentials = &Error{"invalid_credentials", "invalid credentials"}
	// ErrMFARequired: the password was right but this account needs its second factor (TOTP,
	// a recovery code or a passkey), or has not enrolled one yet. HTTP 401.
	ErrMFARequired = &Error{"mfa_required", "a second factor is required"}
	// ErrAccountLocked: too many failed attempts for this account or from this address; try
	// again later. HTTP 429.
	ErrAccountLocked = &Error{"account_locked", "too many failed attempts; try again later"}
	// ErrSessionExpired: the session ended (idle timeout, absolute lifetime, sign-out). HTTP 401.
	ErrSessionExpired = &Error{"session_expired", "the session has expired; sign in again"}
	// ErrCSRFInvalid: a state-changing browser request without the session's CSRF token. HTTP 403.
	ErrCSRFInvalid = &Error{"csrf_invalid", "missing or invalid CSRF token"}
	// ErrForbidden: authenticated, but the policy does not allow the action. HTTP 403.
	ErrForbidden = &Error{"forbidden", "not allowed"}
	// ErrOIDC: an OpenID Connect sign-in failed (state or nonce mismatch, wrong issuer or
	// audience, expired or unverifiable ID token, refused code exchange). HTTP 401.
	ErrOIDC = &Error{"oidc_failed", "single sign-on failed; start again"}
	// ErrEnrollmentInvalid: an enrollment link that is unknown, used or expired. HTTP 401.
	ErrEnrollmentInvalid = &Error{"enrollment_invalid", "the enrollment link is invalid or has expired"}
	// ErrBreakGlassReason: break-glass without a stated reason, or for longer than allowed. HTTP 400.
	ErrBreakGlassReason = &Error{"break_glass_reason_required", "break-glass needs a reason and a bounded duration"}
)

// Non-security outcomes of the administration API.
var (
	// ErrNotFound: no such user, service account, token, grant or rule.
	ErrNotFound = errors.New("auth: not found")
	// ErrConflict: the e-mail address, OIDC identity or name is already in use.
	ErrConflict = errors.New("auth: already exists")
	// ErrInvalid: a malformed request (unknown role, bad e-mail address, weak password, …).
	ErrInvalid = errors.New("auth: invalid request")
)

// Codes lists every Error code, for documentation checks.
var Codes = []*Error{ErrUnauthenticated, ErrInvalidCredentials, ErrMFARequired, ErrAccountLocked,
	ErrSessionExpired, ErrCSRFInvalid, ErrForbidden, ErrOIDC, ErrEnrollmentInvalid, ErrBreakGlassReason}

// CodeOf returns the stable code of err's auth outcome, or "" if it is none.
func CodeOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// reasoned carries the audit reason (what exactly was wrong) beside the public sentinel.
type reasoned struct {
	pub        *Error
	reason     string
	retryAfter time.Duration
}

func (r *reasoned) Error() string        { return r.pub.Message }
func (r *reasoned) Unwrap() error        { return r.pub }
func (r *reasoned) Is(target error) bool { return target == r.pub }

// fail returns pub carrying the audit reason code.
func fail(pub *Error, reason string) error { return &reasoned{pub: pub, reason: reason} }

// RetryAfter returns how long to wait before trying again after ErrAccountLocked (for the
// Retry-After header), or 0.
func RetryAfter(err error) time.Duration {
	var r *reasoned
	if errors.As(err, &r) {
		return r.retryAfter
	}
	return 0
}

// ReasonOf returns the audit reason code of an auth error (e.g. "password_wrong",
// "totp_replayed", "session_idle_timeout"), or its public code when it has none. Servers MUST
// NOT return it to the client: it is for the audit trail and operators.
func ReasonOf(err error) string {
	var r *reasoned
	if errors.As(err, &r) {
		return r.reason
	}
	return CodeOf(err)
}
