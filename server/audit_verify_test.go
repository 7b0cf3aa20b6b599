package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// The API's verify serves the latest stored result of the server's own runs (it verifies
// nothing itself): the background incremental pass names a row tampered after the last
// clean run; only an auditor may start a full re-verification, which is audited with who
// started it and its result and names a tampered old row the incremental pass cannot see;
// one run at a time per database (409); clinicians and administrators get 403.
// Verifies: REQ-AUD-070, REQ-AUD-071, REQ-AUD-072, REQ-AUD-073
func TestAuditVerifyServesLatestResult(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, url := testdb.NewWithURL(t)
	rec := audittest.Recorder(t, pool, nil)
	svc := chaintest.Start(t, pool, url, rec)
	authSvc, auditorCl, auditor := SignedInUserOn(t, pool, rec, authtest.Grant{Role: auth.RoleAuditor, Domain: auth.AllDomains})
	qualityCl := SignedInClient(t, authSvc, authtest.Grant{Role: auth.RoleQuality, Domain: auth.AllDomains})
	clinicianCl := SignedInClient(t, authSvc, authtest.Grant{Role: auth.RoleClinician, Domain: auth.AllDomains})
	adminCl := SignedInClient(t, authSvc, authtest.Grant{Role: auth.RoleAdmin, Domain: auth.AllDomains})
	s, err := New(Config{Pool: pool, Recorder: rec, Audit: svc, Auth: authSvc, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)

	do := func(cl *http.Client, method string, want int, v any) string {
		t.Helper()
		req, _ := http.NewRequest(method, ts.URL+"/api/v1/audit/verify", nil)
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s /audit/verify = %d %s, want %d", method, resp.StatusCode, b, want)
		}
		if v != nil {
			if err := json.Unmarshal(b, v); err != nil {
				t.Fatalf("%s /audit/verify: %v (%s)", method, err, b)
			}
		}
		if resp.StatusCode < 400 {
			return ""
		}
		return decodeError(t, bytes.NewReader(b)).Code
	}
	record := func() uuid.UUID {
		t.Helper()
		id, err := rec.RecordNow(ctx, audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "test", AuthMethod: "internal"},
			Action: "test.action", Object: audit.Object{Type: "thing", ID: "1"}, Outcome: audit.OutcomeSuccess})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	hasFinding := func(run chain.LatestVerification, kind string, id uuid.UUID) bool {
		for _, f := range run.Findings {
			if f.Kind == kind && f.EventID == id.String() {
				return true
			}
		}
		return false
	}

	if code := do(qualityCl, "GET", http.StatusNotFound, nil); code != "audit_no_verification" {
		t.Errorf("GET before the first run: code %q, want audit_no_verification", code)
	}
	old := record()
	record()
	cp := chaintest.ShipAll(t, svc)

	// The background pass: a full run first (no state yet), stored, served to quality and
	// auditors; refused to a clinician and an administrator.
	if run, err := svc.VerifyInBackground(ctx); err != nil || run.Kind != chain.RunFull || run.OK == nil || !*run.OK {
		t.Fatalf("VerifyInBackground() = %+v, %v; want a clean full run", run, err)
	}
	var got chain.LatestVerification
	do(qualityCl, "GET", http.StatusOK, &got)
	if got.Kind != chain.RunFull || got.OK == nil || !*got.OK || got.TreeSize == nil || *got.TreeSize != cp.Size ||
		got.Events < 2 || got.FinishedAt == nil || got.StartedBy != nil || got.Running != nil {
		t.Fatalf("GET (quality) after the first pass = %+v, want a clean full run at tree size %d", got, cp.Size)
	}
	do(auditorCl, "GET", http.StatusOK, nil)
	for name, cl := range map[string]*http.Client{"clinician": clinicianCl, "admin": adminCl} {
		if code := do(cl, "GET", http.StatusForbidden, nil); code != CodeForbidden {
			t.Errorf("GET as %s: code %q, want forbidden", name, code)
		}
	}
	for name, cl := range map[string]*http.Client{"clinician": clinicianCl, "admin": adminCl, "quality": qualityCl} {
		if code := do(cl, "POST", http.StatusForbidden, nil); code != CodeForbidden {
			t.Errorf("POST as %s: code %q, want forbidden", name, code)
		}
	}

	// A row recorded after the clean run and then tampered with: the next background pass
	// (incremental, reading only what came after) names it.
	fresh := record()
	chaintest.ShipAll(t, svc)
	if _, err := pool.Exec(ctx, `UPDATE audit_events SET action = 'test.other' WHERE id = $1`, fresh); err != nil {
		t.Fatal(err)
	}
	if run, err := svc.VerifyInBackground(ctx); err != nil || run.Kind != chain.RunIncremental {
		t.Fatalf("VerifyInBackground() = %+v, %v; want an incremental run", run, err)
	}
	do(qualityCl, "GET", http.StatusOK, &got)
	if got.Kind != chain.RunIncremental || got.OK == nil || *got.OK || !hasFinding(got, chain.FindingModified, fresh) || got.Events >= got.TotalEvents {
		t.Fatalf("GET after tampering a new row = %+v, want an incremental run naming %s modified", got, fresh)
	}

	// One run at a time per database: while another holds the lock (here: the test, as
	// another replica would), a POST is refused with 409 and the background pass skips.
	lockConn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockConn.Exec(ctx, `SELECT pg_advisory_lock(hashtext('vigil.audit.verify'))`); err != nil {
		t.Fatal(err)
	}
	if code := do(auditorCl, "POST", http.StatusConflict, nil); code != "audit_verify_running" {
		t.Errorf("POST while a run holds the lock: code %q, want audit_verify_running", code)
	}
	if _, err := svc.VerifyInBackground(ctx); !errors.Is(err, chain.ErrVerifyRunning) {
		t.Errorf("VerifyInBackground() while a run holds the lock = %v, want ErrVerifyRunning", err)
	}
	if _, err := lockConn.Exec(ctx, `SELECT pg_advisory_unlock(hashtext('vigil.audit.verify'))`); err != nil {
		t.Fatal(err)
	}
	lockConn.Release()

	// An old row (verified before) tampered with: the incremental pass does not re-read it;
	// the auditor's full run names it, and is audited with who started it and its result.
	if _, err := pool.Exec(ctx, `UPDATE audit_events SET action = 'test.other' WHERE id = $1`, old); err != nil {
		t.Fatal(err)
	}
	var started chain.VerifyRun
	do(auditorCl, "POST", http.StatusAccepted, &started)
	if started.Kind != chain.RunFull || started.StartedBy == nil || started.StartedBy.ID != auditor.ID.String() || started.FinishedAt != nil {
		t.Fatalf("POST (auditor) = %+v, want a full run started by %s", started, auditor.ID)
	}
	svc.WaitVerifications()
	do(qualityCl, "GET", http.StatusOK, &got)
	if got.ID != started.ID || got.OK == nil || *got.OK || !hasFinding(got, chain.FindingModified, old) ||
		!hasFinding(got, chain.FindingModified, fresh) || got.StartedBy == nil || got.StartedBy.ID != auditor.ID.String() {
		t.Fatalf("GET after the auditor's full run = %+v, want run %d by %s naming %s and %s modified", got, started.ID, auditor.ID, old, fresh)
	}
	for _, action := range []string{"audit.verify.started", "audit.verify.completed"} {
		var actor string
		var payload []byte
		if err := pool.QueryRow(ctx, `SELECT actor_id, payload FROM audit_events WHERE action = $1 AND object_type = 'audit_verification'
				AND object_id = $2`, action, strconv.FormatInt(started.ID, 10)).Scan(&actor, &payload); err != nil {
			t.Fatalf("%s event of run %d: %v", action, started.ID, err)
		}
		if actor != auditor.ID.String() {
			t.Errorf("%s event actor = %q, want the auditor %s", action, actor, auditor.ID)
		}
		if action == "audit.verify.completed" {
			var p struct {
				OK       *bool `json:"ok"`
				Findings int   `json:"findings"`
			}
			if err := json.Unmarshal(payload, &p); err != nil || p.OK == nil || *p.OK || p.Findings < 2 {
				t.Errorf("audit.verify.completed payload = %s, want ok false with the findings", payload)
			}
		}
	}
}
