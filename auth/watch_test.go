package auth_test

import (
	"testing"
	"time"

	"github.com/vigilhealth/vigil/auth"
)

// received reports whether c receives within d.
func received(c <-chan struct{}, d time.Duration) bool {
	select {
	case <-c:
		return true
	case <-time.After(d):
		return false
	}
}

// A following replica B tells the watchers of a principal's access, some milliseconds after
// replica A commits, that the principal's sessions ended (signed out everywhere, disabled) or
// a grant of theirs was revoked; a change of another principal, or a grant added, tells them
// nothing.
// Verifies: REQ-ACC-055
// Verifies: REQ-ACC-057
func TestFollowSignalsAccessWatchersOfOtherReplica(t *testing.T) {
	e := newEnv(t, nil)
	w := newWorld(t, e)
	b := follower(t, e, func() {
		if err := e.svc.GrantRole(e.ctx, admin, w.tech.Subject, auth.RoleQuality, auth.AllDomains); err != nil {
			t.Fatal(err)
		}
	})
	changed, stop := b.Enforcer().WatchAccess(w.clinA.Subject)
	defer stop()

	// Another principal's grant revoked, a grant added: no signal.
	if err := e.svc.RevokeRole(e.ctx, admin, w.tech.Subject, auth.RoleQuality, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.GrantRole(e.ctx, admin, w.clinA.Subject, auth.RoleQuality, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	v := e.svc.Enforcer().Version()
	waitFor(t, "B loads the changes", func() bool { return b.Enforcer().Version() == v })
	if received(changed, 200*time.Millisecond) {
		t.Fatal("the watcher of clinician A was signalled by another's revocation or a grant")
	}

	// Their grant revoked on A: signalled on B.
	start := time.Now()
	if err := e.svc.RevokeRole(e.ctx, admin, w.clinA.Subject, auth.RoleQuality, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	if !received(changed, 5*time.Second) {
		t.Fatal("role revoked on A: B's watcher not signalled within 5 s (refresh 1 h)")
	}
	t.Logf("role revoked on A, B's watcher signalled after %s", time.Since(start))

	// Their sessions ended on A: signalled on B.
	start = time.Now()
	if _, err := e.svc.SignOutEverywhere(e.ctx, admin, w.clinA.ID); err != nil {
		t.Fatal(err)
	}
	if !received(changed, 5*time.Second) {
		t.Fatal("signed out everywhere on A: B's watcher not signalled within 5 s")
	}
	t.Logf("sessions ended on A, B's watcher signalled after %s", time.Since(start))

	// After stop, nothing more.
	stop()
	if err := e.svc.DisableUser(e.ctx, admin, w.clinA.ID); err != nil {
		t.Fatal(err)
	}
	if received(changed, 200*time.Millisecond) {
		t.Error("a stopped watcher was signalled")
	}
}
