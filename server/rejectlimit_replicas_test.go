package server_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/vigilhealth/vigil/devices/devicestest"
	"github.com/vigilhealth/vigil/server"
)

// limitedReplica is one more server on the database of e (another replica).
func limitedReplica(t *testing.T, e *devicestest.Env, cfg server.Config) *limitedHTTP {
	t.Helper()
	cfg.Pool, cfg.Recorder, cfg.Devices, cfg.Core, cfg.Now = e.Pool, e.Rec, e.Devices, e.Core, e.Clock.Now
	var cl *http.Client
	cfg.Auth, cl = server.SignedIn(t, e.Pool, e.Rec)
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	return &limitedHTTP{Env: e, srv: srv, ts: ts, cl: cl}
}

// Two replicas on one database, each told there are two: a source whose junk the load balancer
// spreads over both gets the configured budget of rejected requests in all (20, audited), not
// twice it; past it both refuse the source with 429. With each replica unaware of the other
// (Replicas 1) the same flood would get twice the budget, which is why the share exists.
// Verifies: REQ-HA-024
func TestRejectLimitsHoldAcrossReplicas(t *testing.T) {
	for _, c := range []struct {
		replicas, want int
	}{{2, 20}, {1, 40}} {
		t.Run(fmt.Sprint("replicas=", c.replicas), func(t *testing.T) {
			cfg := server.Config{RejectedPerSource: server.Limit{Rate: 1, Burst: 20}, Replicas: c.replicas}
			a := newLimitedHTTP(t, cfg)
			b := limitedReplica(t, a.Env, cfg)
			junk := []byte{0xa1, 0x01}
			counts := map[string]int{}
			for i := range 100 {
				h := a
				if i%2 == 1 {
					h = b // round robin, as the load balancer does
				}
				status, code, _, _ := h.do(t, "POST", "/api/v1/devices/enroll", "", "application/cbor", junk)
				counts[fmt.Sprint(status, " ", code)]++
			}
			if counts["429 rate_limited"] != 100-c.want || len(counts) != 2 {
				t.Errorf("answers = %v, want %d rejections then 429 rate_limited", counts, c.want)
			}
			if n := a.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'http.request.rejected'`); n != c.want {
				t.Errorf("http.request.rejected events on the shared database = %d, want %d", n, c.want)
			}
		})
	}
}
