package server

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit/audittest"

	"github.com/vigilhealth/vigil/internal/testdb"
)

// The refusals counted since the last flush are recorded when the server stops, not lost.
// Verifies: REQ-FND-014
func TestThrottledRecordedWhenServeStops(t *testing.T) {
	pool := testdb.New(t)
	now := time.Date(2026, 5, 6, 7, 0, 0, 0, time.UTC)
	s, err := New(Config{Pool: pool, Recorder: audittest.Recorder(t, pool, nil), Now: func() time.Time { return now }, RejectedPerSource: Limit{Rate: 1, Burst: 1},
		ThrottleFlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln, 5*time.Second) }()
	for i, want := range []int{http.StatusNotFound, http.StatusTooManyRequests, http.StatusTooManyRequests} {
		resp, err := http.Get("http://" + ln.Addr().String() + "/api/v1/nothing")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("request %d = %d, want %d", i, resp.StatusCode, want)
		}
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve() = %v", err)
	}
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT (payload->>'requests')::int FROM audit_events
		WHERE action = 'http.request.throttled' AND object_id = '127.0.0.1'`).Scan(&n); err != nil || n != 2 {
		t.Errorf("throttled requests recorded at stop = %d (%v), want 2", n, err)
	}
}
