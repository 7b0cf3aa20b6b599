package server

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit/audittest"

	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/internal/testdb"
)

// serveOnLoopback runs s.Serve on a loopback port until the test ends and returns its address.
func serveOnLoopback(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln, 5*time.Second) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve() = %v", err)
		}
	})
	return ln.Addr().String()
}

// A body that does not arrive within the read time limit ends its request with 408
// request_timeout (audited), even when the request's own time limit is far away; a request
// that is merely slow to answer, with or without a body, is not cut off by the read limit.
// Verifies: REQ-FND-016
func TestReadTimeout(t *testing.T) {
	pool := testdb.New(t)
	s, err := New(Config{Pool: pool, Recorder: audittest.Recorder(t, pool, nil), ReadTimeout: 200 * time.Millisecond, RequestTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	s.Permit("POST", "/test/echo")
	s.Permit("GET", "/test/slow")
	s.Permit("POST", "/test/slow")
	s.echo.POST("/test/echo", func(c echo.Context) error {
		b, err := io.ReadAll(c.Request().Body)
		if err != nil {
			return bodyReadError(err)
		}
		return c.Blob(http.StatusOK, "text/plain", b)
	})
	// Slow to answer: it outlives the read limit several times over (a real wait: what is
	// checked is that the connection's read deadline does not cancel it).
	slow := func(c echo.Context) error {
		_, _ = io.ReadAll(c.Request().Body)
		select {
		case <-time.After(time.Second):
			return c.String(http.StatusOK, "finished")
		case <-c.Request().Context().Done():
			return c.Request().Context().Err()
		}
	}
	s.echo.GET("/test/slow", slow)
	s.echo.POST("/test/slow", slow)
	addr := serveOnLoopback(t, s)

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The headers promise 100 bytes; 10 come, then nothing.
	if _, err := io.WriteString(conn, "POST /test/echo HTTP/1.1\r\nHost: vigil\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789"); err != nil {
		t.Fatal(err)
	}
	// A bound far above the read limit, so that only a server that never times the body out
	// fails here (before the fix, the request waited for its 1-hour limit).
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled body: %v", err)
	}
	var body errorBody
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout || body.Error.Code != CodeRequestTimeout {
		t.Errorf("stalled body = %d %s, want 408 %s", resp.StatusCode, body.Error.Code, CodeRequestTimeout)
	}
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_events WHERE request_id = $1
		AND action = 'http.request.rejected' AND reason = $2`, body.Error.RequestID, CodeRequestTimeout).Scan(&n); err != nil || n != 1 {
		t.Errorf("audited request_timeout rejections = %d (%v), want 1", n, err)
	}

	for _, tc := range []struct{ method, body string }{{"GET", ""}, {"POST", "a complete body"}} {
		req, _ := http.NewRequest(tc.method, "http://"+addr+"/test/slow", strings.NewReader(tc.body))
		if tc.body == "" {
			req.Body = nil
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != "finished" {
			t.Errorf("%s /test/slow (1 s, read limit 200 ms) = %d %q, want 200 finished", tc.method, resp.StatusCode, b)
		}
	}
}
