package server

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// /readyz reports the audit chain's health without publishing where the log server (and its
// admin API) listens.
// Verifies: REQ-AUD-012
func TestReadinessDoesNotPublishTrillianAddress(t *testing.T) {
	pool, url := testdb.NewWithURL(t)
	rec := audittest.Recorder(t, pool, nil)
	svc := chaintest.Start(t, pool, url, rec)
	s, err := New(Config{Pool: pool, Recorder: rec, Audit: svc, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		ReadinessChecks: []ReadinessCheck{{Name: "audit", Check: svc.Ready}}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	resp, err := http.Get(ts.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	addr := svc.TrillianAddr()
	if !strings.Contains(string(b), `"audit"`) || addr == "" {
		t.Fatalf("GET /readyz = %s, want an audit check (log server at %q)", b, addr)
	}
	if strings.Contains(string(b), "trillian_addr") || strings.Contains(string(b), strings.TrimPrefix(addr, "unix:")) {
		t.Errorf("GET /readyz = %s, publishes the log server's address %q", b, addr)
	}
}
