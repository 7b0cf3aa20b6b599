package server_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/devicestest"
	"github.com/vigilhealth/vigil/server"
)

// syncBuffer is a log sink safe for the server's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// A device that gives up on an upload mid-request (lost network, client timeout) is not a
// server failure: the request is recorded as abandoned (499 client_closed_request), logged
// at info, never as a 5xx or an error; the upload itself still commits, and the device's
// retry gets the original receipt.
// Verifies: REQ-FND-012
func TestUploadAbandonedByClient(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, func(c *devices.Config) { c.BatchMaxWait = 2 * time.Second })
	var logs syncBuffer
	srv, err := server.New(server.Config{Pool: e.Pool, Recorder: e.Rec, Devices: e.Devices, Now: e.Clock.Now,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	d := e.NewDevice(t)
	raw := d.Upload(t, e.Clock.Now(), 10)

	// The upload waits up to 2 s for its group commit; the client gives up after 200 ms.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/api/v1/uploads", bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/cbor")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("POST /uploads answered %d before the client gave up; the test needs a slower commit", resp.StatusCode)
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'http.request.abandoned'`) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no http.request.abandoned event; logs:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := e.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'http.request.abandoned' AND outcome = 'failure'
		AND reason = 'client_closed_request' AND (payload->>'status')::int = 499 AND object_id = 'POST /api/v1/uploads'`); n != 1 {
		t.Errorf("http.request.abandoned events with reason, status and route: %d, want 1", n)
	}
	if n := e.Count(t, `SELECT count(*) FROM audit_events WHERE action IN ('http.request.failed', 'http.request.rejected')`); n != 0 {
		t.Errorf("%d failed/rejected request events for an abandoned request, want 0", n)
	}
	if out := logs.String(); strings.Contains(out, "level=ERROR") || !strings.Contains(out, `level=INFO msg="request abandoned by the client"`) {
		t.Errorf("logs should say the request was abandoned, at info, and hold no error:\n%s", out)
	}
	// Nothing lost: the upload commits, and the device's retry gets its original receipt.
	for e.Count(t, `SELECT count(*) FROM devices_uploads`) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the abandoned upload never committed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := http.Post(ts.URL+"/api/v1/uploads", "application/cbor", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("retry of the abandoned upload = %d, want 200 with the original receipt", resp.StatusCode)
	}
}
