package chain_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/internal/pgxuuid"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// asAppRole returns the database URL with the application role (migration 00112) as the
// session's role, and a pool on it.
func asAppRole(t *testing.T, url string) (*pgxpool.Pool, string) {
	t.Helper()
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	appURL := url + sep + "role=vigil_app"
	cfg, err := pgxpool.ParseConfig(appURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.AfterConnect = pgxuuid.AfterConnect
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	var who string
	if err := pool.QueryRow(context.Background(), `SELECT current_user`).Scan(&who); err != nil || who != "vigil_app" {
		t.Fatalf("current_user = %q, %v; want vigil_app", who, err)
	}
	return pool, appURL
}

// The application role records, ships, checkpoints and witnesses the trail (the whole audit
// chain, embedded Trillian included, runs as vigil_app) but cannot rewrite, delete or
// truncate an event, batch, checkpoint or cosignature, cannot clear or change what the
// shipper set, and has no DDL on the audit tables; every audit_* table is checked in the
// catalogue, so a new one cannot slip in with DELETE.
// Verifies: REQ-AUD-052, REQ-AUD-072
func TestApplicationRoleCannotRewriteEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	owner, url := testdb.NewWithURL(t)
	app, appURL := asAppRole(t, url)
	rec := audittest.Recorder(t, app, nil)
	svc := chaintest.Start(t, app, appURL, rec)
	var ids []string
	for i := 0; i < 3; i++ {
		err := pgx.BeginFunc(ctx, app, func(tx pgx.Tx) error {
			id, err := rec.Record(ctx, tx, testEvent())
			ids = append(ids, id.String())
			return err
		})
		if err != nil {
			t.Fatalf("Record() as vigil_app: %v", err)
		}
	}
	chaintest.ShipAll(t, svc)
	verify := func() *chain.Report {
		rep, err := chain.Verify(ctx, chain.VerifyConfig{Pool: owner, Log: svc.Log(), VerifierKey: svc.VerifierKey(),
			Origin: svc.Origin(), Keys: audit.NewSessionKeys(rec.EventKeys())})
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	if rep := verify(); !rep.OK || rep.ProvenEvents < 3 {
		t.Fatalf("Verify() of a trail written by vigil_app: ok %v, %d proven, findings %s", rep.OK, rep.ProvenEvents, findings(rep))
	}
	// The server's own verification runs as vigil_app, and stores its result once (00130).
	if run, err := svc.VerifyInBackground(ctx); err != nil || run.OK == nil || !*run.OK {
		t.Fatalf("VerifyInBackground() as vigil_app = %+v, %v; want a clean run stored", run, err)
	}

	for _, attack := range []string{
		`UPDATE audit_verifications SET ok = false, findings = '[]'`, // a stored result rewritten
		`DELETE FROM audit_verifications`,
		`UPDATE audit_verifications SET started_at = now()`,
		`UPDATE audit_events SET payload = '{"forged":true}'`,
		`UPDATE audit_events SET occurred_at = occurred_at - interval '1 day'`,
		`UPDATE audit_events SET actor_id = 'dr-mallory'`,
		`UPDATE audit_events SET batch_id = NULL`,
		`UPDATE audit_events SET auth_mac = sha256(auth_mac)`,
		`UPDATE audit_events SET refused_at = now()`, // allowed column, but refusing a logged event is not
		`DELETE FROM audit_events WHERE id = '` + ids[1] + `'`,
		`TRUNCATE audit_events`,
		`ALTER TABLE audit_events DISABLE TRIGGER audit_events_write_once`,
		`DROP TRIGGER audit_events_write_once ON audit_events`,
		`ALTER TABLE audit_events ADD COLUMN x int`,
		`DROP TABLE audit_events`,
		`SET session_replication_role = replica`,
		`UPDATE audit_batches SET root = sha256(root)`,
		`UPDATE audit_batches SET leaf_index = leaf_index + 1`,
		`DELETE FROM audit_batches`,
		`UPDATE audit_checkpoints SET note = note || ' '`,
		`DELETE FROM audit_checkpoints`,
		`DELETE FROM audit_cosignatures`,
		`DELETE FROM audit_sessions`,
		`UPDATE audit_sessions SET wrapped_key = sha256(wrapped_key)`,
		`CREATE TABLE audit_events_shadow (id uuid)`,
	} {
		_, err := app.Exec(ctx, attack)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || (pgErr.Code != "42501" && !strings.HasPrefix(pgErr.Code, "42")) {
			t.Errorf("as vigil_app %s: error %v, want a refusal (insufficient_privilege)", attack, err)
		}
	}
	// The shipper renews queued_at when it submits a batch again: allowed.
	if _, err := app.Exec(ctx, `UPDATE audit_batches SET queued_at = now()`); err != nil {
		t.Errorf("as vigil_app, renewing audit_batches.queued_at: %v", err)
	}
	if rep := verify(); !rep.OK {
		t.Errorf("Verify() after the refused attacks: findings %s", findings(rep))
	}

	// The catalogue: no audit table grants vigil_app DELETE, TRUNCATE or UPDATE of a column
	// other than those the recorder and the shipper fill in.
	settable := map[string]bool{"audit_events.auth_mac": true, "audit_events.batch_id": true, "audit_events.batch_index": true,
		"audit_events.refused_at": true, "audit_batches.queued_at": true, "audit_batches.leaf_index": true,
		"audit_batches.integrated_at": true, "audit_batches.tree_size": true, "audit_batches.tree_root": true,
		"audit_incidents.resolved_at": true}
	for _, col := range []string{"finished_at", "ok", "tree_size", "checkpoint_id", "events", "total_events", "findings", "report", "error", "state", "state_sig"} {
		settable["audit_verifications."+col] = true // a run's result, set once (00130), and its signed state (00132)
	}
	rows, err := owner.Query(ctx, `SELECT c.relname, a.attname,
			has_table_privilege('vigil_app', c.oid, 'DELETE'), has_table_privilege('vigil_app', c.oid, 'TRUNCATE'),
			has_column_privilege('vigil_app', c.oid, a.attnum, 'UPDATE'), has_table_privilege('vigil_app', c.oid, 'INSERT')
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_attribute a ON a.attrelid = c.oid
		WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname LIKE 'audit\_%' AND a.attnum > 0 AND NOT a.attisdropped`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	tables := map[string]bool{}
	for rows.Next() {
		var table, col string
		var del, trunc, upd, ins bool
		if err := rows.Scan(&table, &col, &del, &trunc, &upd, &ins); err != nil {
			t.Fatal(err)
		}
		tables[table] = true
		if del || trunc {
			t.Errorf("vigil_app may DELETE (%v) or TRUNCATE (%v) %s", del, trunc, table)
		}
		if upd && !settable[table+"."+col] {
			t.Errorf("vigil_app may UPDATE %s.%s", table, col)
		}
		if !ins {
			t.Errorf("vigil_app may not INSERT into %s", table)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !tables["audit_events"] || !tables["audit_checkpoints"] {
		t.Errorf("catalogue check saw tables %v", tables)
	}
}
