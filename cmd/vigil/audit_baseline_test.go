package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/rowdigest"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// `vigil audit baseline` adopts the rows written before they carried their event (verify
// reports them as unaudited changes before, not after), lists them first with --dry-run,
// and a second run stamps nothing and says so.
// Verifies: REQ-AUD-076, REQ-AUD-077
func TestAuditBaselineCommand(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	env, dir := commandRing(t, url)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO auth_service_accounts (id, name, status, created_at)
		VALUES ('0192f5a0-7c1e-7b3a-9c44-1d2e3f405162', 'legacy-exporter', 'active', now() - interval '2 years')`); err != nil {
		t.Fatal(err)
	}
	// Enough rows that one event's payload cannot hold all their digests (audit.MaxPayloadBytes).
	if _, err := pool.Exec(ctx, `INSERT INTO auth_service_accounts (id, name, status, created_at)
		SELECT gen_random_uuid(), 'legacy-' || i, 'active', now() - interval '1 year' FROM generate_series(1, 250) i`); err != nil {
		t.Fatal(err)
	}
	unaudited := func() bool {
		out, _ := executeEnv(t, env, "audit", "verify", "--json", "--data-dir", dir)
		var rep chain.Report
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("vigil audit verify --json: %v\n%s", err, out)
		}
		for _, f := range rep.Findings {
			if (f.Kind == chain.FindingUnaudited || f.Kind == chain.FindingDomainMismatch) && strings.Contains(f.Detail, "auth_service_accounts") {
				return true
			}
		}
		return false
	}
	if !unaudited() {
		t.Fatal("vigil audit verify: the service account inserted without its event is not an unaudited_change")
	}
	out, err := executeEnv(t, env, "audit", "baseline", "--dry-run", "--data-dir", dir)
	if err != nil || !strings.Contains(out, "auth_service_accounts") || !strings.Contains(out, "0192f5a0-7c1e-7b3a-9c44-1d2e3f405162") || !strings.Contains(out, "nothing changed") {
		t.Fatalf("vigil audit baseline --dry-run = %v\n%s", err, out)
	}
	out, err = executeEnv(t, env, "audit", "baseline", "--json", "--data-dir", dir)
	var res rowdigest.BaselineResult
	if err != nil || json.Unmarshal([]byte(out), &res) != nil || res.Adopted != 251 || res.Already {
		t.Fatalf("vigil audit baseline --json = %v\n%s\nwant 251 rows adopted", err, out)
	}
	for _, bt := range res.Tables {
		if bt.Table == "auth_service_accounts" && len(bt.Events) < 3 {
			t.Errorf("auth_service_accounts: 251 rows adopted by %d event(s); want them split so that no payload is truncated", len(bt.Events))
		}
	}
	var truncated int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM audit_events WHERE action = 'audit.baseline' AND payload::text LIKE '%"truncated"%'`).Scan(&truncated); err != nil || truncated != 0 {
		t.Fatalf("truncated baseline payloads = %d, %v", truncated, err)
	}
	if unaudited() {
		t.Fatal("vigil audit verify after the baseline: the adopted row is still an unaudited_change")
	}
	out, err = executeEnv(t, env, "audit", "baseline", "--data-dir", dir)
	if err != nil || !strings.Contains(out, "baselined before") || !strings.Contains(out, "nothing stamped") {
		t.Fatalf("vigil audit baseline (second run) = %v\n%s\nwant it to say nothing was stamped", err, out)
	}
}
