package devices

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/internal/every"
)

// Retention is how long the devices area keeps what it stores per accepted upload
// (devices_uploads). Zero values take the defaults, which match the clinical core's
// (core.Retention): receipts as long as upload provenance, waveforms as long as
// observations.
type Retention struct {
	// Receipts is how long an accepted upload's row is kept: its receipt (answered again to
	// an exact re-send, and by GET /api/v1/uploads/{hash}/receipt and …/proof) and its
	// sequence record. Default 365 days. After it, an exact re-send of the upload is
	// refused as a replay and the hash is unknown to the receipt and proof endpoints; the
	// upload's audit event, in the transparency log, is kept for good.
	Receipts time.Duration
	// Waveforms is how long the waveform blocks of an upload are kept; after it they are
	// removed from the upload's row (the receipt stays). Default 90 days; never more than
	// Receipts.
	Waveforms time.Duration
	// Batch is the most rows one purge transaction touches; each batch commits with its own
	// audit event, so a long purge never holds locks or a transaction for long. Default
	// 20,000.
	Batch int
}

func (r *Retention) setDefaults() {
	if r.Receipts <= 0 {
		r.Receipts = 365 * 24 * time.Hour
	}
	if r.Waveforms <= 0 {
		r.Waveforms = 90 * 24 * time.Hour
	}
	if r.Batch <= 0 {
		r.Batch = 20_000
	}
	if r.Waveforms > r.Receipts {
		r.Waveforms = r.Receipts
	}
}

// Purged is what one EnforceRetention removed.
type Purged struct {
	Receipts  int64 // upload rows deleted
	Waveforms int64 // upload rows whose waveforms were removed
}

// EnforceRetention deletes the upload rows received before now − Retention.Receipts and
// removes the waveforms of those received before now − Retention.Waveforms, in batches of
// Retention.Batch rows. Each
// batch is one transaction with its audit event ("retention.receipts_purged",
// "retention.waveforms_purged": how many rows, the cutoff, the retention), so what was
// removed is always on record and nothing is removed without its record.
func (s *Service) EnforceRetention(ctx context.Context) (Purged, error) {
	var p Purged
	r := s.cfg.Retention
	now := s.cfg.Now().UTC()
	steps := []struct {
		action string
		keep   time.Duration
		sql    string
		count  *int64
	}{
		{"retention.waveforms_purged", r.Waveforms, `UPDATE devices_uploads SET waveforms = NULL WHERE ctid = ANY (ARRAY(
			SELECT ctid FROM devices_uploads WHERE received_at < $1 AND waveforms IS NOT NULL LIMIT $2))`, &p.Waveforms},
		{"retention.receipts_purged", r.Receipts, `DELETE FROM devices_uploads WHERE ctid = ANY (ARRAY(
			SELECT ctid FROM devices_uploads WHERE received_at < $1 LIMIT $2))`, &p.Receipts},
	}
	for _, st := range steps {
		cutoff := now.Add(-st.keep)
		for {
			var n int64
			err := s.inTx(ctx, func(tx pgx.Tx) error {
				tag, err := tx.Exec(ctx, st.sql, cutoff, r.Batch)
				if err != nil {
					return err
				}
				if n = tag.RowsAffected(); n == 0 {
					return nil
				}
				_, err = s.cfg.Recorder.Record(ctx, tx, audit.Event{Time: s.cfg.Now(), Action: st.action, Outcome: audit.OutcomeSuccess,
					Actor:   audit.Actor{Kind: audit.ActorService, ID: "devices.retention", AuthMethod: "internal"},
					Object:  audit.Object{Type: "devices_uploads"},
					Payload: map[string]any{"rows": n, "cutoff": cutoff, "retention_days": st.keep.Hours() / 24}})
				return err
			})
			if err != nil {
				return p, fmt.Errorf("devices retention: %s: %w", st.action, err)
			}
			*st.count += n
			if n < int64(r.Batch) {
				break
			}
		}
	}
	return p, nil
}

// RunRetention enforces the retention now and then every interval until ctx ends; failures
// are logged and retried at the next tick.
func (s *Service) RunRetention(ctx context.Context, interval time.Duration) {
	do := func() {
		p, err := s.EnforceRetention(ctx)
		if err != nil && ctx.Err() == nil {
			s.cfg.Logger.ErrorContext(ctx, "devices: retention", slog.String("error", err.Error()))
		}
		if p.Receipts+p.Waveforms > 0 {
			s.cfg.Logger.InfoContext(ctx, "devices: retention", slog.Int64("receipts_purged", p.Receipts), slog.Int64("waveforms_purged", p.Waveforms))
		}
	}
	do()
	every.Tick(ctx, interval, func(context.Context) { do() })
}
