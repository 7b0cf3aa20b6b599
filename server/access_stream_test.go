package server

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/auth/authtest"
)

// openStream opens GET /stream with cl and returns a channel closed when the stream ends
// (its body reaches EOF), and the function that closes it.
func openStream(t *testing.T, f *wardsFixture, cl *http.Client) (ended <-chan struct{}, closeFn func()) {
	t.Helper()
	return openStreamAt(t, f.ts.URL, cl)
}

// openStreamAt is openStream on the server at base.
func openStreamAt(t *testing.T, base string, cl *http.Client) (ended <-chan struct{}, closeFn func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/stream", nil)
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /stream = %d", resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "retry:") {
		t.Fatalf("stream's first line = %q, %v", line, err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _, _ = io.Copy(io.Discard, br) }()
	return done, func() { cancel(); resp.Body.Close(); <-done }
}

// The live stream is not cut by the request timeout (the other routes are), and it does not
// count as the person's activity: opening it leaves the session's last use where it was.
// Verifies: REQ-ACC-043
func TestStreamOutlivesRequestTimeout(t *testing.T) {
	t.Parallel()
	const timeout = 200 * time.Millisecond
	f := newWardsFixture(t, 1, func(c *Config) { c.RequestTimeout = timeout })
	ctx := context.Background()
	sess := f.clinA.Transport.(*authtest.Transport).Session
	// The person's last own request was a minute ago.
	if _, err := f.pool.Exec(ctx, `UPDATE auth_sessions SET last_seen_at = last_seen_at - interval '1 minute' WHERE id = $1`, sess.ID); err != nil {
		t.Fatal(err)
	}
	var before time.Time
	if err := f.pool.QueryRow(ctx, `SELECT last_seen_at FROM auth_sessions WHERE id = $1`, sess.ID).Scan(&before); err != nil {
		t.Fatal(err)
	}
	ended, closeStream := openStream(t, f, f.clinA)
	defer closeStream()
	select {
	case <-ended:
		t.Fatalf("the stream ended within %s (10 × the request timeout)", 10*timeout)
	case <-time.After(10 * timeout):
	}
	var after time.Time
	if err := f.pool.QueryRow(ctx, `SELECT last_seen_at FROM auth_sessions WHERE id = $1`, sess.ID).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if !after.Equal(before) {
		t.Errorf("opening the stream moved the session's last use from %s to %s: a stream is not activity", before, after)
	}
	// A foreground request is activity.
	resp, err := f.clinA.Get(f.ts.URL + "/api/v1/auth/me")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if err := f.pool.QueryRow(ctx, `SELECT last_seen_at FROM auth_sessions WHERE id = $1`, sess.ID).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if !after.After(before) {
		t.Errorf("GET /auth/me left the session's last use at %s, want it moved", after)
	}
}

// A stream ends when its session ends (here: signed out from another request).
// Verifies: REQ-ACC-043
func TestStreamEndsWithItsSession(t *testing.T) {
	t.Parallel()
	f := newWardsFixture(t, 1, func(c *Config) { c.StreamRecheckInterval = 50 * time.Millisecond })
	ended, closeStream := openStream(t, f, f.clinA)
	defer closeStream()
	select {
	case <-ended:
		t.Fatal("the stream ended while its session was alive")
	case <-time.After(300 * time.Millisecond):
	}
	req, _ := http.NewRequest(http.MethodPost, f.ts.URL+"/api/v1/auth/sign-out", nil)
	resp, err := f.clinA.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("POST /auth/sign-out = %d, want 204", resp.StatusCode)
	}
	select {
	case <-ended:
	case <-time.After(30 * time.Second):
		t.Fatal("the stream outlived its session by 30 s")
	}
}
