package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/server"
)

// Live streams are bounded: per caller (the signed-in person, whatever their address) and in
// all, a stream past a cap is refused with 503 too_many_streams and Retry-After, and a closed
// stream frees its place.
// Verifies: REQ-FND-015
// Verifies: REQ-ACC-044
func TestStreamsCapped(t *testing.T) {
	h := newLimitedHTTP(t, server.Config{TrustProxyHeaders: true, MaxStreams: 3, MaxStreamsPerCaller: 2})
	hub := h.Core.Hub()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type stream struct {
		status int
		code   string
		retry  string
		close  func()
	}
	alice, bob := h.cl, server.SignedInClient(t, h.cfg.Auth)
	open := func(cl *http.Client, source, lastEventID string) stream {
		t.Helper()
		sctx, scancel := context.WithCancel(ctx)
		req, _ := http.NewRequestWithContext(sctx, "GET", h.ts.URL+"/api/v1/stream", nil)
		req.Header.Set("X-Forwarded-For", source)
		if lastEventID != "" {
			req.Header.Set("Last-Event-ID", lastEventID)
		}
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		st := stream{status: resp.StatusCode, retry: resp.Header.Get("Retry-After")}
		if resp.StatusCode != http.StatusOK {
			var ae apiErr
			_ = json.NewDecoder(resp.Body).Decode(&ae)
			resp.Body.Close()
			scancel()
			st.code = ae.Error.Code
			return st
		}
		line, err := bufio.NewReader(resp.Body).ReadString('\n') // the stream is open
		if err != nil || !strings.HasPrefix(line, "retry:") {
			t.Fatalf("stream's first line = %q, %v", line, err)
		}
		st.close = func() { scancel(); resp.Body.Close() }
		return st
	}
	waitSubscribers := func(n int) {
		t.Helper()
		for i := 0; hub.Subscribers() != n; i++ {
			if i > 1000 {
				t.Fatalf("Subscribers() = %d, want %d", hub.Subscribers(), n)
			}
			time.Sleep(10 * time.Millisecond) // waiting for the server's goroutines, not for logic
		}
	}
	a1, a2 := open(alice, "203.0.113.1", ""), open(alice, "203.0.113.1", "1")
	if a1.status != 200 || a2.status != 200 {
		t.Fatalf("two streams of one caller = %d, %d; want 200, 200", a1.status, a2.status)
	}
	// The same person from another address is the same caller.
	if a3 := open(alice, "198.51.100.7", ""); a3.status != 503 || a3.code != server.CodeTooManyStreams || a3.retry != "5" {
		t.Errorf("third stream of one caller = %d %s (Retry-After %q), want 503 too_many_streams with Retry-After 5", a3.status, a3.code, a3.retry)
	}
	// Another person behind the same address is another caller.
	b1 := open(bob, "203.0.113.1", "")
	if b1.status != 200 {
		t.Fatalf("stream of another caller = %d, want 200", b1.status)
	}
	if c1 := open(bob, "203.0.113.3", ""); c1.status != 503 || c1.code != server.CodeTooManyStreams {
		t.Errorf("stream past the global cap = %d %s, want 503 too_many_streams", c1.status, c1.code)
	}
	waitSubscribers(3)
	a1.close()
	waitSubscribers(2)
	a4 := open(alice, "203.0.113.9", "")
	if a4.status != 200 {
		t.Errorf("stream after one of the caller's closed = %d %s, want 200", a4.status, a4.code)
	} else {
		a4.close()
	}
	a2.close()
	b1.close()
}
