package server

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// Two servers on one database (two replicas behind a load balancer), each serving with its
// own auth service and a policy refresh interval of an hour: a role revoked through replica A
// is refused by replica B as soon as the revocation commits (B applies the change announced
// with PostgreSQL NOTIFY), not an interval later.
// Verifies: REQ-ACC-048
func TestRoleRevokedOnOneReplicaRefusedOnTheOther(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	rec := audittest.Recorder(t, pool, nil)
	sealer := keystest.LocalRing(t, nil).PHI()
	svcA := authtest.New(t, pool, rec, sealer, nil, nil)
	svcB := authtest.New(t, pool, rec, sealer, nil, nil)
	serve := func(svc *auth.Service) string {
		s, err := New(Config{Pool: pool, Recorder: rec, Auth: svc, PolicyRefreshInterval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		s.permit("GET", "/test/devices", allow(auth.ObjDevice, "read"))
		s.echo.GET("/test/devices", func(c echo.Context) error { return c.NoContent(http.StatusNoContent) })
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		served := make(chan error, 1)
		go func() { served <- s.Serve(ctx, ln, time.Second) }()
		t.Cleanup(func() { cancel(); <-served })
		return "http://" + ln.Addr().String()
	}
	_, b := serve(svcA), serve(svcB)
	cl, u := SignedInUser(t, svcA, authtest.Grant{Role: auth.RoleDeviceTechnician, Domain: auth.AllDomains})
	sub := auth.UserSubject(u.ID)
	get := func() int {
		resp, err := cl.Get(b + "/test/devices")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 5 s (the refresh interval is 1 h: no notification)", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// Once B has a change made after it started serving, its listener is in effect.
	if err := svcA.GrantRole(context.Background(), authtest.Admin, sub, auth.RoleQuality, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	waitFor("B loads the warm-up grant", func() bool { return svcB.Enforcer().Version() == svcA.Enforcer().Version() })
	if st := get(); st != http.StatusNoContent {
		t.Fatalf("B: GET with the technician role = %d, want 204", st)
	}
	if err := svcA.RevokeRole(context.Background(), authtest.Admin, sub, auth.RoleDeviceTechnician, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor("B refuses the revoked technician", func() bool { return get() == http.StatusForbidden })
	t.Logf("revoked through A, refused by B after %s", time.Since(start))
}
