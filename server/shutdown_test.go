package server

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// A request in flight when shutdown begins completes; new connections are refused after.
// Verifies: REQ-FND-009
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	s, err := New(Config{Pool: pool, Recorder: audittest.Recorder(t, pool, nil)})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	release := make(chan struct{})
	s.Permit("GET", "/test/slow")
	s.echo.GET("/test/slow", func(c echo.Context) error {
		close(started)
		<-release
		return c.String(http.StatusOK, "finished")
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln, 10*time.Second) }()

	type result struct {
		body string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/test/slow")
		if err != nil {
			got <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		got <- result{string(b), err}
	}()
	<-started
	cancel() // shutdown begins with the request in flight
	// Wait until the listener is closed, then let the handler finish.
	for i := 0; i < 100; i++ {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 100*time.Millisecond)
		if err != nil {
			break
		}
		c.Close()
		time.Sleep(20 * time.Millisecond)
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), 100*time.Millisecond); err == nil {
		c.Close()
		t.Error("listener still accepts connections after shutdown began")
	}
	close(release)
	r := <-got
	if r.err != nil || r.body != "finished" {
		t.Errorf("in-flight request = %q, %v; want it to finish", r.body, r.err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve() = %v, want nil after graceful shutdown", err)
	}
}

// On shutdown the server drains: readiness answers 503 draining at once, a new upload is
// refused with a retryable 503 (Retry-After, Connection: close) and is neither stored nor
// audited as a rejection, an upload in flight finishes and is answered, the listener stays
// open for the drain delay, then closes.
// Verifies: REQ-HA-023
func TestDrainOnShutdown(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	const delay = 1500 * time.Millisecond
	s, err := New(Config{Pool: pool, Recorder: audittest.Recorder(t, pool, nil), DrainDelay: delay})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	release := make(chan struct{})
	s.Permit("POST", "/test/upload")
	s.echo.POST("/test/upload", func(c echo.Context) error {
		close(started)
		<-release
		return c.String(http.StatusCreated, "stored")
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln, 10*time.Second) }()
	if resp, err := http.Get(base + "/readyz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("readyz before shutdown: %v, %v", resp, err)
	} else {
		resp.Body.Close()
	}

	type result struct {
		status int
		body   string
		err    error
	}
	inflight := make(chan result, 1)
	go func() {
		resp, err := http.Post(base+"/test/upload", "application/json", strings.NewReader("{}"))
		if err != nil {
			inflight <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		inflight <- result{resp.StatusCode, string(b), err}
	}()
	<-started
	cancel()
	began := time.Now()
	for !s.Draining() {
		time.Sleep(5 * time.Millisecond)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), `"draining"`) {
		t.Errorf("readyz while draining = %d %s, want 503 draining", resp.StatusCode, b)
	}
	var before int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM audit_events WHERE action = 'http.request.rejected'").Scan(&before); err != nil {
		t.Fatal(err)
	}
	resp, err = client.Post(base+"/api/v1/uploads", "application/json", strings.NewReader(`{"not":"read"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" ||
		!resp.Close || !strings.Contains(string(b), `"code":"draining"`) {
		t.Errorf("upload while draining = %d Retry-After %q close %v %s; want 503 draining, Retry-After 1, Connection: close",
			resp.StatusCode, resp.Header.Get("Retry-After"), resp.Close, b)
	}
	var after, uploads int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM audit_events WHERE action = 'http.request.rejected'").Scan(&after); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM devices_uploads").Scan(&uploads); err != nil {
		t.Fatal(err)
	}
	if after != before || uploads != 0 {
		t.Errorf("a refusal while draining: %d rejection event(s) added, %d upload(s) stored; want none", after-before, uploads)
	}

	close(release)
	r := <-inflight
	if r.err != nil || r.status != http.StatusCreated || r.body != "stored" {
		t.Errorf("upload in flight when draining began = %d %q, %v; want it answered", r.status, r.body, r.err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve() = %v, want nil after the drain", err)
	}
	if waited := time.Since(began); waited < delay {
		t.Errorf("Serve returned %v after draining began, before the drain delay %v", waited, delay)
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), 200*time.Millisecond); err == nil {
		c.Close()
		t.Error("listener still open after the drain")
	}
}
