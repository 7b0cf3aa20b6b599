package auth_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/auth"
)

// follower starts replica B: a second auth service on the same database that follows the
// policy changes other processes announce (Enforcer.Follow), with a periodic refresh of one
// hour, so that a change reaches it within the test's few seconds only by a notification
// (or the catch-up of its listener's (re)connection). It returns once B is listening.
func follower(t *testing.T, e *env, warmUp func()) *auth.Service {
	t.Helper()
	b := e.another(t)
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() { defer close(done); b.Enforcer().Follow(ctx, time.Hour, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() { cancel(); <-done })
	// A change made now reaches B either by the refresh its listener makes once LISTEN is in
	// effect, or by a notification: either way B listens from then on.
	warmUp()
	v := e.svc.Enforcer().Version()
	waitFor(t, "B loads the warm-up change", func() bool { return b.Enforcer().Version() == v })
	return b
}

// waitFor polls cond until it holds, failing after 5 s (the follower's refresh interval is an
// hour), and returns how long it took.
func waitFor(t *testing.T, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("%s: not within 5 s (the periodic refresh is 1 h: no notification arrived)", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// A clinician's role revoked on replica A is refused on replica B as soon as the revocation
// commits: the change is announced (NOTIFY) in its own transaction and B applies it
// incrementally, without a reload. So are a grant, a policy line removed and a break-glass
// grant opened on A.
// Verifies: REQ-ACC-048
func TestPolicyChangeReachesOtherReplicaAtOnce(t *testing.T) {
	e := newEnv(t, nil)
	w := newWorld(t, e)
	wdA := auth.WardDomain(w.wardA)
	b := follower(t, e, func() {
		if err := e.svc.GrantRole(e.ctx, admin, w.tech.Subject, auth.RoleQuality, auth.AllDomains); err != nil {
			t.Fatal(err)
		}
	})
	a, enfB := e.svc.Enforcer(), b.Enforcer()
	tgtA := w.target(t, e, auth.ObjObservation, w.patA)
	if _, err := enfB.Allow(w.clinA, "read", tgtA); err != nil {
		t.Fatalf("B: Allow(clinician A, ward-A patient) before the revocation = %v", err)
	}
	reloads := enfB.Stats().Reloads

	// Revoked on A: refused on A at once, and on B as soon as the notification arrives.
	if err := e.svc.RevokeRole(e.ctx, admin, w.clinA.Subject, auth.RoleClinician, wdA); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Allow(w.clinA, "read", tgtA); !errorsIs(err, auth.ErrForbidden) {
		t.Fatalf("A: Allow(revoked clinician) = %v, want ErrForbidden", err)
	}
	took := waitFor(t, "B refuses the revoked clinician", func() bool {
		_, err := enfB.Allow(w.clinA, "read", tgtA)
		return errorsIs(err, auth.ErrForbidden)
	})
	t.Logf("revocation on A refused on B after %s", took)
	if f, _ := enfB.Visibility(w.clinA); len(f.Wards) != 0 {
		t.Errorf("B: Visibility(revoked clinician) = %+v, want no ward", f)
	}

	// Granted on A: allowed on B.
	if err := e.svc.GrantRole(e.ctx, admin, w.nurseB.Subject, auth.RoleClinician, wdA); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B allows the new grant", func() bool { _, err := enfB.Allow(w.nurseB, "read", tgtA); return err == nil })

	// A policy line removed on A: refused on B.
	silence := auth.Rule{Role: auth.RoleChargeNurse, Object: auth.ObjAlarm, Action: "silence", Scope: auth.ScopeWard}
	tgtAlarm := w.target(t, e, auth.ObjAlarm, w.patA)
	if _, err := enfB.Allow(w.charge, "silence", tgtAlarm); err != nil {
		t.Fatalf("B: Allow(charge nurse, silence) = %v", err)
	}
	if err := e.svc.RemoveRule(e.ctx, admin, silence); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B refuses after the rule's removal", func() bool {
		_, err := enfB.Allow(w.charge, "silence", tgtAlarm)
		return errorsIs(err, auth.ErrForbidden)
	})

	// Break-glass opened on A (by a clinician of ward B, for a ward-A patient): allowed on B.
	tgtA.Object = auth.ObjPatient
	if _, err := e.svc.BreakGlass(e.ctx, w.adminClin, w.adminClin.Origin("r", ""), w.patA, "rapid response call on ward A", 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B allows the break-glass grant", func() bool {
		d, err := enfB.Allow(w.adminClin, "read", tgtA)
		return err == nil && d.Basis == auth.ScopeBreakGlass
	})

	if got := enfB.Stats(); got.Reloads != reloads || got.Version != a.Version() {
		t.Errorf("B: %+v after the changes, want version %d and no reload (%d): each applied from its notification", got, a.Version(), reloads)
	}
	// B, following, decides as a process that loads the policy now.
	fresh := e.another(t).Enforcer()
	ps := []*auth.Principal{w.clinA, w.nurseB, w.charge, w.tech, w.quality, w.adminP, w.adminClin}
	for _, obj := range []string{auth.ObjObservation, auth.ObjPatient, auth.ObjAlarm, auth.ObjUser, auth.ObjAudit} {
		for _, act := range []string{"read", "silence", "manage", "acknowledge"} {
			for _, tg := range []auth.Target{w.target(t, e, obj, w.patA), w.target(t, e, obj, w.patB), w.target(t, e, obj, w.patBTeam), {Object: obj}} {
				for _, p := range ps {
					db, errB := enfB.Allow(p, act, tg)
					df, errF := fresh.Allow(p, act, tg)
					if db.Allowed != df.Allowed || db.Basis != df.Basis || errorsIs(errB, auth.ErrForbidden) != errorsIs(errF, auth.ErrForbidden) {
						t.Errorf("%s %s %s: B (incremental) = %+v %v; a fresh load = %+v %v", p.Subject, act, obj, db, errB, df, errF)
					}
				}
			}
		}
	}
}

// A change committed while replica B's listener is disconnected reaches B when the listener
// reconnects (it reloads if the version moved meanwhile), not at the next periodic refresh.
// Verifies: REQ-ACC-048
func TestPolicyChangeReachesReplicaAfterListenerReconnects(t *testing.T) {
	e := newEnv(t, nil)
	w := newWorld(t, e)
	b := follower(t, e, func() {
		if err := e.svc.GrantRole(e.ctx, admin, w.tech.Subject, auth.RoleQuality, auth.AllDomains); err != nil {
			t.Fatal(err)
		}
	})
	// Cut B's listening connection, and revoke while it is down.
	var n int
	if err := e.pool.QueryRow(e.ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query ILIKE 'listen %'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("terminate the listener: %d, %v; want 1", n, err)
	}
	if err := e.svc.RevokeRole(e.ctx, admin, w.clinA.Subject, auth.RoleClinician, auth.WardDomain(w.wardA)); err != nil {
		t.Fatal(err)
	}
	tgtA := w.target(t, e, auth.ObjObservation, w.patA)
	waitFor(t, "B refuses the revoked clinician after reconnecting", func() bool {
		_, err := b.Enforcer().Allow(w.clinA, "read", tgtA)
		return errorsIs(err, auth.ErrForbidden)
	})
}

// Ending sessions and disabling users need no notification: every request's session (and API
// token) is checked against the database, so a user disabled, signed out everywhere or whose
// second factor was reset on replica A is refused on replica B at their next request.
// Verifies: REQ-ACC-049
func TestSessionEndReachesOtherReplicaAtOnce(t *testing.T) {
	e := newEnv(t, nil)
	b := e.another(t) // no Follow: sessions need none
	for _, c := range []struct {
		name string
		end  func(u auth.User) error
	}{
		{"disabled", func(u auth.User) error { return e.svc.DisableUser(e.ctx, admin, u.ID) }},
		{"signed_out_everywhere", func(u auth.User) error { _, err := e.svc.SignOutEverywhere(e.ctx, admin, u.ID); return err }},
		{"mfa_reset", func(u auth.User) error {
			_, err := e.svc.ResetMFAWithReason(e.ctx, admin, u.ID, "phone lost")
			return err
		}},
	} {
		email := c.name + "@example.org"
		u, secret, _ := e.user(t, email, [2]string{auth.RoleClinician, "*"})
		sess, _ := e.login(t, email, secret)
		if _, err := b.Authenticate(e.ctx, auth.Credentials{SessionToken: sess.Token}); err != nil {
			t.Fatalf("%s: B: Authenticate before = %v", c.name, err)
		}
		if err := c.end(u); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Authenticate(e.ctx, auth.Credentials{SessionToken: sess.Token}); auth.CodeOf(err) == "" {
			t.Errorf("%s on A: B: Authenticate = %v, want refused", c.name, err)
		}
	}
	// An API token revoked on A is refused on B, and its grants are gone from B's policy.
	sa, err := e.svc.CreateServiceAccount(e.ctx, admin, "ehr-bridge")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.svc.GrantRole(e.ctx, admin, auth.ServiceSubject(sa.ID), auth.RoleDeviceTechnician, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	tok, err := e.svc.IssueAPIToken(e.ctx, admin, sa.ID, "bridge", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Authenticate(e.ctx, auth.Credentials{BearerToken: tok.Token}); err != nil {
		t.Fatalf("B: Authenticate(token) = %v", err)
	}
	if err := e.svc.RevokeAPIToken(e.ctx, admin, tok.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Authenticate(e.ctx, auth.Credentials{BearerToken: tok.Token}); auth.CodeOf(err) == "" {
		t.Errorf("token revoked on A: B: Authenticate = %v, want refused", err)
	}
}

// Decisions made while grants change are never a mix of two versions: a clinician whose
// grant is revoked and granted again, over and over, while decisions are asked for them and
// for a colleague of the same ward (who shares their role profile, and so the remembered
// answers), leaves the colleague allowed throughout and themselves decided by their final
// grants. The changes are applied without reloading the policy.
// Verifies: REQ-ACC-047, REQ-ACC-041
func TestDecisionsDuringGrantChanges(t *testing.T) {
	e := newEnv(t, nil)
	w := newWorld(t, e)
	enf := e.svc.Enforcer()
	wdA := auth.WardDomain(w.wardA)
	_, secret, _ := e.user(t, "colleague.a@example.org", [2]string{auth.RoleClinician, string(wdA)})
	_, pc := e.login(t, "colleague.a@example.org", secret)
	tgt := w.target(t, e, auth.ObjObservation, w.patA)
	before := enf.Stats()
	stop := make(chan struct{})
	errs := make(chan error, 4)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := enf.Allow(pc, "read", tgt); err != nil {
				errs <- err
				return
			}
			if _, err := enf.Allow(w.clinA, "read", tgt); err != nil && !errorsIs(err, auth.ErrForbidden) {
				errs <- err
				return
			}
		}
	}()
	for range 15 {
		if err := e.svc.RevokeRole(e.ctx, admin, w.clinA.Subject, auth.RoleClinician, wdA); err != nil {
			t.Fatal(err)
		}
		if err := e.svc.GrantRole(e.ctx, admin, w.clinA.Subject, auth.RoleClinician, wdA); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.svc.RevokeRole(e.ctx, admin, w.clinA.Subject, auth.RoleClinician, wdA); err != nil {
		t.Fatal(err)
	}
	close(stop)
	<-done
	select {
	case err := <-errs:
		t.Fatalf("the colleague, whose grants never changed: Allow = %v", err)
	default:
	}
	if _, err := enf.Allow(w.clinA, "read", tgt); !errorsIs(err, auth.ErrForbidden) {
		t.Fatalf("Allow(revoked clinician) = %v, want ErrForbidden", err)
	}
	if st := enf.Stats(); st.Reloads != before.Reloads || st.Applied != before.Applied+31 {
		t.Errorf("enforcer %+v after 31 changes from %+v: want each applied incrementally, no reload", st, before)
	}
}
