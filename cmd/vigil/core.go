package main

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/internal/every"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/server"
)

// wireCore builds the clinical core (ingest, time-series storage, patients, notifications),
// starts its background work — partitions kept created ahead and retention enforced hourly,
// webhook deliveries every second — and the rules engine and alarm service on its ingest path
// (wireClinical), and hands them to the server. Webhooks reach only public addresses unless
// the operator allows networks (--webhook-allow-net, VIGIL_WEBHOOK_ALLOW_NETS). phi seals
// patient identifying data (the key ring's PHI helper); without it the patient API answers
// phi_unavailable. Its closers stop the loops; the notification hub is closed when ctx ends
// so that SSE streams do not hold up a graceful shutdown.
func wireCore(ctx context.Context, sys *system, rc runConfig, srvCfg *server.Config, phi core.PHISealer) (*core.Service, error) {
	link := newClinicalLink(slog.Default())
	ret, err := retentionFromEnv(ctx)
	if err != nil {
		return nil, err
	}
	allow, err := webhookAllowNets(ctx, rc)
	if err != nil {
		return nil, err
	}
	cfg := core.Config{Pool: sys.pool, Recorder: sys.rec, Handoff: link.handoff, Forward: link, Release: link, Retention: ret, Logger: slog.Default(),
		Webhook: core.WebhookConfig{AllowNets: allow}}
	if phi != nil {
		cfg.PHI = phi
	}
	if sys.keys != nil {
		cfg.WebhookSecrets = ringWebhookSecrets{sys.keys}
	}
	svc, err := core.New(cfg)
	if err != nil {
		return nil, err
	}
	if err := svc.MaintainPartitions(ctx); err != nil {
		return nil, fmt.Errorf("core: %w", err)
	}
	// The live stream is one stream across the replicas on the database (core/hub_replicas.go).
	relay, err := core.StartHubRelay(ctx, svc.Hub(), core.HubRelayConfig{Pool: sys.pool, Logger: slog.Default(), Listener: sys.listen})
	if err != nil {
		return nil, err
	}
	sys.closers = append(sys.closers, relay.Close)
	lctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Add(4)
	// Partitions ahead on every replica (advisory-locked, idempotent); retention once per
	// database, on the leader (ha.go).
	go func() {
		defer wg.Done()
		every.Tick(lctx, time.Hour, func(ctx context.Context) {
			if err := svc.MaintainPartitions(ctx); err != nil && ctx.Err() == nil {
				slog.ErrorContext(ctx, "core: create partitions", slog.String("error", err.Error()))
			}
		})
	}()
	go func() {
		defer wg.Done()
		onLeader(lctx, sys.leader, time.Hour, func(ctx context.Context) {
			if _, err := svc.EnforceRetention(ctx); err != nil && ctx.Err() == nil {
				slog.ErrorContext(ctx, "core: retention", slog.String("error", err.Error()))
			}
		})
	}()
	go func() { defer wg.Done(); svc.RunWebhooks(lctx, time.Second) }()
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
		case <-lctx.Done():
		}
		svc.Hub().Close()
	}()
	sys.closers = append(sys.closers, func(context.Context) error { stop(); wg.Wait(); return nil })
	if err := wireClinical(ctx, sys, srvCfg, svc, link); err != nil {
		return nil, err
	}
	srvCfg.Core = svc
	return svc, nil
}

func init() {
	subcommands = append(subcommands, newCoreCmd)
	phiRewrapStores = append(phiRewrapStores, func(db *database) (string, keys.RewrapStore) {
		svc, err := core.New(core.Config{Pool: db.pool, Recorder: db.rec})
		return "core_patients.phi_sealed", patientPHIStore{svc, err}
	})
}

// patientPHIStore is keys.RewrapStore over core's sealed patient PHI.
type patientPHIStore struct {
	svc *core.Service
	err error // core.New failed (no pool)
}

func (p patientPHIStore) NextSealed(ctx context.Context, after string, limit int) ([]keys.StoredCiphertext, error) {
	if p.err != nil {
		return nil, p.err
	}
	items, err := p.svc.NextSealedPHI(ctx, after, limit)
	if err != nil {
		return nil, err
	}
	out := make([]keys.StoredCiphertext, len(items))
	for i, it := range items {
		out[i] = keys.StoredCiphertext{ID: it.ID, Old: it.Old}
	}
	return out, nil
}

func (p patientPHIStore) ReplaceSealed(ctx context.Context, items []keys.StoredCiphertext) error {
	if p.err != nil {
		return p.err
	}
	in := make([]core.SealedPHI, len(items))
	for i, it := range items {
		in[i] = core.SealedPHI{ID: it.ID, Old: it.Old, New: it.New}
	}
	return p.svc.ReplaceSealedPHI(ctx, in)
}

// ringWebhookSecrets derives each webhook's secret as HMAC(webhook-hmac key, webhook id), so
// that the database never holds webhook secrets.
type ringWebhookSecrets struct{ ring *keys.Ring }

func (r ringWebhookSecrets) Derive(ctx context.Context, version int, id uuid.UUID) ([]byte, int, error) {
	return r.ring.Backend().MAC(ctx, string(keys.WebhookHMAC), version, []byte("vigil/webhook-secret/v1\x00"+id.String()))
}

// retentionFromEnv reads the retention per data class: VIGIL_RETENTION_OBSERVATIONS_DAYS
// (default 90) and VIGIL_RETENTION_UPLOADS_DAYS (default 365, never below observations).
func retentionFromEnv(ctx context.Context) (core.Retention, error) {
	var r core.Retention
	for _, v := range []struct {
		name string
		dst  *time.Duration
	}{{"VIGIL_RETENTION_OBSERVATIONS_DAYS", &r.Observations}, {"VIGIL_RETENTION_UPLOADS_DAYS", &r.Uploads}} {
		s := envOrCtx(ctx, v.name, "")
		if s == "" {
			continue
		}
		d, err := strconv.Atoi(s)
		if err != nil || d < 1 {
			return r, fmt.Errorf("%s=%q: want a whole number of days ≥ 1", v.name, s)
		}
		*v.dst = time.Duration(d) * 24 * time.Hour
	}
	return r, nil
}

func newCoreCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "core",
		Short: "Clinical core maintenance: time partitions and retention",
	}
	cmd.PersistentFlags().String("data-dir", envOr("VIGIL_DATA_DIR", "./.vigil"), "directory of the local key ring (env VIGIL_DATA_DIR): the command's audit events are authenticated with it")
	cmd.AddCommand(&cobra.Command{
		Use:   "partitions",
		Short: "List the daily partitions of each clinical data class",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withCore(cmd, func(ctx context.Context, _ *database, svc *core.Service) error {
				parts, err := svc.Partitions(ctx)
				if err != nil {
					return err
				}
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "CLASS\tPARTITION\tFROM\tTO")
				for _, p := range parts {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", p.Class, p.Name, p.From.Format(time.DateOnly), p.To.Format(time.DateOnly))
				}
				return w.Flush()
			})
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "maintain",
		Short: "Create partitions ahead and remove (audited) what is past its retention",
		Long: `Create the daily partitions from today through 7 days ahead, then drop every partition
whose whole range is older than its data class's retention, each drop recorded as a
retention.partition_dropped audit event; then remove the waveforms of accepted device
uploads older than the observations' retention and the uploads' rows (receipts) older than
the uploads' retention, in batches, each recorded as retention.waveforms_purged or
retention.receipts_purged. vigil serve does the same every hour.

Retention: VIGIL_RETENTION_OBSERVATIONS_DAYS (default 90), VIGIL_RETENTION_UPLOADS_DAYS
(default 365, never less than observations).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withCore(cmd, func(ctx context.Context, db *database, svc *core.Service) error {
				if err := svc.MaintainPartitions(ctx); err != nil {
					return err
				}
				dropped, err := svc.EnforceRetention(ctx)
				for _, p := range dropped {
					fmt.Fprintf(cmd.OutOrStdout(), "dropped %s (%s, %s .. %s)\n", p.Name, p.Class, p.From.Format(time.DateOnly), p.To.Format(time.DateOnly))
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%d partition(s) dropped\n", len(dropped))
				ret := svc.Retention()
				ds, err := devices.New(devices.Config{Pool: db.pool, Recorder: db.rec, NoChangeListener: true,
					Retention: devices.Retention{Receipts: ret.Uploads, Waveforms: ret.Observations}})
				if err != nil {
					return err
				}
				defer func() { _ = ds.Close(context.WithoutCancel(ctx)) }()
				p, err := ds.EnforceRetention(ctx)
				fmt.Fprintf(cmd.OutOrStdout(), "%d device upload receipt(s) purged, waveforms removed from %d upload(s)\n", p.Receipts, p.Waveforms)
				return err
			})
		},
	})
	return cmd
}

func withCore(cmd *cobra.Command, fn func(ctx context.Context, db *database, svc *core.Service) error) error {
	ctx := cmd.Context()
	ret, err := retentionFromEnv(ctx)
	if err != nil {
		return err
	}
	db, err := openDB(ctx, envOrCtx(ctx, "VIGIL_DATABASE_URL", ""))
	if err != nil {
		return err
	}
	defer db.Close()
	dataDir, _ := cmd.Flags().GetString("data-dir")
	closeRing, err := authenticateCommand(ctx, dataDir, db)
	if err != nil {
		return err
	}
	defer func() { _ = closeRing(ctx) }()
	svc, err := core.New(core.Config{Pool: db.pool, Recorder: db.rec, Retention: ret})
	if err != nil {
		return err
	}
	return fn(ctx, db, svc)
}
