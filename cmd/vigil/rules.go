package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/obs"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/internal/every"
	"github.com/vigilhealth/vigil/internal/pglisten"
	"github.com/vigilhealth/vigil/server"
)

// This file wires the clinical rules engine and the alarm service to core: core publishes
// the observations of every committed upload to a hand-off (core/obs) that the engine drains,
// the engine rebuilds state from core's storage (core.Service is a rules.History), and alarm
// transitions go to core's notification hub (alarms.Notifier).

// clinicalLink is what core is built with before the engine exists (the engine needs core's
// storage for its History): the hand-off core publishes to — observations handed off before
// the engine starts, or while it restarts, wait in it — and the engine, once started, for
// the release of discharged patients (core.PatientReleaser).
type clinicalLink struct {
	handoff *obs.Handoff
	eng     atomic.Pointer[rules.Engine]
}

func newClinicalLink(log *slog.Logger) *clinicalLink {
	return &clinicalLink{handoff: obs.NewHandoff(obs.HandoffConfig{Logger: log})}
}

// Forward hands the engine, inside the storing transaction, the observations of patients
// another replica evaluates (core.Forwarder); before the engine starts it does nothing (they
// wait in the hand-off, and the engine routes them when it starts).
func (l *clinicalLink) Forward(ctx context.Context, tx pgx.Tx, batches []obs.Committed) error {
	eng := l.eng.Load()
	if eng == nil {
		return nil
	}
	return eng.Forward(ctx, tx, batches)
}

// Pace holds core's Publish while another replica's inbox is deep (core.Pacer): the uploads
// that wait behind it are refused with 503 backpressure, as when the hand-off is full.
func (l *clinicalLink) Pace(ctx context.Context, batches []obs.Committed) {
	if eng := l.eng.Load(); eng != nil {
		eng.Pace(ctx, batches)
	}
}

// ReleasePatient ends monitoring of a discharged patient through the engine, once started.
func (l *clinicalLink) ReleasePatient(ctx context.Context, by audit.Event, patientID uuid.UUID, reason string) error {
	eng := l.eng.Load()
	if eng == nil {
		return nil
	}
	return eng.ReleasePatient(ctx, by, patientID, reason)
}

// clinical is the running rules engine and alarm service with their background loops
// (alarm escalations and reminders, no-data checks, state checkpoints).
type clinical struct {
	alarms *alarms.Service
	engine *rules.Engine
	leases *rules.Leases
	stop   context.CancelFunc
	wg     sync.WaitGroup
}

// startClinical builds the alarm service and rules engine, connects them to core (the
// hand-off, the hub, releases) and starts their loops; Close stops the loops, consumes what
// waits in the hand-off and writes a last checkpoint.
func startClinical(ctx context.Context, pool *pgxpool.Pool, rec audit.Recorder, coreSvc *core.Service, link *clinicalLink, listen *pglisten.Listener, log *slog.Logger) (*clinical, error) {
	svc, err := alarms.New(alarms.Config{Pool: pool, Recorder: rec, Notifier: coreSvc.Hub(), Logger: log})
	if err != nil {
		return nil, fmt.Errorf("alarms: %w", err)
	}
	// Several replicas may run on the database: each evaluates the patients of the lease
	// buckets it holds (core/rules/lease.go); alone, it holds them all.
	leases, err := rules.NewLeases(rules.LeaseConfig{Pool: pool, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	eng, err := rules.New(ctx, rules.Config{Pool: pool, Recorder: rec, Alarms: svc, History: coreSvc,
		Handoff: link.handoff, Logger: log, Leases: leases, Listener: listen})
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	link.eng.Store(eng)
	// Take this replica's share now, so that evaluation starts with the server.
	if err := leases.Step(ctx); err != nil {
		log.WarnContext(ctx, "rules leases: first step failed; retrying in the background", slog.String("error", err.Error()))
	}
	lctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	c := &clinical{alarms: svc, engine: eng, leases: leases, stop: stop}
	c.wg.Add(4)
	go func() { defer c.wg.Done(); leases.Run(lctx) }()
	go func() { defer c.wg.Done(); eng.RunInbox(lctx, time.Second) }()
	go func() { defer c.wg.Done(); svc.Run(lctx, 5*time.Second) }()
	go func() {
		defer c.wg.Done()
		n := 0
		every.Tick(lctx, 15*time.Second, func(lctx context.Context) {
			if _, err := eng.Tick(lctx); err != nil && lctx.Err() == nil {
				log.WarnContext(lctx, "rules tick failed", slog.String("error", err.Error()))
			}
			if n++; n%4 == 0 { // about every minute
				if err := eng.Checkpoint(lctx); err != nil && lctx.Err() == nil {
					log.WarnContext(lctx, "rules checkpoint failed", slog.String("error", err.Error()))
				}
			}
		})
	}()
	return c, nil
}

// Close stops the loops, checkpoints the engine's state, then gives the replica's lease
// buckets back so that another replica takes its patients at once.
func (c *clinical) Close(ctx context.Context) error {
	c.stop()
	c.wg.Wait()
	err := c.engine.Close(ctx)
	return errors.Join(err, c.leases.Release(ctx))
}

// wireClinical starts the rules engine and alarm service on core and hands them to the server
// (routes in server/alarms.go). Call it after core.New(core.Config{…, Handoff: link.handoff,
// Release: link}) with the same link; it adds its closer to sys.
func wireClinical(ctx context.Context, sys *system, srvCfg *server.Config, coreSvc *core.Service, link *clinicalLink) error {
	cl, err := startClinical(ctx, sys.pool, sys.rec, coreSvc, link, sys.listen, slog.Default())
	if err != nil {
		return err
	}
	sys.closers = append(sys.closers, cl.Close)
	srvCfg.Alarms, srvCfg.Rules = cl.alarms, cl.engine
	return nil
}
