package core

import (
	"context"
	"fmt"
	"sort"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/core/obs"
)

// Forwarder receives, inside the transaction that stores them, each patient's new
// observations (*rules.Engine satisfies it: with several replicas it writes those of patients
// another replica evaluates to that replica's inbox, so that they reach it even if this
// process dies right after the commit).
//
// Forward MUST NOT commit or roll back tx; an error fails the store (nothing is stored). The
// observations are also Published after the commit as usual.
type Forwarder interface {
	Forward(ctx context.Context, tx pgx.Tx, batches []obs.Committed) error
}

// Pacer is implemented by a Forwarder that may ask Publish to wait, after the commit and
// before the hand-off, while the observations it forwarded wait too long for their evaluation
// elsewhere (*rules.Engine: another replica's inbox is deep). Publish waiting holds its caller
// — the devices' group committer — as a full hand-off does, so that new uploads are refused
// with a retryable answer instead of piling up unevaluated. Pace MUST return within a bound
// of its own, and at once when ctx ends.
type Pacer interface {
	Pace(ctx context.Context, batches []obs.Committed)
}

// forward hands the observations just stored in tx to Config.Forward, by patient, in time order.
func (s *Service) forward(ctx context.Context, tx pgx.Tx, stored []Stored) error {
	if s.cfg.Forward == nil {
		return nil
	}
	batches := committedByPatient(stored)
	if len(batches) == 0 {
		return nil
	}
	if err := s.cfg.Forward.Forward(ctx, tx, batches); err != nil {
		return fmt.Errorf("store observations: forward to the rules: %w", err)
	}
	return nil
}

// committedByPatient groups stored observations by patient (first appearance order), each
// patient's in ascending effective time.
func committedByPatient(stored []Stored) []obs.Committed {
	byPatient := map[uuid.UUID]int{}
	var batches []obs.Committed
	for i := range stored {
		for _, o := range stored[i].Observations {
			k, ok := byPatient[o.PatientID]
			if !ok {
				k = len(batches)
				byPatient[o.PatientID] = k
				batches = append(batches, obs.Committed{PatientID: o.PatientID})
			}
			batches[k].Observations = append(batches[k].Observations, o)
		}
	}
	for _, b := range batches {
		sort.SliceStable(b.Observations, func(i, j int) bool { return b.Observations[i].EffectiveAt.Before(b.Observations[j].EffectiveAt) })
	}
	return batches
}
