package server

import (
	"context"
	"errors"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/keys"
)

// This file is the one place where errors become HTTP statuses and stable error codes. Every
// code is documented in docs/api.md; a code, once published, never changes meaning.

// Error codes produced by the server itself.
const (
	CodeBadRequest       = "bad_request"
	CodeNotFound         = "not_found"
	CodeMethodNotAllowed = "method_not_allowed"
	CodePayloadTooLarge  = "payload_too_large"
	CodeUnsupportedMedia = "unsupported_media_type"
	// CodeUnauthenticated is the one 401 code of a request without valid credentials: no
	// session or token, a tampered, unknown, ended or expired one, a disabled principal. Which
	// of these it was is recorded in the audit trail only.
	CodeUnauthenticated = "unauthenticated"
	CodeForbidden       = "forbidden"
	CodeRateLimited     = "rate_limited"
	CodeUnavailable     = "unavailable"
	CodeTimeout         = "timeout"
	CodeInternal        = "internal_error"
	// CodeClientClosed: the client closed the connection before the answer (a device that
	// lost its network mid-upload, say). Nobody reads this answer; it is what the logs and
	// the audit trail say of the request (http.request.abandoned).
	CodeClientClosed = "client_closed_request"
)

// StatusClientClosedRequest is the status recorded for a request its client abandoned
// (nginx's 499): not the server's failure, so neither a 5xx nor an error in the logs.
const StatusClientClosedRequest = 499

// APIError is an error the server answers with as it is: handlers return it for bad input
// they detect themselves (a malformed query parameter, say).
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string { return e.Code + ": " + e.Message }

// BadRequest returns a 400 APIError with the given stable code.
func BadRequest(code, message string) *APIError {
	return &APIError{Status: http.StatusBadRequest, Code: code, Message: message}
}

// mapping ties a domain sentinel error to its HTTP status and stable code. Areas add their
// sentinels to errorTable (in this file, so the whole mapping stays in one place).
type mapping struct {
	err    error
	status int
	code   string
}

// errorTable maps domain sentinels (matched with errors.Is, first match wins) to HTTP.
var errorTable = []mapping{
	{context.DeadlineExceeded, http.StatusServiceUnavailable, CodeTimeout},
	{context.Canceled, StatusClientClosedRequest, CodeClientClosed},
	// devices (codes in docs/api.md#devices; the RejectError carries the code)
	{devices.ErrMalformed, http.StatusBadRequest, devices.CodeMalformed},
	{devices.ErrTooLarge, http.StatusRequestEntityTooLarge, devices.CodeTooLarge},
	{devices.ErrUnknownDevice, http.StatusUnauthorized, devices.CodeUnknownDevice},
	{devices.ErrUnknownKey, http.StatusUnauthorized, devices.CodeUnknownKey},
	{devices.ErrBadSignature, http.StatusUnauthorized, devices.CodeBadSignature},
	{devices.ErrDeviceSuspended, http.StatusForbidden, devices.CodeSuspended},
	{devices.ErrDeviceDecommissioned, http.StatusForbidden, devices.CodeDecommissioned},
	{devices.ErrReplay, http.StatusConflict, devices.CodeReplay},
	{devices.ErrNotAssigned, http.StatusConflict, devices.CodeNotAssigned},
	{devices.ErrClockSkew, http.StatusUnprocessableEntity, devices.CodeClockSkew},
	{devices.ErrRateLimited, http.StatusTooManyRequests, devices.CodeRateLimited},
	{devices.ErrQuotaExceeded, http.StatusTooManyRequests, devices.CodeQuotaExceeded},
	{devices.ErrBackpressure, http.StatusServiceUnavailable, devices.CodeBackpressure},
	{devices.ErrProofPending, http.StatusNotFound, "proof_pending"},
	{devices.ErrNotFound, http.StatusNotFound, devices.CodeNotFound},
	{devices.ErrConflict, http.StatusConflict, devices.CodeConflict},
	{devices.ErrInvalidToken, http.StatusUnauthorized, devices.CodeInvalidToken},
	{devices.ErrInvalidInput, http.StatusBadRequest, devices.CodeInvalidInput},
	// alarms and rules (codes in docs/api.md#alarms-and-rules)
	{alarms.ErrNotFound, http.StatusNotFound, "alarm_not_found"},
	{alarms.ErrConflict, http.StatusConflict, "alarm_state_conflict"},
	{alarms.ErrInvalidRequest, http.StatusBadRequest, "invalid_alarm_request"},
	{rules.ErrRuleNotFound, http.StatusNotFound, "rule_not_found"},
	{rules.ErrVersionConflict, http.StatusConflict, "rule_version_conflict"},
	{rules.ErrInvalidRule, http.StatusBadRequest, "invalid_rule"},
	// audit (codes in docs/api.md#audit)
	{chain.ErrEventNotFound, http.StatusNotFound, "audit_event_not_found"},
	{chain.ErrNoCheckpoint, http.StatusNotFound, "audit_no_checkpoint"},
	{chain.ErrNoVerification, http.StatusNotFound, "audit_no_verification"},
	{chain.ErrVerifyRunning, http.StatusConflict, "audit_verify_running"},
	{chain.ErrInvalidQuery, http.StatusBadRequest, "invalid_audit_query"},
	// clinical core (codes in docs/api.md#clinical-core; a rejected batch carries the code of
	// its first bad sample: unknown_code, wrong_unit, impossible_value, …)
	{core.ErrInvalidBatch, http.StatusUnprocessableEntity, "invalid_batch"},
	{core.ErrUnknownPatient, http.StatusUnprocessableEntity, "unknown_patient"},
	{core.ErrNotFound, http.StatusNotFound, "not_found"},
	{core.ErrInvalidRequest, http.StatusBadRequest, "invalid_request"},
	{core.ErrConflict, http.StatusConflict, "conflict"},
	{core.ErrNoPHISealer, http.StatusServiceUnavailable, "phi_unavailable"},
	// authentication and authorization (codes in docs/api.md#authentication-and-authorization).
	// A request without valid credentials is unauthenticated whatever the reason (an ended or
	// expired session included); sign-in answers say what the client must do next.
	{auth.ErrUnauthenticated, http.StatusUnauthorized, CodeUnauthenticated},
	{auth.ErrSessionExpired, http.StatusUnauthorized, CodeUnauthenticated},
	{auth.ErrInvalidCredentials, http.StatusUnauthorized, auth.ErrInvalidCredentials.Code},
	{auth.ErrMFARequired, http.StatusUnauthorized, auth.ErrMFARequired.Code},
	{auth.ErrOIDC, http.StatusUnauthorized, auth.ErrOIDC.Code},
	{auth.ErrEnrollmentInvalid, http.StatusUnauthorized, auth.ErrEnrollmentInvalid.Code},
	{auth.ErrAccountLocked, http.StatusTooManyRequests, auth.ErrAccountLocked.Code},
	{auth.ErrCSRFInvalid, http.StatusForbidden, auth.ErrCSRFInvalid.Code},
	{auth.ErrForbidden, http.StatusForbidden, CodeForbidden},
	{auth.ErrBreakGlassReason, http.StatusBadRequest, auth.ErrBreakGlassReason.Code},
	{auth.ErrNotFound, http.StatusNotFound, CodeNotFound},
	{auth.ErrConflict, http.StatusConflict, "conflict"},
	{auth.ErrInvalid, http.StatusBadRequest, "invalid_request"},
	// keys (codes in docs/api.md#keys): the key backend cannot serve a request that needs a
	// key (sealing or opening PHI, signing a receipt); nothing was stored without it.
	{keys.ErrSealed, http.StatusServiceUnavailable, "keys_sealed"},
	{keys.ErrUnavailable, http.StatusServiceUnavailable, "keys_unavailable"},
	{keys.ErrPermissionDenied, http.StatusServiceUnavailable, "keys_unavailable"},
	{keys.ErrKeyNotFound, http.StatusServiceUnavailable, "keys_missing"},
}

// CodedError is implemented by typed domain errors that carry a stable machine code of their
// own (e.g. a sample rejected for an unknown LOINC code). The server uses the code as it is;
// the HTTP status still comes from errorTable via errors.Is, or 400 when no entry matches.
type CodedError interface {
	error
	ErrorCode() string
}

// RetryAfter is implemented by errors that tell the client when to retry (rate limits,
// back-pressure); the value becomes the Retry-After header, in whole seconds.
type RetryAfter interface {
	RetryAfterSeconds() int
}

// classify returns the HTTP status, stable code and client-safe message for err.
func classify(err error) (status int, code, message string) {
	var api *APIError
	if errors.As(err, &api) {
		return api.Status, api.Code, api.Message
	}
	var he *echo.HTTPError
	if errors.As(err, &he) {
		msg := http.StatusText(he.Code)
		if m, ok := he.Message.(string); ok && m != "" {
			msg = m
		}
		switch he.Code {
		case http.StatusNotFound:
			return he.Code, CodeNotFound, "no such resource"
		case http.StatusMethodNotAllowed:
			return he.Code, CodeMethodNotAllowed, "method not allowed on this resource"
		case http.StatusRequestEntityTooLarge:
			return he.Code, CodePayloadTooLarge, "request body is larger than allowed"
		case http.StatusUnsupportedMediaType:
			return he.Code, CodeUnsupportedMedia, msg
		case http.StatusUnauthorized:
			return he.Code, CodeUnauthenticated, msg
		case http.StatusForbidden:
			return he.Code, CodeForbidden, msg
		case http.StatusTooManyRequests:
			return he.Code, CodeRateLimited, msg
		case http.StatusServiceUnavailable:
			return he.Code, CodeUnavailable, msg
		}
		if he.Code >= 400 && he.Code < 500 {
			return he.Code, CodeBadRequest, msg
		}
		return http.StatusInternalServerError, CodeInternal, "internal error"
	}
	for _, m := range errorTable {
		if errors.Is(err, m.err) {
			code = m.code
			var ce CodedError
			if errors.As(err, &ce) {
				code = ce.ErrorCode()
			}
			msg := err.Error()
			if m.status >= 500 {
				msg = http.StatusText(m.status)
			}
			return m.status, code, msg
		}
	}
	var ce CodedError
	if errors.As(err, &ce) {
		return http.StatusBadRequest, ce.ErrorCode(), err.Error()
	}
	return http.StatusInternalServerError, CodeInternal, "internal error"
}

// errorBody is the one JSON error envelope of the API.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code      string `json:"code"`
	Message   string `json:"message"`
	RequestID string `json:"request_id"`
}
