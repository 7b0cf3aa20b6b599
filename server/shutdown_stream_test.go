package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/server"
)

// Draining ends the live streams (their clients resume on another replica with
// Last-Event-ID) and refuses new ones with 503 draining; the probes still answer.
// Verifies: REQ-HA-023
func TestDrainEndsLiveStreams(t *testing.T) {
	h := newLimitedHTTP(t, server.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", h.ts.URL+"/api/v1/stream", nil)
	resp, err := h.cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body := bufio.NewReader(resp.Body)
	if line, err := body.ReadString('\n'); err != nil || !strings.HasPrefix(line, "retry:") {
		t.Fatalf("stream's first line = %q, %v", line, err)
	}
	ended := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, body); ended <- err }()

	h.srv.Drain()
	select {
	case err := <-ended:
		if err != nil {
			t.Errorf("stream ended with %v, want a clean end", err)
		}
	case <-ctx.Done():
		t.Fatal("the live stream did not end when draining began")
	}
	status, code, retry, _ := h.do(t, "GET", "/api/v1/stream", "", "", nil)
	if status != http.StatusServiceUnavailable || code != server.CodeDraining || retry != "1" {
		t.Errorf("new stream while draining = %d %s (Retry-After %q), want 503 draining, Retry-After 1", status, code, retry)
	}
	if status, _, _, _ := h.do(t, "GET", "/healthz", "", "", nil); status != http.StatusOK {
		t.Errorf("healthz while draining = %d, want 200", status)
	}
	r, err := h.cl.Get(h.ts.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	var ready struct{ Status string }
	_ = json.NewDecoder(r.Body).Decode(&ready)
	r.Body.Close()
	if r.StatusCode != http.StatusServiceUnavailable || ready.Status != "draining" {
		t.Errorf("readyz while draining = %d %q, want 503 draining", r.StatusCode, ready.Status)
	}
}
