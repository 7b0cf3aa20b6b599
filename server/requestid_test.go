package server

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/internal/testdb"
)

// The server names every request itself. A client's X-Request-Id cannot keep a request out
// of the trail (one longer than the audit trail's fields made the audit write fail) nor pose
// as another request: it is kept only as a correlation id, when it is a short plain token,
// answered in X-Correlation-Id and recorded beside the server's id.
// Verifies: REQ-FND-013, REQ-FND-005
func TestRequestIDIsTheServers(t *testing.T) {
	pool := testdb.New(t)
	_, ts := newTestServer(t, pool)
	ctx := context.Background()
	tests := []struct {
		name, header, value string
		wantCorrelation     string
	}{
		{"none", "", "", ""},
		{"over 1024 bytes", echo.HeaderXRequestID, strings.Repeat("a", 2000), ""},
		{"a token", echo.HeaderXRequestID, "client-corr-42", "client-corr-42"},
		{"a token in X-Correlation-Id", HeaderCorrelationID, "0f6c2b1e-8a7d-4c1e-9b2a-5d4e3f2a1b0c", "0f6c2b1e-8a7d-4c1e-9b2a-5d4e3f2a1b0c"},
		{"spaces and quotes", HeaderCorrelationID, `a b"c`, ""},
		{"129 bytes", HeaderCorrelationID, strings.Repeat("b", 129), ""},
		{"another request's id", echo.HeaderXRequestID, "", ""}, // value filled below
	}
	var lastID string
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			value, wantCorrelation := tc.value, tc.wantCorrelation
			if tc.name == "another request's id" { // kept as a correlation id, never as the id
				value, wantCorrelation = lastID, lastID
			}
			req, _ := http.NewRequest("GET", ts.URL+"/api/v1/nothing-here", nil)
			if tc.header != "" {
				req.Header.Set(tc.header, value)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			e := decodeError(t, resp.Body)
			resp.Body.Close()
			id := resp.Header.Get(echo.HeaderXRequestID)
			if _, err := uuid.Parse(id); err != nil || id == value || e.RequestID != id {
				t.Fatalf("X-Request-Id = %q, request_id = %q (client sent %.20q), want the same server-made UUID", id, e.RequestID, value)
			}
			if got := resp.Header.Get(HeaderCorrelationID); got != wantCorrelation {
				t.Errorf("X-Correlation-Id = %.40q, want %q", got, wantCorrelation)
			}
			var payload string
			if err := pool.QueryRow(ctx, `SELECT payload::text FROM audit_events WHERE request_id = $1 AND action = 'http.request.rejected'`, id).
				Scan(&payload); err != nil {
				t.Fatalf("audit of the rejected request %s: %v", id, err)
			}
			var p map[string]any
			if err := json.Unmarshal([]byte(payload), &p); err != nil {
				t.Fatal(err)
			}
			if got, _ := p["correlation_id"].(string); got != wantCorrelation {
				t.Errorf("audited correlation_id = %.40q, want %q", got, wantCorrelation)
			}
			if value != "" {
				var n int
				if err := pool.QueryRow(ctx, `SELECT count(*) FROM audit_events WHERE request_id = $1`, value).Scan(&n); err != nil {
					t.Fatal(err)
				}
				if want := map[bool]int{true: 1, false: 0}[tc.name == "another request's id"]; n != want {
					t.Errorf("events with the client's id %.20q as request id = %d, want %d", value, n, want)
				}
			}
			lastID = id
		})
	}
}

// A rejected request is recorded with its route template, never its raw path: an MRN or a
// name typed into a URL does not land in the trail, and the path's length does not bloat it.
// Verifies: REQ-FND-014
func TestRejectionAuditsRouteNotPath(t *testing.T) {
	pool := testdb.New(t)
	s, ts := newTestServer(t, pool)
	s.echo.GET("/api/v1/things/:id", func(c echo.Context) error { return BadRequest("invalid_thing", "no") })
	s.Permit("GET", "/api/v1/things/:id")
	ctx := context.Background()
	phi := "MRN-0012345-SMITH-JOHN-"
	for _, tc := range []struct{ path, wantObject string }{
		{"/api/v1/" + strings.Repeat(phi, 4000), "GET (unmatched)"}, // ≈ 92 kB of path
		{"/api/v1/things/" + phi, "GET /api/v1/things/:id"},
	} {
		resp, err := http.Get(ts.URL + tc.path + "?mrn=" + phi)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		id := resp.Header.Get(echo.HeaderXRequestID)
		var object, payload string
		if err := pool.QueryRow(ctx, `SELECT object_id, payload::text FROM audit_events WHERE request_id = $1`, id).Scan(&object, &payload); err != nil {
			t.Fatalf("audit of %.40s: %v", tc.path, err)
		}
		if object != tc.wantObject {
			t.Errorf("audited object = %q, want %q", object, tc.wantObject)
		}
		if strings.Contains(payload, "SMITH") || strings.Contains(object, "SMITH") || len(payload) > 200 {
			t.Errorf("audited payload = %.100q (%d bytes), want the status only, no path", payload, len(payload))
		}
	}
}
