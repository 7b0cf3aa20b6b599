package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/obs"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/internal/pglisten"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/server"
)

// `vigil-bench uploads --replicas N`: N replicas of the serving stack on the one benchmark
// database, each wired as `vigil serve` wires itself with several replicas (its own audit
// recorder, core with the hub relay, rules engine with lease buckets and an inbox, alarms,
// devices, HTTP server on its own loopback port); the load generator spreads the workers over
// them as a round-robin load balancer would. They share this process (one Go runtime), so
// the CPU per upload compares what the replicas add — leases, observations of another
// replica's patients through rules_inbox, the hub relay — not two runtimes' overhead.

// benchReplica is one replica of the stack.
type benchReplica struct {
	base    string
	handoff *obs.Handoff
	ds      *devices.Service
	core    *core.Service
	eng     *rules.Engine
	closers []func(context.Context) error
}

// forwardLink breaks the core ↔ rules cycle, as cmd/vigil's clinicalLink does.
type forwardLink struct{ eng atomic.Pointer[rules.Engine] }

func (l *forwardLink) Forward(ctx context.Context, tx pgx.Tx, b []obs.Committed) error {
	if e := l.eng.Load(); e != nil {
		return e.Forward(ctx, tx, b)
	}
	return nil
}

func (l *forwardLink) Pace(ctx context.Context, b []obs.Committed) {
	if e := l.eng.Load(); e != nil {
		e.Pace(ctx, b)
	}
}

func startBenchReplica(ctx context.Context, pool *pgxpool.Pool, ring *keys.Ring, signer keys.Signer, quiet *slog.Logger, o benchOpts) (*benchReplica, error) {
	r := &benchReplica{}
	// One LISTEN connection per replica, shared by all its services, as `vigil serve` does.
	listen := pglisten.New(pool, quiet)
	rec, err := audit.NewOutbox(audit.Config{Pool: pool})
	if err != nil {
		return nil, err
	}
	r.closers = append(r.closers, func(context.Context) error { rec.Close(); return nil })
	r.handoff = obs.NewHandoff(obs.HandoffConfig{Logger: quiet})
	link := &forwardLink{}
	cs, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: ring.PHI(), Handoff: r.handoff, Forward: link, Logger: quiet})
	if err != nil {
		return nil, err
	}
	r.core = cs
	if err := cs.MaintainPartitions(ctx); err != nil {
		return nil, err
	}
	relay, err := core.StartHubRelay(ctx, cs.Hub(), core.HubRelayConfig{Pool: pool, Logger: quiet, Listener: listen})
	if err != nil {
		return nil, err
	}
	r.closers = append(r.closers, relay.Close)
	as, err := alarms.New(alarms.Config{Pool: pool, Recorder: rec, Notifier: cs.Hub(), Logger: quiet})
	if err != nil {
		return nil, err
	}
	leases, err := rules.NewLeases(rules.LeaseConfig{Pool: pool, Logger: quiet})
	if err != nil {
		return nil, err
	}
	eng, err := rules.New(ctx, rules.Config{Pool: pool, Recorder: rec, Alarms: as, History: cs, Handoff: r.handoff, Logger: quiet, Leases: leases, Listener: listen})
	if err != nil {
		return nil, err
	}
	link.eng.Store(eng)
	r.eng = eng
	if err := leases.Step(ctx); err != nil {
		return nil, err
	}
	lctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{}, 2)
	go func() { leases.Run(lctx); done <- struct{}{} }()
	go func() { eng.RunInbox(lctx, time.Second); done <- struct{}{} }()
	r.closers = append(r.closers, func(ctx context.Context) error {
		stop()
		<-done
		<-done
		return errors.Join(eng.Close(ctx), leases.Release(ctx))
	})
	ds, err := devices.New(devices.Config{Pool: pool, Recorder: rec, Ingester: cs, ReceiptSigner: signer, Logger: quiet,
		BatchMaxUploads: o.batch, BatchMaxWait: o.batchWait, Committers: o.committers, Listener: listen})
	if err != nil {
		return nil, err
	}
	r.ds = ds
	r.closers = append(r.closers, ds.Close)
	srv, err := server.New(server.Config{Pool: pool, Recorder: rec, Devices: ds, Logger: quiet})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	sctx, stopSrv := context.WithCancel(ctx)
	served := make(chan struct{})
	go func() { _ = srv.Serve(sctx, ln, 5*time.Second); close(served) }()
	r.closers = append(r.closers, func(context.Context) error { stopSrv(); <-served; return nil })
	r.base = "http://" + ln.Addr().String()
	listenCtx, stopListen := context.WithCancel(context.WithoutCancel(ctx))
	listened := make(chan struct{})
	go func() { _ = listen.Run(listenCtx); close(listened) }()
	r.closers = append(r.closers, func(context.Context) error { stopListen(); <-listened; return nil })
	return r, nil
}

// Close stops the replica, last started first.
func (r *benchReplica) Close(ctx context.Context) error {
	var errs []error
	for i := len(r.closers) - 1; i >= 0; i-- {
		errs = append(errs, r.closers[i](ctx))
	}
	return errors.Join(errs...)
}

// waitShared waits until the replicas hold the lease buckets evenly (each its fair share).
func waitShared(ctx context.Context, pool *pgxpool.Pool, n int) error {
	share := (rules.Buckets + n - 1) / n
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		var owners, most int
		if err := pool.QueryRow(ctx, `SELECT count(*), coalesce(max(c), 0) FROM (SELECT owner, count(*) AS c FROM rules_leases
			WHERE owner <> '' AND expires_at > now() GROUP BY owner) o`).Scan(&owners, &most); err != nil {
			return err
		}
		if owners == n && most <= share {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("the %d replicas did not share the lease buckets within 30 s", n)
}
