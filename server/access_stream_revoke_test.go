package server

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
)

// replicaB starts a second server (replica B) on f's database, serving (so following policy
// changes) with its own auth service, a stream recheck interval of an hour and a policy
// refresh interval of an hour: only a notification can end its streams in a test. It returns
// B's URL once B's listener is in effect.
func replicaB(t *testing.T, f *wardsFixture) string {
	t.Helper()
	svcB := authtest.New(t, f.pool, f.s.cfg.Recorder, newCoreTestSealer(t), nil, nil)
	s, err := New(Config{Pool: f.pool, Recorder: f.s.cfg.Recorder, Core: f.core, Auth: svcB, RejectedPerSource: Limit{Rate: -1},
		PolicyRefreshInterval: time.Hour, StreamRecheckInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln, time.Second) }()
	t.Cleanup(func() { cancel(); <-served })
	// Once B has a change made after it started serving, its listener is in effect.
	_, other := SignedInUser(t, f.auth, authtest.Grant{Role: auth.RoleClinician, Domain: auth.WardDomain(f.wardB.ID)})
	if err := f.auth.GrantRole(context.Background(), authtest.Admin, auth.UserSubject(other.ID), auth.RoleQuality, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for svcB.Enforcer().Version() != f.auth.Enforcer().Version() {
		if time.Now().After(deadline) {
			t.Fatal("replica B did not load the warm-up grant within 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return "http://" + ln.Addr().String()
}

// endedWithin waits for a stream to end; it fails after 10 s (the recheck interval is an
// hour: only the notification can end it) and returns how long it took.
func endedWithin(t *testing.T, ended <-chan struct{}, what string) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: the stream on replica B still delivers 10 s later (recheck interval 1 h)", what)
	}
	return time.Since(start)
}

// A stream open on replica B ends as soon as its session is signed out through replica A,
// not a recheck interval later; the end is audited. Signing out another person leaves it open.
// Verifies: REQ-ACC-055
// Verifies: REQ-ACC-056
func TestStreamEndsOnOtherReplicaWhenSignedOut(t *testing.T) {
	t.Parallel()
	f := newWardsFixture(t, 1, nil)
	b := replicaB(t, f)
	ended, closeStream := openStreamAt(t, b, f.clinA)
	defer closeStream()
	// Someone else signs out: the stream stays (the signal is the other subject's).
	otherCl, _ := SignedInUser(t, f.auth, authtest.Grant{Role: auth.RoleClinician, Domain: auth.WardDomain(f.wardA.ID)})
	signOut(t, f.ts.URL, otherCl)
	select {
	case <-ended:
		t.Fatal("the stream ended when another person signed out")
	case <-time.After(300 * time.Millisecond):
	}
	signOut(t, f.ts.URL, f.clinA)
	t.Logf("signed out through A, stream on B ended after %s", endedWithin(t, ended, "signed out"))
	waitAudited(t, f, "session_ended")
}

// A stream open on replica B ends as soon as the user is disabled through replica A.
// Verifies: REQ-ACC-055
func TestStreamEndsOnOtherReplicaWhenUserDisabled(t *testing.T) {
	t.Parallel()
	f := newWardsFixture(t, 1, nil)
	b := replicaB(t, f)
	ended, closeStream := openStreamAt(t, b, f.clinA)
	defer closeStream()
	if err := f.auth.DisableUser(context.Background(), authtest.Admin, f.clinAUser.ID); err != nil {
		t.Fatal(err)
	}
	t.Logf("disabled through A, stream on B ended after %s", endedWithin(t, ended, "user disabled"))
}

// A stream open on replica B ends as soon as the role that let it see its patients is revoked
// through replica A (the session is still valid): the principal may no longer read them. A
// role revoked that the stream did not depend on leaves it open (B checks again and keeps it).
// Verifies: REQ-ACC-057
// Verifies: REQ-ACC-056
func TestStreamEndsOnOtherReplicaWhenRoleRevoked(t *testing.T) {
	t.Parallel()
	f := newWardsFixture(t, 1, nil)
	sub := auth.UserSubject(f.clinAUser.ID)
	if err := f.auth.GrantRole(context.Background(), authtest.Admin, sub, auth.RoleQuality, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	b := replicaB(t, f)
	ended, closeStream := openStreamAt(t, b, f.clinA)
	defer closeStream()
	if err := f.auth.RevokeRole(context.Background(), authtest.Admin, sub, auth.RoleQuality, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ended:
		t.Fatal("the stream ended when a role it does not depend on was revoked")
	case <-time.After(300 * time.Millisecond):
	}
	if err := f.auth.RevokeRole(context.Background(), authtest.Admin, sub, auth.RoleClinician,
		auth.WardDomain(f.wardA.ID)); err != nil {
		t.Fatal(err)
	}
	t.Logf("role revoked through A, stream on B ended after %s", endedWithin(t, ended, "role revoked"))
	waitAudited(t, f, "access_revoked")
}

func signOut(t *testing.T, base string, cl *http.Client) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/api/v1/auth/sign-out", nil)
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("POST /auth/sign-out = %d, want 204", resp.StatusCode)
	}
}

// waitAudited waits for the access.stream.ended event of f's clinician with reason.
func waitAudited(t *testing.T, f *wardsFixture, reason string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for f.count(t, `SELECT count(*) FROM audit_events WHERE action = 'access.stream.ended' AND actor_id = $1
		AND payload->>'reason' = $2`, f.clinAUser.ID.String(), reason) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no access.stream.ended (%s) audited", reason)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
