package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/internal/testdb"
)

func newTestServer(t *testing.T, pool *pgxpool.Pool) (*Server, *httptest.Server) {
	t.Helper()
	s, err := New(Config{Pool: pool, Recorder: audittest.Recorder(t, pool, nil), BodyLimit: "1K", Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	// Routes only tests have: one that panics, one that echoes its body.
	s.echo.GET("/test/panic", func(echo.Context) error { panic("boom") })
	s.Permit("GET", "/test/panic")
	s.Permit("POST", "/test/echo")
	s.echo.POST("/test/echo", func(c echo.Context) error {
		b, err := io.ReadAll(c.Request().Body)
		if err != nil {
			return err
		}
		return c.Blob(http.StatusOK, "text/plain", b)
	})
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return s, ts
}

// jsonCaller returns a function that sends a request to base+path with cl, body (when not
// nil) as JSON, and returns the answer's status and its JSON object (nil if it is none).
func jsonCaller(t *testing.T, cl *http.Client, base string) func(method, path string, body any) (int, map[string]any) {
	return func(method, path string, body any) (int, map[string]any) {
		t.Helper()
		var rd *bytes.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		} else {
			rd = bytes.NewReader(nil)
		}
		req, _ := http.NewRequest(method, base+path, rd)
		req.Header.Set("Content-Type", "application/json")
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
}

func decodeError(t *testing.T, r io.Reader) errorDetail {
	t.Helper()
	var b struct {
		errorBody
		// An OperationOutcome (the /fhir/R4 routes) carries the same code in its first issue.
		ResourceType string `json:"resourceType"`
		Issue        []struct {
			Diagnostics string `json:"diagnostics"`
			Details     struct {
				Coding []struct {
					Code string `json:"code"`
				} `json:"coding"`
			} `json:"details"`
		} `json:"issue"`
	}
	if err := json.NewDecoder(r).Decode(&b); err != nil {
		t.Fatalf("decode error envelope: %v", err)
	}
	if b.ResourceType == "OperationOutcome" && len(b.Issue) > 0 && len(b.Issue[0].Details.Coding) > 0 {
		return errorDetail{Code: b.Issue[0].Details.Coding[0].Code, Message: b.Issue[0].Diagnostics}
	}
	return b.Error
}

// Verifies: REQ-FND-003
func TestHealthAndReadiness(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	_, ts := newTestServer(t, pool)
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s = %d, want 200", path, resp.StatusCode)
		}
	}
}

// /readyz is red when the schema is behind the binary, and names the failing check.
// Verifies: REQ-FND-003
func TestReadinessFailsOnStaleSchema(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	// Pretend the newest migration was never applied.
	if _, err := pool.Exec(context.Background(),
		"DELETE FROM goose_db_version WHERE version_id = (SELECT max(version_id) FROM goose_db_version)"); err != nil {
		t.Fatal(err)
	}
	_, ts := newTestServer(t, pool)
	resp, err := http.Get(ts.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string                 `json:"status"`
		Checks map[string]checkResult `json:"checks"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusServiceUnavailable || body.Status != "not_ready" {
		t.Errorf("GET /readyz = %d %q, want 503 not_ready", resp.StatusCode, body.Status)
	}
	if body.Checks["schema"].OK || !body.Checks["database"].OK {
		t.Errorf("checks = %+v, want schema failing and database ok", body.Checks)
	}
}

// Every error answers with the one JSON envelope, a stable code and the request id, and every
// rejected request is audited.
// Verifies: REQ-FND-004, REQ-FND-005
func TestErrorEnvelopeAndRejectionAudit(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	_, ts := newTestServer(t, pool)
	tests := []struct {
		name, method, path, body string
		wantStatus               int
		wantCode                 string
		audited                  bool
	}{
		{"unknown route", "GET", "/api/v1/nothing-here", "", 404, CodeNotFound, true},
		{"wrong method", "DELETE", "/healthz", "", 405, CodeMethodNotAllowed, true},
		{"body too large", "POST", "/test/echo", strings.Repeat("x", 2048), 413, CodePayloadTooLarge, true},
		{"panic", "GET", "/test/panic", "", 500, CodeInternal, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, ts.URL+tc.path, strings.NewReader(tc.body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.wantStatus {
				t.Errorf("%s %s = %d, want %d", tc.method, tc.path, resp.StatusCode, tc.wantStatus)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type = %q, want application/json", ct)
			}
			e := decodeError(t, resp.Body)
			if e.Code != tc.wantCode {
				t.Errorf("error code = %q, want %q", e.Code, tc.wantCode)
			}
			if e.RequestID == "" || e.RequestID != resp.Header.Get(echo.HeaderXRequestID) {
				t.Errorf("request_id = %q, want the X-Request-Id header %q", e.RequestID, resp.Header.Get(echo.HeaderXRequestID))
			}
			if tc.wantStatus == 500 && strings.Contains(e.Message, "boom") {
				t.Errorf("500 message %q leaks the internal error", e.Message)
			}
			var n int
			err = pool.QueryRow(context.Background(),
				`SELECT count(*) FROM audit_events WHERE request_id = $1 AND action = 'http.request.rejected'
				 AND outcome = 'rejected' AND reason = $2`, e.RequestID, tc.wantCode).Scan(&n)
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			if tc.audited {
				want = 1
			}
			if n != want {
				t.Errorf("audited rejections for request %s = %d, want %d", e.RequestID, n, want)
			}
		})
	}
}

// The source address of a request is the TCP peer unless proxies are trusted explicitly.
// Verifies: REQ-FND-005
func TestSourceAddressIsNotForgeable(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	_, ts := newTestServer(t, pool)
	req, _ := http.NewRequest("GET", ts.URL+"/nope", nil)
	req.Header.Set("X-Forwarded-For", "203.0.113.9")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var src string
	if err := pool.QueryRow(context.Background(),
		"SELECT source_addr FROM audit_events WHERE request_id = $1", resp.Header.Get(echo.HeaderXRequestID)).Scan(&src); err != nil {
		t.Fatal(err)
	}
	if src != "127.0.0.1" {
		t.Errorf("audited source_addr = %q, want 127.0.0.1 (the TCP peer, not X-Forwarded-For)", src)
	}
}
