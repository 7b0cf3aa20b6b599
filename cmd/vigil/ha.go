package main

import (
	"context"
	"log/slog"
	"time"

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
