package auth_test

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/internal/pglisten"
)

// Replica B follows the policy on the process's shared listener (Config.Listener), which
// another service of the process also uses. A burst of changes on A is applied on B in the
// order committed, each incrementally from its notification (a change dropped or applied out
// of order would make B reload), and after B's listening connection is lost, a change made
// while it reconnects reaches B (LISTEN taking effect again refreshes), as does the next one.
// Verifies: REQ-HA-050, REQ-HA-051
func TestPolicyFollowsOnSharedListener(t *testing.T) {
	e := newEnv(t, nil)
	w := newWorld(t, e)
	quiet := slog.New(slog.DiscardHandler)
	l := pglisten.New(e.pool, quiet)
	var otherListening atomic.Int64
	l.Handle("vigil_test_other", pglisten.Handler{Listening: func() { otherListening.Add(1) }})
	cfg := e.cfg
	cfg.Listener = l
	b, err := auth.New(e.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	listened, followed := make(chan struct{}), make(chan struct{})
	go func() { defer close(listened); _ = l.Run(ctx) }()
	go func() { defer close(followed); b.Enforcer().Follow(ctx, time.Hour, quiet) }()
	t.Cleanup(func() { cancel(); <-listened; <-followed })
	enfA, enfB := e.svc.Enforcer(), b.Enforcer()
	if err := e.svc.GrantRole(e.ctx, admin, w.tech.Subject, auth.RoleQuality, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B loads the warm-up change", func() bool { return enfB.Version() == enfA.Version() })

	before := enfB.Stats()
	wdA := auth.WardDomain(w.wardA)
	const changes = 20
	for i := range changes {
		var err error
		if i%2 == 0 {
			err = e.svc.RevokeRole(e.ctx, admin, w.clinA.Subject, auth.RoleClinician, wdA)
		} else {
			err = e.svc.GrantRole(e.ctx, admin, w.clinA.Subject, auth.RoleClinician, wdA)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "B applies the burst", func() bool { return enfB.Version() == enfA.Version() })
	if got := enfB.Stats(); got.Reloads != before.Reloads || got.Applied != before.Applied+changes {
		t.Errorf("B after %d changes: %+v, before %+v: want each applied in order from its notification, no reload", changes, got, before)
	}
	tgtA := w.target(t, e, auth.ObjObservation, w.patA)
	if _, err := enfB.Allow(w.clinA, "read", tgtA); err != nil {
		t.Errorf("B: Allow(clinician A, granted last) = %v", err)
	}

	// The shared connection lost; a revocation committed meanwhile.
	var n int
	if err := e.pool.QueryRow(e.ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query ILIKE 'listen %'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("terminate the listener: %d, %v; want 1", n, err)
	}
	if err := e.svc.RevokeRole(e.ctx, admin, w.clinA.Subject, auth.RoleClinician, wdA); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B refuses the clinician revoked while its listener reconnected", func() bool {
		_, err := enfB.Allow(w.clinA, "read", tgtA)
		return errorsIs(err, auth.ErrForbidden)
	})
	waitFor(t, "the other service on the listener is told it listens again", func() bool { return otherListening.Load() >= 2 })
	if err := e.svc.GrantRole(e.ctx, admin, w.clinA.Subject, auth.RoleClinician, wdA); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B allows the grant made after the reconnection", func() bool { _, err := enfB.Allow(w.clinA, "read", tgtA); return err == nil })
	if c := l.Connections(); c != 2 {
		t.Errorf("listener connections = %d, want 2 (the first, and one after it was cut)", c)
	}
}
