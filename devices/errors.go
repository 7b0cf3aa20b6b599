package devices

import (
	"errors"
	"fmt"
	"time"
)

// Outcomes of verification and ingestion that callers branch on (errors.Is). Each is
// returned wrapped in a *RejectError that carries its stable code; server/errors.go maps
// each sentinel to its HTTP status, and the MQTT adapter sends the code back to the device.
var (
	ErrMalformed            = errors.New("malformed upload")             // 400 malformed_upload
	ErrTooLarge             = errors.New("upload too large")             // 413 upload_too_large
	ErrUnknownDevice        = errors.New("unknown device")               // 401 unknown_device
	ErrUnknownKey           = errors.New("unknown or retired key")       // 401 unknown_key
	ErrBadSignature         = errors.New("invalid signature")            // 401 invalid_signature
	ErrDeviceSuspended      = errors.New("device suspended")             // 403 device_suspended
	ErrDeviceDecommissioned = errors.New("device decommissioned")        // 403 device_decommissioned
	ErrReplay               = errors.New("replayed sequence number")     // 409 replay
	ErrNotAssigned          = errors.New("device has no patient")        // 409 device_not_assigned
	ErrClockSkew            = errors.New("sent_at outside allowed skew") // 422 clock_skew
	ErrRateLimited          = errors.New("device rate limit exceeded")   // 429 rate_limited
	ErrQuotaExceeded        = errors.New("device quota exceeded")        // 429 quota_exceeded
	ErrBackpressure         = errors.New("ingestion is overloaded")      // 503 backpressure

	// Registry and enrollment.
	ErrNotFound     = errors.New("device not found")                    // 404 device_not_found
	ErrConflict     = errors.New("device state conflict")               // 409 device_conflict
	ErrInvalidToken = errors.New("invalid or expired enrollment token") // 401 invalid_enrollment_token
	ErrInvalidInput = errors.New("invalid device request")              // 400 invalid_device_request
)

// Stable reason codes (the audit event's Reason and the API error code). A code, once
// published, never changes meaning; docs/api.md and docs/devices.md list them.
const (
	CodeMalformed      = "malformed_upload"
	CodeTooLarge       = "upload_too_large"
	CodeUnknownDevice  = "unknown_device"
	CodeUnknownKey     = "unknown_key"
	CodeBadSignature   = "invalid_signature"
	CodeSuspended      = "device_suspended"
	CodeDecommissioned = "device_decommissioned"
	CodeReplay         = "replay"
	CodeNotAssigned    = "device_not_assigned"
	CodeClockSkew      = "clock_skew"
	CodeRateLimited    = "rate_limited"
	CodeQuotaExceeded  = "quota_exceeded"
	CodeBackpressure   = "backpressure"
	CodeNotFound       = "device_not_found"
	CodeConflict       = "device_conflict"
	CodeInvalidToken   = "invalid_enrollment_token"
	CodeInvalidInput   = "invalid_device_request"
)

var codeOf = map[error]string{
	ErrMalformed: CodeMalformed, ErrTooLarge: CodeTooLarge, ErrUnknownDevice: CodeUnknownDevice,
	ErrUnknownKey: CodeUnknownKey, ErrBadSignature: CodeBadSignature, ErrDeviceSuspended: CodeSuspended,
	ErrDeviceDecommissioned: CodeDecommissioned, ErrReplay: CodeReplay, ErrNotAssigned: CodeNotAssigned,
	ErrClockSkew: CodeClockSkew, ErrRateLimited: CodeRateLimited, ErrQuotaExceeded: CodeQuotaExceeded,
	ErrBackpressure: CodeBackpressure, ErrNotFound: CodeNotFound, ErrConflict: CodeConflict,
	ErrInvalidToken: CodeInvalidToken, ErrInvalidInput: CodeInvalidInput,
}

// RejectError is a refused upload or request: Err is one of the sentinels above, Code its
// stable reason code, Detail a client-safe explanation (never PHI or key material), and
// RetryAfter, when positive, when the client may try again (429 and 503).
type RejectError struct {
	Err        error
	Code       string
	Detail     string
	RetryAfter time.Duration
}

func (e *RejectError) Error() string {
	if e.Detail == "" {
		return e.Err.Error()
	}
	return e.Err.Error() + ": " + e.Detail
}

// Unwrap returns the sentinel.
func (e *RejectError) Unwrap() error { return e.Err }

// ErrorCode returns the stable reason code (server.CodedError).
func (e *RejectError) ErrorCode() string { return e.Code }

// RetryAfterSeconds returns RetryAfter rounded up to whole seconds (server.RetryAfter).
func (e *RejectError) RetryAfterSeconds() int {
	if e.RetryAfter <= 0 {
		return 0
	}
	return int((e.RetryAfter + time.Second - 1) / time.Second)
}

// reject builds a *RejectError for sentinel with a formatted detail.
func reject(sentinel error, format string, args ...any) *RejectError {
	return &RejectError{Err: sentinel, Code: codeOf[sentinel], Detail: fmt.Sprintf(format, args...)}
}

// ReasonOf returns the stable reason code of err: its RejectError code, or "internal_error".
func ReasonOf(err error) string {
	var re *RejectError
	if errors.As(err, &re) {
		return re.Code
	}
	for s, c := range codeOf {
		if errors.Is(err, s) {
			return c
		}
	}
	return "internal_error"
}
