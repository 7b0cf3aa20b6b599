package core

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core/obs"
	"github.com/vigilhealth/vigil/internal/every"
)

// PatientReleaser ends rule monitoring of a discharged patient (its open alarms resolved, its
// rule state reset); *rules.Engine satisfies it. Core calls it after the discharge commits.
// ReleasePatient MUST be idempotent and safe for concurrent use.
type PatientReleaser interface {
	ReleasePatient(ctx context.Context, by audit.Event, patientID uuid.UUID, reason string) error
}

// Retention is the retention policy per data class: whole daily partitions older than the
// class's retention are dropped (audited) by EnforceRetention.
type Retention struct {
	// Observations is how long device observations are kept. Default 90 days. Samples older
	// than this are rejected on ingest (too_old).
	Observations time.Duration
	// Uploads is how long upload provenance rows are kept. Default 365 days; never less than
	// Observations (an observation must always be traceable to its upload).
	Uploads time.Duration
}

// Config configures a Service. Zero values take the documented defaults.
type Config struct {
	// Pool is the installation's database. Required.
	Pool *pgxpool.Pool
	// Recorder records every audit event of the clinical core (the process's audit.Outbox).
	// Required.
	Recorder audit.Recorder
	// Handoff receives the observations of every committed upload (Publish), for the rules
	// engine to drain. Default: none (no rules run; tools that only store).
	Handoff *obs.Handoff
	// Forward is called inside every transaction that stores observations (Store), with
	// each patient's new observations: with several replicas, the rules engine hands those of
	// patients another replica evaluates to it (forward.go). Default: none.
	Forward Forwarder
	// Release ends rule monitoring when a patient is discharged. Default: none.
	Release PatientReleaser
	// Hub receives notifications for SSE streams. Default: a new Hub with default config.
	Hub *Hub
	// PHI seals and opens patient identifying data and computes its blind index. Required for
	// the patient API (ErrNoPHISealer without it); ingest does not need it.
	PHI PHISealer
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// MaxFutureSkew is how far in the future a sample's effective time may be. Default 5 min.
	MaxFutureSkew time.Duration
	// AssignmentSkew is how long before its device's first assignment (Batch.AssignedSince,
	// with no previous patient) a sample may be stamped and still be the patient's: device
	// clocks run behind, and a new monitor is connected a while before its assignment is
	// recorded; no other patient has used it. Default 5 min (the clock skew core accepts
	// ahead, MaxFutureSkew, is 5 min too).
	AssignmentSkew time.Duration
	// ReassignmentSkew is the same for a device that was another patient's before
	// (Batch.PreviousUntil set): only clock error, since readings from the gap between two
	// patients are most likely the previous one's (a monitor unassigned before it was
	// unplugged) and whose they are cannot be known. Never before PreviousUntil. Default 30 s.
	// Either way, samples before the limit are refused one by one (outside_assignment) while
	// the rest of the upload is stored.
	ReassignmentSkew time.Duration
	// MaxSamplesPerBatch bounds a batch. Default 50,000.
	MaxSamplesPerBatch int
	// Retention per data class.
	Retention Retention
	// PartitionsAhead is how many days of partitions MaintainPartitions keeps created ahead
	// of today. Default 7.
	PartitionsAhead int
	// Webhook configures outgoing webhook delivery.
	Webhook WebhookConfig
	// WebhookSecrets derives webhook secrets from the key ring, so that none is stored in
	// the database. Default: none (a random secret per webhook, stored in core_webhooks).
	WebhookSecrets WebhookSecrets
	// Logger reports failures of background work. Default slog.Default().
	Logger *slog.Logger
}

// Service is the clinical core's data service: ingest, storage, queries, patients,
// notifications. It is safe for concurrent use.
type Service struct {
	cfg   Config
	pool  *pgxpool.Pool
	hub   *Hub
	parts partitionCache
	// known patients (ids), so ingest checks existence without a query per batch.
	patients sync.Map
	// derived webhook secrets, by webhook id and key version
	secrets sync.Map
	stats   struct {
		batches, samples, stored, duplicates, rejected atomic.Int64
	}
}

// New returns a Service. It does no I/O: call MaintainPartitions (or Run) to create
// partitions ahead of time; ingest also creates missing partitions on demand.
func New(cfg Config) (*Service, error) {
	if cfg.Pool == nil || cfg.Recorder == nil {
		return nil, errors.New("core: Config.Pool and Config.Recorder are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxFutureSkew <= 0 {
		cfg.MaxFutureSkew = 5 * time.Minute
	}
	if cfg.AssignmentSkew <= 0 {
		cfg.AssignmentSkew = 5 * time.Minute
	}
	if cfg.ReassignmentSkew <= 0 {
		cfg.ReassignmentSkew = 30 * time.Second
	}
	if cfg.MaxSamplesPerBatch <= 0 {
		cfg.MaxSamplesPerBatch = 50000
	}
	if cfg.Retention.Observations <= 0 {
		cfg.Retention.Observations = 90 * 24 * time.Hour
	}
	if cfg.Retention.Uploads <= 0 {
		cfg.Retention.Uploads = 365 * 24 * time.Hour
	}
	if cfg.Retention.Uploads < cfg.Retention.Observations {
		cfg.Retention.Uploads = cfg.Retention.Observations
	}
	if cfg.PartitionsAhead <= 0 {
		cfg.PartitionsAhead = 7
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := cfg.Webhook.defaults(); err != nil {
		return nil, fmt.Errorf("core: %w", err)
	}
	if cfg.Hub == nil {
		cfg.Hub = NewHub(HubConfig{})
	}
	s := &Service{cfg: cfg, pool: cfg.Pool, hub: cfg.Hub}
	s.parts.known = map[string]bool{}
	return s, nil
}

// Hub returns the notification hub (for SSE handlers and as the alarms Notifier).
func (s *Service) Hub() *Hub { return s.hub }

// Retention is the retention policy in force (Config.Retention with its defaults), for the
// areas that keep data alongside core's (the devices area's receipts and waveforms).
func (s *Service) Retention() Retention { return s.cfg.Retention }

// Stats are counters since the Service started: batches published after their commit, their
// samples, stored and duplicate; batches refused by Prepare. (The rules' counters are the
// hand-off's: obs.Handoff.Stats.)
type Stats struct {
	Batches, Samples, Stored, Duplicates, Rejected int64
}

// Stats returns the counters.
func (s *Service) Stats() Stats {
	return Stats{Batches: s.stats.batches.Load(), Samples: s.stats.samples.Load(), Stored: s.stats.stored.Load(),
		Duplicates: s.stats.duplicates.Load(), Rejected: s.stats.rejected.Load()}
}

// Run keeps partitions created ahead and enforces retention every interval until ctx ends.
// Failures are logged and retried at the next interval.
func (s *Service) Run(ctx context.Context, interval time.Duration) {
	do := func() {
		if err := s.MaintainPartitions(ctx); err != nil && ctx.Err() == nil {
			s.cfg.Logger.ErrorContext(ctx, "core: create partitions", slog.String("error", err.Error()))
		}
		if _, err := s.EnforceRetention(ctx); err != nil && ctx.Err() == nil {
			s.cfg.Logger.ErrorContext(ctx, "core: retention", slog.String("error", err.Error()))
		}
	}
	do()
	every.Tick(ctx, interval, func(context.Context) { do() })
}
