package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain"
)

// `vigil-bench audit`: the audit chain end to end, from Record to integration in the log.

// benchResult is what `vigil-bench audit` measures.
type benchResult struct {
	Events          int     `json:"events"`
	Rate            int     `json:"target_rate"`
	Writers         int     `json:"writers"`
	TxSize          int     `json:"tx_size"`
	WriteSeconds    float64 `json:"write_seconds"`
	WriteRate       float64 `json:"write_events_per_s"`        // Record (COPY) rate, commit included
	EndToEndSeconds float64 `json:"end_to_end_seconds"`        // first Record to last event integrated
	SustainedRate   float64 `json:"sustained_events_per_s"`    // events / end-to-end time
	P50             float64 `json:"p50_commit_to_inclusion_s"` // per event: transaction start → batch integrated
	P99             float64 `json:"p99_commit_to_inclusion_s"`
	Max             float64 `json:"max_commit_to_inclusion_s"`
	Batches         int     `json:"batches"`
	LogSize         uint64  `json:"log_size"`
}

func newAuditCmd() *cobra.Command {
	var (
		events, rate, writers, txSize, batchSize, seqBatch int
		window, seqInterval                                time.Duration
		keepDB, asJSON                                     bool
	)
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Load-test the audit chain: events/s from Record to integrated, commit-to-inclusion latency",
		Long: `Bench creates a throwaway database on the server at VIGIL_DATABASE_URL (which must be allowed
to CREATE DATABASE), migrates it, starts the audit chain with embedded Trillian on it, and
records --events events from --writers concurrent writers, each committing transactions of
--tx-size events written with the recorder's RecordMany (the device path), paced to --rate events/s in
total (0: as fast as possible). It waits until every event is integrated in the log, then
reports the write rate, the sustained rate from first Record to last integration, and the
p50/p99/max time from each event's transaction to the integration of its batch. The database
is dropped afterwards unless --keep-db. Figures are in docs/benchmarks.md.`,
		Example: `  VIGIL_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres vigil-bench audit --events 300000 --rate 5000`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			admin := envOr("VIGIL_DATABASE_URL", "")
			dbURL, drop, err := benchDatabase(ctx, admin, false)
			if err != nil {
				return err
			}
			if !keepDB {
				defer drop()
			} else {
				slog.InfoContext(ctx, "bench database kept", slog.String("url", redactURL(dbURL)))
			}
			res, err := runAuditBench(ctx, dbURL, benchParams{events: events, rate: rate, writers: writers, txSize: txSize,
				batchSize: batchSize, window: window, seqInterval: seqInterval, seqBatch: seqBatch})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(out).Encode(res)
			}
			fmt.Fprintf(out, "events %d, writers %d × tx of %d, target rate %d/s\n", res.Events, res.Writers, res.TxSize, res.Rate)
			fmt.Fprintf(out, "write:       %.0f events/s (%.1f s)\n", res.WriteRate, res.WriteSeconds)
			fmt.Fprintf(out, "end to end:  %.0f events/s sustained (first Record → last integrated, %.1f s)\n", res.SustainedRate, res.EndToEndSeconds)
			fmt.Fprintf(out, "commit → inclusion: p50 %.3f s, p99 %.3f s, max %.3f s\n", res.P50, res.P99, res.Max)
			fmt.Fprintf(out, "batches %d, Trillian log size %d\n", res.Batches, res.LogSize)
			return nil
		},
	}
	cmd.Flags().IntVar(&events, "events", 100000, "events to record")
	cmd.Flags().IntVar(&rate, "rate", 5000, "target events/s over all writers; 0 = as fast as possible")
	cmd.Flags().IntVar(&writers, "writers", 4, "concurrent writers")
	cmd.Flags().IntVar(&txSize, "tx-size", 50, "events per transaction (RecordMany)")
	cmd.Flags().IntVar(&batchSize, "batch", 5000, "shipper: most events per batch (one Trillian leaf)")
	cmd.Flags().DurationVar(&window, "window", 200*time.Millisecond, "shipper: batching window")
	cmd.Flags().DurationVar(&seqInterval, "sequencer-interval", 100*time.Millisecond, "embedded Trillian sequencer pass interval")
	cmd.Flags().IntVar(&seqBatch, "sequencer-batch", 1000, "embedded Trillian sequencer leaves per pass")
	cmd.Flags().BoolVar(&keepDB, "keep-db", false, "keep the bench database")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

type benchParams struct {
	events, rate, writers, txSize, batchSize, seqBatch int
	window, seqInterval                                time.Duration
}

func runAuditBench(ctx context.Context, dbURL string, p benchParams) (*benchResult, error) {
	pcfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, err
	}
	pcfg.MaxConns = int32(p.writers + 4)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	rec, err := audit.NewOutbox(audit.Config{Pool: pool})
	if err != nil {
		return nil, err
	}
	defer rec.Close()
	svc, err := chain.Open(ctx, chain.Config{Pool: pool, Recorder: rec, Backlog: rec, DatabaseURL: dbURL, Signer: chain.NewEd25519Signer("bench", priv),
		BatchSize: p.batchSize, Window: p.window, SequencerInterval: p.seqInterval, SequencerBatchSize: p.seqBatch,
		CheckpointInterval: time.Second, Logger: slog.Default()})
	if err != nil {
		return nil, err
	}
	defer func() { _ = svc.Close(context.WithoutCancel(ctx)) }()

	var next atomic.Int64 // events claimed by writers
	var werr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < p.writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			evs := make([]audit.Event, p.txSize)
			for {
				first := next.Add(int64(p.txSize)) - int64(p.txSize)
				if first >= int64(p.events) {
					return
				}
				if p.rate > 0 { // pace: event k is due at start + k/rate
					due := start.Add(time.Duration(float64(first) / float64(p.rate) * float64(time.Second)))
					if d := time.Until(due); d > 0 {
						select {
						case <-ctx.Done():
							return
						case <-time.After(d):
						}
					}
				}
				n := min(p.txSize, p.events-int(first))
				for i := range n {
					evs[i] = audit.Event{
						Actor:  audit.Actor{Kind: audit.ActorDevice, ID: fmt.Sprintf("dev-%d", (first+int64(i))%1000), AuthMethod: "device-signature"},
						Action: "upload.accepted", Object: audit.Object{Type: "upload", ID: fmt.Sprint("u-", first+int64(i))},
						Outcome: audit.OutcomeSuccess, RequestID: fmt.Sprint("r-", first+int64(i)), SourceAddr: "198.51.100.7",
						Payload: map[string]any{"samples": 12},
					}
				}
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					_, err := rec.RecordMany(ctx, tx, evs[:n])
					return err
				})
				if err != nil {
					once.Do(func() { werr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	if werr != nil {
		return nil, werr
	}
	written := time.Since(start)
	svc.Shipper().Kick()
	for {
		st := svc.Shipper().Stats()
		if st.PendingEvents == 0 && st.UnintegratedBatches == 0 && !st.LastPass.Before(start.Add(written)) {
			break
		}
		if time.Since(start) > 30*time.Minute {
			return nil, fmt.Errorf("not integrated after 30 minutes: %+v", st)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	res := &benchResult{Events: p.events, Rate: p.rate, Writers: p.writers, TxSize: p.txSize,
		WriteSeconds: written.Seconds(), WriteRate: float64(p.events) / written.Seconds()}
	err = pool.QueryRow(ctx, `SELECT
			extract(epoch FROM max(b.integrated_at) - min(e.recorded_at))::float8,
			percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM b.integrated_at - e.recorded_at))::float8,
			percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM b.integrated_at - e.recorded_at))::float8,
			max(extract(epoch FROM b.integrated_at - e.recorded_at))::float8
		FROM audit_events e JOIN audit_batches b ON b.id = e.batch_id WHERE e.action = 'upload.accepted'`).
		Scan(&res.EndToEndSeconds, &res.P50, &res.P99, &res.Max)
	if err != nil {
		return nil, fmt.Errorf("bench figures: %w", err)
	}
	res.SustainedRate = float64(p.events) / res.EndToEndSeconds
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM audit_batches`).Scan(&res.Batches); err != nil {
		return nil, err
	}
	root, err := svc.Log().LatestRoot(ctx)
	if err != nil {
		return nil, err
	}
	res.LogSize = root.Size
	return res, nil
}
