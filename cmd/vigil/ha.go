package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/internal/every"
	"github.com/vigilhealth/vigil/internal/leader"
)

// Several `vigil serve` replicas may run on one database (docs/operations.md). The passes
// that must run once per database — core's and devices' retention — run on the replica that
// leads "background" (internal/leader); the others' passes are each safe to run on every
// replica (partitions ahead: advisory-locked and idempotent; webhook deliveries and alarm
// timers: rows claimed with SKIP LOCKED; audit checkpoints: serialized by an advisory lock;
// rule timers: on the patient's owner only, core/rules/lease.go).

// startLeader joins the background leadership: one step now (a lone replica leads from its
// start), then in the background until the system closes.
func startLeader(ctx context.Context, sys *system) error {
	el, err := leader.New(leader.Config{Pool: sys.pool, Name: "background", Logger: slog.Default()})
	if err != nil {
		return err
	}
	if err := el.Step(ctx); err != nil {
		slog.WarnContext(ctx, "leader: first step failed; retrying in the background", slog.String("error", err.Error()))
	}
	lctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { defer close(done); el.Run(lctx) }()
	sys.leader = el
	sys.closers = append(sys.closers, func(context.Context) error { stop(); <-done; return nil })
	return nil
}

// onLeader calls fn while this replica leads: at once when it becomes leader, then every
// interval; leadership is checked every 30 s (or interval, if shorter). Without an elector
// (tools, tests) it calls fn every interval like every.Tick after a first call.
func onLeader(ctx context.Context, el *leader.Elector, interval time.Duration, fn func(ctx context.Context)) {
	if el == nil {
		fn(ctx)
		every.Tick(ctx, interval, fn)
		return
	}
	var last time.Time
	pass := func(ctx context.Context) {
		if !el.Leader() {
			last = time.Time{}
			return
		}
		if last.IsZero() || time.Since(last) >= interval {
			last = time.Now()
			fn(ctx)
		}
	}
	pass(ctx)
	every.Tick(ctx, min(interval, 30*time.Second), pass)
}

// startAuditVerification runs the server's own verification of the audit trail on the leader
// (once per database): an incremental verify every VIGIL_AUDIT_VERIFY_INTERVAL (default
// 5m; "0" turns it off), the first resumed from the signed state of the last complete clean
// run (a full one when there is none); GET /api/v1/audit/verify serves the latest result
// (audit/chain/verifyruns.go). A run holds the database's verification lock, so a full run an
// auditor started on any replica makes the pass wait for the next interval.
func startAuditVerification(ctx context.Context, sys *system, svc *chain.Service) error {
	interval := 5 * time.Minute
	if v := getenv(ctx, "VIGIL_AUDIT_VERIFY_INTERVAL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return fmt.Errorf("VIGIL_AUDIT_VERIFY_INTERVAL=%q: want a duration such as 5m (0 turns it off)", v)
		}
		interval = d
	}
	if interval == 0 {
		return nil
	}
	lctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		onLeader(lctx, sys.leader, interval, func(ctx context.Context) {
			run, err := svc.VerifyInBackground(ctx)
			switch {
			case errors.Is(err, chain.ErrVerifyRunning) || ctx.Err() != nil:
			case err != nil:
				slog.ErrorContext(ctx, "audit: background verification", slog.String("error", err.Error()))
			case run.OK != nil && !*run.OK:
				slog.ErrorContext(ctx, "audit: background verification found problems (GET /api/v1/audit/verify)",
					slog.Int64("run", run.ID), slog.Int("findings", run.FindingCount))
			}
		})
	}()
	sys.closers = append(sys.closers, func(context.Context) error { stop(); <-done; return nil })
	return nil
}
