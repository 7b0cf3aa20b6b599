package server

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// The audit API serves the signed checkpoint, the verify report, the event list with
// filters and cursor paging, and single events with their two-step proof; every
// state-changing request is itself audited.
// Verifies: REQ-AUD-009, REQ-AUD-010, REQ-AUD-030
func TestAuditAPI(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	rec := audittest.Recorder(t, pool, nil)
	svc := chaintest.Start(t, pool, url, rec)
	authSvc, cl := SignedIn(t, pool, rec)
	s, err := New(Config{Pool: pool, Recorder: rec, Audit: svc, Logger: quiet, Auth: authSvc})
	if err != nil {
		t.Fatal(err)
	}
	s.Permit("POST", "/test/change")
	s.Permit("POST", "/test/domain-audited")
	s.echo.POST("/test/change", func(c echo.Context) error { return c.NoContent(http.StatusNoContent) })
	s.echo.POST("/test/domain-audited", func(c echo.Context) error { Audited(c); return c.NoContent(http.StatusNoContent) })
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)

	get := func(path string, want int, v any) {
		t.Helper()
		resp, err := cl.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("GET %s = %d %s, want %d", path, resp.StatusCode, b, want)
		}
		if v != nil {
			if err := json.Unmarshal(b, v); err != nil {
				t.Fatalf("GET %s: %v", path, err)
			}
		}
	}
	get("/api/v1/audit/checkpoint", http.StatusNotFound, nil) // none issued yet
	// The verifier key is served from the start, before any checkpoint exists, and it is the
	// key the checkpoints verify under.
	var vk struct {
		Origin      string `json:"origin"`
		VerifierKey string `json:"verifier_key"`
	}
	get("/api/v1/audit/verifier-key", http.StatusOK, &vk)
	if vk.VerifierKey == "" || vk.VerifierKey != svc.VerifierKey() || vk.Origin != svc.Origin() {
		t.Fatalf("GET /audit/verifier-key = %+v, want origin %q key %q", vk, svc.Origin(), svc.VerifierKey())
	}

	// Three state-changing requests, each audited by the middleware.
	for range 3 {
		resp, err := cl.Post(ts.URL+"/test/change", "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	// A handler whose domain code recorded its own event gets no second, generic one.
	resp, err := cl.Post(ts.URL+"/test/domain-audited", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var page chain.EventPage
	get("/api/v1/audit/events?action=http.request.completed&limit=2", http.StatusOK, &page)
	if len(page.Events) != 2 || page.NextCursor == "" || page.Events[0].ObjectType != "http_route" {
		t.Fatalf("GET events page 1 = %+v, want 2 events and a cursor", page)
	}
	var page2 chain.EventPage
	get("/api/v1/audit/events?action=http.request.completed&limit=2&cursor="+page.NextCursor, http.StatusOK, &page2)
	if len(page2.Events) != 1 || page2.NextCursor != "" {
		t.Fatalf("GET events page 2 = %+v, want the third event and no cursor", page2)
	}
	var all chain.EventPage // a prefix: the three changes and the rejected checkpoint request
	get("/api/v1/audit/events?action=http.*&object_type=http_route", http.StatusOK, &all)
	if len(all.Events) != 4 || all.Events[3].Action != "http.request.rejected" {
		t.Fatalf("GET events?action=http.* = %d events, want 4 with the rejection first in time", len(all.Events))
	}
	get("/api/v1/audit/events?from=yesterday", http.StatusBadRequest, nil)

	// Ship, then checkpoint on demand, then fetch an event with its proof.
	chaintest.ShipAll(t, svc)
	resp, err = cl.Post(ts.URL+"/api/v1/audit/checkpoint", "application/json", nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("POST checkpoint = %v, %v", resp, err)
	}
	resp.Body.Close()
	var cp struct {
		Note string `json:"note"`
		Size uint64 `json:"size"`
	}
	get("/api/v1/audit/checkpoint", http.StatusOK, &cp)
	if cp.Size == 0 || !strings.HasPrefix(cp.Note, svc.Origin()+"\n") {
		t.Errorf("GET checkpoint = %+v", cp)
	}
	var ep chain.EventProof
	get("/api/v1/audit/events/"+page.Events[0].ID.String(), http.StatusOK, &ep)
	if ep.Status != "proven" || ep.Batch == nil || ep.Batch.Checkpoint == "" {
		t.Errorf("GET event = status %q, batch %+v; want proven with checkpoint", ep.Status, ep.Batch)
	}
	// A client that pinned the verifier key before the first checkpoint verifies the proof.
	if _, err := chain.VerifyEventProof(ep, vk.VerifierKey); err != nil {
		t.Errorf("VerifyEventProof(event, key from /audit/verifier-key) = %v", err)
	}
	get("/api/v1/audit/events/0190a0a0-0000-7000-8000-000000000000", http.StatusNotFound, nil)
	// The verify report is the latest of the server's own runs (audit_verify_test.go).
	if _, err := svc.VerifyInBackground(context.Background()); err != nil {
		t.Fatal(err)
	}
	var rep chain.LatestVerification
	get("/api/v1/audit/verify", http.StatusOK, &rep)
	if rep.OK == nil || !*rep.OK || rep.Report == nil || rep.Report.ProvenEvents < 3 {
		t.Errorf("GET verify = %+v, want ok with at least 3 proven events", rep)
	}
}
