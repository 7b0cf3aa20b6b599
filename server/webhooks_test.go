package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// A webhook refused by core's destination policy is a 400 with core's stable code, nothing is
// stored, and the refusal is audited by core (webhook.rejected) and by the server
// (http.request.rejected), both under the request's id.
// Verifies: REQ-CORE-015
func TestCoreWebhookRefusalsCoded(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	rec := audittest.Recorder(t, pool, nil)
	svc, err := core.New(core.Config{Pool: pool, Recorder: rec})
	if err != nil {
		t.Fatal(err)
	}
	authSvc, cl := SignedIn(t, pool, rec)
	s, err := New(Config{Pool: pool, Recorder: rec, Core: svc, Auth: authSvc})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	count := func(q string, args ...any) int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, q, args...).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}
	for _, tc := range []struct{ url, code string }{
		{"http://169.254.169.254/latest/meta-data/", core.CodeWebhookDestinationRefused},
		{"http://127.0.0.1:8080/hook", core.CodeWebhookDestinationRefused},
		{"http://[::1]/", core.CodeWebhookDestinationRefused},
		{"http://10.1.2.3/", core.CodeWebhookDestinationRefused},
		{"http://localhost/", core.CodeWebhookDestinationRefused},
		{"https://user:pw@hooks.example.org/vigil", core.CodeWebhookURLCredentials},
		{"gopher://hooks.example.org/", core.CodeInvalidWebhookURL},
	} {
		b, _ := json.Marshal(map[string]any{"url": tc.url, "event_types": []string{"*"}})
		resp, err := cl.Post(ts.URL+"/api/v1/webhooks", "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var ae struct {
			Error struct {
				Code      string `json:"code"`
				RequestID string `json:"request_id"`
			} `json:"error"`
		}
		_ = json.Unmarshal(body, &ae)
		if resp.StatusCode != http.StatusBadRequest || ae.Error.Code != tc.code {
			t.Errorf("POST /api/v1/webhooks %s = %d %s, want 400 %s", tc.url, resp.StatusCode, body, tc.code)
			continue
		}
		for _, action := range []string{"webhook.rejected", "http.request.rejected"} {
			if n := count("SELECT count(*) FROM audit_events WHERE action = $1 AND reason = $2 AND request_id = $3 AND outcome = 'rejected'", action, tc.code, ae.Error.RequestID); n != 1 {
				t.Errorf("POST /api/v1/webhooks %s: %s events of the request = %d, want 1", tc.url, action, n)
			}
		}
	}
	if n := count("SELECT count(*) FROM core_webhooks"); n != 0 {
		t.Errorf("core_webhooks rows = %d, want 0 (nothing stored)", n)
	}
}
