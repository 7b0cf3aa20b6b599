package core

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/google/uuid"
	"github.com/vigilhealth/vigil/core/obs"
)

// Observation is a validated, normalized sample as stored: a known LOINC code, its value in
// the canonical UCUM unit of that code. It is the one type of package core/obs, which the
// rules engine consumes too.
type Observation = obs.Observation

const flagArtifact = 1

// normalized is the outcome of validating one batch.
type normalized struct {
	obs        []Observation // sorted by (code, effective time), in-batch duplicates removed
	duplicates int           // identical in-batch duplicates collapsed
	flagged    int
	// outside: samples taken when the device was not the patient's (outside_assignment),
	// refused one by one while the rest of the batch is stored.
	outside []SampleError
}

// normalize validates and normalizes b at time now. Every bad sample is reported; if any, the
// batch is rejected as a whole (*BatchError). The result is deterministic: observations sorted
// by (code, effective time); samples with the same code and time (after conversion to the
// canonical unit and truncation to microseconds) collapse into one when their values are equal
// and reject the batch (conflicting_duplicate) when they differ.
func (s *Service) normalize(b Batch, now time.Time) (normalized, error) {
	var bad []SampleError
	p := b.Provenance
	if b.PatientID == uuid.Nil || p.DeviceID == "" || p.KeyID == "" || p.UploadHash == ([32]byte{}) {
		bad = append(bad, SampleError{Index: -1, Code: CodeInvalidProvenance,
			Detail: "patient id, device id, key id and upload hash are required"})
	}
	if len(b.Samples) > s.cfg.MaxSamplesPerBatch {
		bad = append(bad, SampleError{Index: -1, Code: CodeTooManySamples,
			Detail: fmt.Sprintf("%d samples, at most %d", len(b.Samples), s.cfg.MaxSamplesPerBatch)})
		return normalized{}, &BatchError{Samples: bad}
	}
	latest := now.Add(s.cfg.MaxFutureSkew)
	var notBefore time.Time      // the earliest time a sample may belong to the batch's patient
	skew := s.cfg.AssignmentSkew // a device's first patient
	if !b.PreviousUntil.IsZero() {
		skew = s.cfg.ReassignmentSkew // the device was another patient's: clock error only
	}
	if !b.AssignedSince.IsZero() {
		notBefore = b.AssignedSince.UTC().Truncate(time.Microsecond).Add(-skew)
	}
	if prev := b.PreviousUntil.UTC().Truncate(time.Microsecond); !b.PreviousUntil.IsZero() && prev.After(notBefore) {
		notBefore = prev
	}
	oldest := now.Add(-s.cfg.Retention.Observations)
	out := make([]Observation, 0, len(b.Samples))
	idx := make([]int, 0, len(b.Samples))
	var res normalized
	for i, smp := range b.Samples {
		info, ok := catalog[smp.Code]
		if !ok {
			bad = append(bad, SampleError{Index: i, Code: CodeUnknownCode, LOINC: smp.Code,
				Detail: fmt.Sprintf("LOINC code %q is not known", smp.Code)})
			continue
		}
		v, ok := info.Convert(smp.Value, smp.Unit)
		if !ok {
			bad = append(bad, SampleError{Index: i, Code: CodeWrongUnit, LOINC: smp.Code,
				Detail: fmt.Sprintf("unit %q is not accepted for %s (accepted: %v)", smp.Unit, smp.Code, info.Units())})
			continue
		}
		switch {
		case math.IsNaN(smp.Value) || math.IsInf(smp.Value, 0):
			bad = append(bad, SampleError{Index: i, Code: CodeImpossibleValue, LOINC: smp.Code, Detail: "value is not a finite number"})
			continue
		case !info.Possible.Contains(v):
			bad = append(bad, SampleError{Index: i, Code: CodeImpossibleValue, LOINC: smp.Code,
				Detail: fmt.Sprintf("%g %s is outside the possible range [%g, %g]", v, info.Unit, info.Possible.Min, info.Possible.Max)})
			continue
		case info.Integer && v != math.Trunc(v):
			bad = append(bad, SampleError{Index: i, Code: CodeImpossibleValue, LOINC: smp.Code, Detail: "value must be an integer"})
			continue
		}
		t := smp.Time.UTC().Truncate(time.Microsecond)
		switch {
		case smp.Time.IsZero():
			bad = append(bad, SampleError{Index: i, Code: CodeInvalidTime, LOINC: smp.Code, Detail: "effective time is missing"})
			continue
		case t.After(latest):
			bad = append(bad, SampleError{Index: i, Code: CodeFutureTime, LOINC: smp.Code,
				Detail: fmt.Sprintf("effective time %s is more than %s ahead of the server clock", t.Format(time.RFC3339), s.cfg.MaxFutureSkew)})
			continue
		case !notBefore.IsZero() && t.Before(notBefore):
			res.outside = append(res.outside, SampleError{Index: i, Code: CodeOutsideAssignment, LOINC: smp.Code,
				Detail: fmt.Sprintf("effective time %s is before the device was this patient's (from %s: assigned at %s, %s of clock skew allowed, never before its previous patient's assignment ended)",
					t.Format(time.RFC3339), notBefore.Format(time.RFC3339), b.AssignedSince.UTC().Format(time.RFC3339), skew)})
			continue
		case t.Before(oldest):
			bad = append(bad, SampleError{Index: i, Code: CodeTooOld, LOINC: smp.Code,
				Detail: fmt.Sprintf("effective time %s is older than the retention of %s", t.Format(time.RFC3339), s.cfg.Retention.Observations)})
			continue
		}
		artifact := !info.Plausible.Contains(v)
		out = append(out, Observation{PatientID: b.PatientID, Code: smp.Code, Value: v, Unit: info.Unit,
			EffectiveAt: t, Artifact: artifact, DeviceID: p.DeviceID})
		idx = append(idx, i)
	}
	// Sort by (code, time, index) and look for duplicates.
	order := make([]int, len(out))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool {
		x, y := &out[order[a]], &out[order[b]]
		if x.Code != y.Code {
			return x.Code < y.Code
		}
		return x.EffectiveAt.Before(y.EffectiveAt)
	})
	sorted := make([]Observation, 0, len(out))
	for k, oi := range order {
		o := out[oi]
		if k > 0 {
			prev := &sorted[len(sorted)-1]
			if prev.Code == o.Code && prev.EffectiveAt.Equal(o.EffectiveAt) {
				if prev.Value == o.Value {
					res.duplicates++
					continue
				}
				bad = append(bad, SampleError{Index: idx[oi], Code: CodeConflictingDuplicate, LOINC: o.Code,
					Detail: fmt.Sprintf("another sample of the batch has the same code and time with value %g, this one %g", prev.Value, o.Value)})
				continue
			}
		}
		if o.Artifact {
			res.flagged++
		}
		sorted = append(sorted, o)
	}
	if len(sorted) == 0 && len(bad) == 0 && len(res.outside) > 0 {
		bad = res.outside // nothing of the batch is the patient's: refused as a whole
	}
	if len(bad) > 0 {
		sort.SliceStable(bad, func(i, j int) bool { return bad[i].Index < bad[j].Index })
		return normalized{}, &BatchError{Samples: bad}
	}
	res.obs = sorted
	return res, nil
}

// Validate checks a batch the way Ingest does, without storing anything: nil, or a *BatchError.
func (s *Service) Validate(b Batch) error {
	_, err := s.normalize(b, s.cfg.Now())
	return err
}
