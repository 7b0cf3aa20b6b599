package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// `vigil audit verify` checks the installation's trail (exit 0 clean, 1 on a finding, naming
// the event), `vigil audit export` writes a pack, and `vigil audit verify --pack` verifies it
// offline and fails on a changed byte.
// Verifies: REQ-AUD-007, REQ-AUD-008, REQ-AUD-054
func TestAuditVerifyAndExportCommands(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	dataDir := t.TempDir()
	env := map[string]string{"VIGIL_DATABASE_URL": url, "VIGIL_KEYRING_PASSPHRASE": "test-passphrase", "VIGIL_VAULT_ADDR": ""}
	cheapLocalRing(t, dataDir, "test-passphrase")
	ctx := withEnv(context.Background(), env)

	// A running installation's audit chain records, ships and checkpoints some events.
	// The recorder gets its session key from the installation's key ring (openAudit).
	rec := audittest.Unauthenticated(t, pool, nil)
	svc, closeSvc, err := openAudit(ctx, runConfig{DataDir: dataDir, DatabaseURL: url}, &database{pool: pool, rec: rec}, nil, false)
	if err != nil {
		t.Fatalf("openAudit() error = %v", err)
	}
	var ids []string
	for i := range 6 {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			id, err := rec.Record(ctx, tx, audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "u1", AuthMethod: "password"},
				Action: "test.cli", Object: audit.Object{Type: "thing", ID: string(rune('a' + i))}, Outcome: audit.OutcomeSuccess})
			ids = append(ids, id.String())
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		// Shipped when this test's events are in integrated batches under the checkpoint (the
		// shipper's stats are as of its last pass, which may predate the events).
		var last *int64
		var shipped int
		if err := pool.QueryRow(ctx, `SELECT count(*), max(b.leaf_index) FROM audit_events e
			JOIN audit_batches b ON b.id = e.batch_id WHERE e.id::text = ANY($1) AND b.leaf_index IS NOT NULL`, ids).Scan(&shipped, &last); err != nil {
			t.Fatal(err)
		}
		if cp, err := svc.CheckpointNow(ctx); err == nil && shipped == len(ids) && last != nil && cp.Size > uint64(*last) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not shipped: %+v", svc.Shipper().Stats())
		}
		svc.Shipper().Kick()
		time.Sleep(50 * time.Millisecond) // the running shipper and Trillian's sequencer work
	}
	if err := closeSvc(ctx); err != nil {
		t.Fatal(err)
	}

	out, err := executeEnv(t, env, "audit", "verify", "--json", "--data-dir", dataDir)
	var rep chain.Report
	if err != nil || json.Unmarshal([]byte(out), &rep) != nil || !rep.OK || rep.ProvenEvents < 6 {
		t.Fatalf("vigil audit verify --json = %v\n%s\nwant OK with ≥ 6 proven events", err, out)
	}
	// --state: a full run the first time (it writes the state), incremental afterwards.
	stateFile := filepath.Join(t.TempDir(), "verify-state.json")
	if out, err := executeEnv(t, env, "audit", "verify", "--data-dir", dataDir, "--state", stateFile); err != nil {
		t.Fatalf("vigil audit verify --state (first) = %v\n%s", err, out)
	}
	if _, err := os.Stat(stateFile); err != nil {
		t.Fatalf("no state written: %v", err)
	}
	out, err = executeEnv(t, env, "audit", "verify", "--json", "--data-dir", dataDir, "--state", stateFile)
	rep = chain.Report{}
	if err != nil || json.Unmarshal([]byte(out), &rep) != nil || !rep.OK || !rep.Incremental {
		t.Fatalf("vigil audit verify --state (second) = %v\n%s\nwant an incremental OK", err, out)
	}

	pack := filepath.Join(t.TempDir(), "trail.pack")
	from, to := time.Now().Add(-time.Hour).Format(time.RFC3339), time.Now().Add(time.Hour).Format(time.RFC3339)
	if out, err := executeEnv(t, env, "audit", "export", "--data-dir", dataDir, "--from", from, "--to", to, "--out", pack); err != nil {
		t.Fatalf("vigil audit export = %v\n%s", err, out)
	}
	if out, err := executeEnv(t, env, "audit", "verify", "--pack", pack); err != nil {
		t.Fatalf("vigil audit verify --pack = %v\n%s", err, out)
	}
	data, err := os.ReadFile(pack)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 1
	if err := os.WriteFile(pack, data, 0o600); err != nil {
		t.Fatal(err)
	}
	var ee *exitError
	if _, err := executeEnv(t, env, "audit", "verify", "--pack", pack); !errors.As(err, &ee) || ee.code != 1 {
		t.Errorf("vigil audit verify --pack (one byte changed) = %v, want exit code 1", err)
	}

	if _, err := pool.Exec(ctx, "DELETE FROM audit_events WHERE id = $1", ids[2]); err != nil {
		t.Fatal(err)
	}
	out, err = executeEnv(t, env, "audit", "verify", "--data-dir", dataDir)
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(out, ids[2]) {
		t.Errorf("vigil audit verify after a DELETE = %v\n%s\nwant exit code 1 naming %s", err, out, ids[2])
	}
	// An event verified before is not re-read by an incremental run; --full re-reads all.
	if out, err := executeEnv(t, env, "audit", "verify", "--data-dir", dataDir, "--state", stateFile); err != nil || !strings.Contains(out, "incremental") {
		t.Errorf("vigil audit verify --state after deleting an old event = %v\n%s\nwant an incremental pass (it does not re-read old events)", err, out)
	}
	out, err = executeEnv(t, env, "audit", "verify", "--data-dir", dataDir, "--state", stateFile, "--full")
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(out, ids[2]) {
		t.Errorf("vigil audit verify --state --full after a DELETE = %v\n%s\nwant exit code 1 naming %s", err, out, ids[2])
	}
}
