package core

import (
	"errors"
	"fmt"
	"strings"
)

// Errors callers branch on.
var (
	// ErrInvalidBatch: the batch was rejected as a whole, nothing stored; the error is a
	// *BatchError listing every bad sample with its code.
	ErrInvalidBatch = errors.New("invalid batch")
	// ErrUnknownPatient: the batch or request names a patient core does not know.
	ErrUnknownPatient = errors.New("unknown patient")
	// ErrNotFound: no such patient, ward, site, webhook or delivery.
	ErrNotFound = errors.New("not found")
	// ErrInvalidRequest: a malformed request (bad range, bad bucket, empty name, …).
	ErrInvalidRequest = errors.New("invalid request")
	// ErrConflict: the request conflicts with stored state (a duplicate MRN, say).
	ErrConflict = errors.New("conflict")
	// ErrNoPHISealer: patient identifying data cannot be sealed or opened: Config.PHI is unset.
	ErrNoPHISealer = errors.New("no PHI sealer configured")
)

// Stable codes of a rejected sample (SampleError.Code). A published code never changes meaning.
const (
	CodeUnknownCode          = "unknown_code"          // LOINC code not known to core
	CodeWrongUnit            = "wrong_unit"            // unit not accepted for the code
	CodeImpossibleValue      = "impossible_value"      // NaN, ±Inf, outside the possible range, or not an integer where one is required
	CodeInvalidTime          = "invalid_time"          // zero effective time
	CodeFutureTime           = "future_time"           // effective time later than now + Config.MaxFutureSkew
	CodeTooOld               = "too_old"               // effective time older than the observation retention
	CodeConflictingDuplicate = "conflicting_duplicate" // two samples of the batch, same code and time, different values
	CodeTooManySamples       = "too_many_samples"      // the batch holds more than Config.MaxSamplesPerBatch samples
	CodeInvalidProvenance    = "invalid_provenance"    // provenance incomplete (device id, key id, hash)
	// CodeOutsideAssignment: the sample was taken before the device was assigned to the batch's
	// patient (Batch.AssignedSince): it belongs to whoever wore the device then, or to no one.
	CodeOutsideAssignment = "outside_assignment"
)

// Sentinels per sample code, so callers can use errors.Is on a *BatchError.
var (
	ErrUnknownCode          = &sampleKind{CodeUnknownCode}
	ErrWrongUnit            = &sampleKind{CodeWrongUnit}
	ErrImpossibleValue      = &sampleKind{CodeImpossibleValue}
	ErrInvalidTime          = &sampleKind{CodeInvalidTime}
	ErrFutureTime           = &sampleKind{CodeFutureTime}
	ErrTooOld               = &sampleKind{CodeTooOld}
	ErrConflictingDuplicate = &sampleKind{CodeConflictingDuplicate}
	ErrTooManySamples       = &sampleKind{CodeTooManySamples}
	ErrInvalidProvenance    = &sampleKind{CodeInvalidProvenance}
	ErrOutsideAssignment    = &sampleKind{CodeOutsideAssignment}
)

var kinds = map[string]*sampleKind{}

func init() {
	for _, k := range []*sampleKind{ErrUnknownCode, ErrWrongUnit, ErrImpossibleValue, ErrInvalidTime,
		ErrFutureTime, ErrTooOld, ErrConflictingDuplicate, ErrTooManySamples, ErrInvalidProvenance, ErrOutsideAssignment} {
		kinds[k.code] = k
	}
}

type sampleKind struct{ code string }

func (k *sampleKind) Error() string     { return "sample rejected: " + k.code }
func (k *sampleKind) ErrorCode() string { return k.code }

// SampleError is one rejected sample. Index is the sample's position in Batch.Samples (-1 for
// a problem of the batch as a whole).
type SampleError struct {
	Index  int    `json:"index"`
	Code   string `json:"code"`
	LOINC  string `json:"loinc,omitempty"`
	Detail string `json:"detail"`
}

func (e *SampleError) Error() string {
	if e.Index < 0 {
		return fmt.Sprintf("%s: %s", e.Code, e.Detail)
	}
	return fmt.Sprintf("sample %d: %s: %s", e.Index, e.Code, e.Detail)
}

// ErrorCode returns the stable code.
func (e *SampleError) ErrorCode() string { return e.Code }

// Unwrap returns the code's sentinel (ErrUnknownCode, …).
func (e *SampleError) Unwrap() error { return kinds[e.Code] }

// BatchError rejects a whole batch: nothing of it is stored. Samples lists every bad sample in
// index order. errors.Is(err, ErrInvalidBatch) holds, and so does errors.Is(err, ErrWrongUnit)
// etc. for each code present.
type BatchError struct {
	Samples []SampleError
}

func (e *BatchError) Error() string {
	var b strings.Builder
	b.WriteString("invalid batch: ")
	for i := range e.Samples {
		if i > 0 {
			b.WriteString("; ")
		}
		if i == 5 {
			fmt.Fprintf(&b, "and %d more", len(e.Samples)-5)
			break
		}
		b.WriteString(e.Samples[i].Error())
	}
	return b.String()
}

// ErrorCode is the code of the first bad sample (the HTTP error code of the upload).
func (e *BatchError) ErrorCode() string {
	if len(e.Samples) == 0 {
		return "invalid_batch"
	}
	return e.Samples[0].Code
}

// Is makes errors.Is(err, ErrInvalidBatch) hold.
func (e *BatchError) Is(target error) bool { return target == ErrInvalidBatch }

// Unwrap returns the sample errors.
func (e *BatchError) Unwrap() []error {
	out := make([]error, len(e.Samples))
	for i := range e.Samples {
		out[i] = &e.Samples[i]
	}
	return out
}

// IngestManyError says which batch of an IngestMany call failed; all of them were rolled back.
type IngestManyError struct {
	Index int // position in the batches slice
	Err   error
}

func (e *IngestManyError) Error() string { return fmt.Sprintf("batch %d: %v", e.Index, e.Err) }

// Unwrap returns the batch's error.
func (e *IngestManyError) Unwrap() error { return e.Err }
