package chain_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// newService is a chain driven through chain.Service (embedded Trillian, idle workers: the
// test drives shipper and checkpointer).
func newService(t testing.TB) (*rig, *chain.Service) {
	t.Helper()
	c := &rig{}
	c.pool, c.url = testdb.NewWithURL(t)
	c.rec = audittest.Recorder(t, c.pool, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc, err := chain.OpenIdle(ctx, chain.Config{Pool: c.pool, Recorder: c.rec, DatabaseURL: c.url, Signer: newSigner(t),
		EventKeys: c.rec.EventKeys(), BatchSize: 7, SequencerInterval: 20 * time.Millisecond, Logger: quiet})
	if err != nil {
		t.Fatalf("OpenIdle() error = %v", err)
	}
	t.Cleanup(func() { _ = svc.Close(context.Background()) })
	c.log, c.shipper = svc.Log(), svc.Shipper()
	return c, svc
}

func verify(t testing.TB, svc *chain.Service) *chain.Report {
	t.Helper()
	r, err := svc.Verify(context.Background())
	if err != nil {
		t.Fatalf("Verify() error = %v", err)
	}
	return r
}

func hasFinding(r *chain.Report, kind, eventID string) bool {
	for _, f := range r.Findings {
		if f.Kind == kind && (eventID == "" || f.EventID == eventID) {
			return true
		}
	}
	return false
}

// A clean trail verifies, every event proven under the checkpoint.
// Verifies: REQ-AUD-007, REQ-AUD-006
func TestVerifyCleanTrail(t *testing.T) {
	t.Parallel()
	c, svc := newService(t)
	ids := c.record(t, 30)
	c.shipAll(t)
	ctx := context.Background()
	cp, err := svc.CheckpointNow(ctx)
	if err != nil {
		t.Fatalf("CheckpointNow() error = %v", err)
	}
	if cp.Size == 0 || !strings.HasPrefix(cp.Note, svc.Origin()+"\n") {
		t.Fatalf("CheckpointNow() = size %d, note %q", cp.Size, cp.Note)
	}
	// A second checkpoint after growth is proven consistent with the first.
	c.record(t, 9)
	c.shipAll(t)
	cp2, err := svc.CheckpointNow(ctx)
	if err != nil || cp2.Size <= cp.Size || cp2.PrevSize != cp.Size || len(cp2.ConsistencyProof) == 0 {
		t.Fatalf("CheckpointNow() second = %+v, %v; want size > %d with a consistency proof", cp2, err, cp.Size)
	}
	r := verify(t, svc)
	if !r.OK || r.ProvenEvents != int64(len(ids)+9) || r.Checkpoints != 2 {
		var b bytes.Buffer
		_ = r.WriteText(&b)
		t.Fatalf("Verify() of a clean trail:\n%s\nwant OK with %d proven events", b.String(), len(ids)+9)
	}
	if _, err := svc.Ready(ctx); err != nil {
		t.Errorf("Ready() = %v, want nil", err)
	}
}

// Each tampering with the outbox is found, and the event named.
// Verifies: REQ-AUD-007
func TestVerifyDetectsTampering(t *testing.T) {
	t.Parallel()
	type tamper struct {
		name string
		// do tampers and returns the event id the finding must name ("" = any).
		do   func(t *testing.T, c *rig, ids []string) string
		kind string
	}
	exec := func(t *testing.T, c *rig, sql string, args ...any) {
		t.Helper()
		if _, err := c.pool.Exec(context.Background(), sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	for _, tc := range []tamper{
		{"row updated (metadata)", func(t *testing.T, c *rig, ids []string) string {
			exec(t, c, "UPDATE audit_events SET action = 'test.innocent' WHERE id = $1", ids[3])
			return ids[3]
		}, chain.FindingModified},
		{"row updated (plaintext id)", func(t *testing.T, c *rig, ids []string) string {
			exec(t, c, "UPDATE audit_events SET object_id = 'someone-else' WHERE id = $1", ids[5])
			return ids[5]
		}, chain.FindingModified},
		{"row updated (time)", func(t *testing.T, c *rig, ids []string) string {
			exec(t, c, "UPDATE audit_events SET occurred_at = occurred_at - interval '1 day' WHERE id = $1", ids[8])
			return ids[8]
		}, chain.FindingModified},
		{"row reset to pending and shipped again", func(t *testing.T, c *rig, ids []string) string {
			exec(t, c, "UPDATE audit_events SET batch_id = NULL, batch_index = NULL WHERE id = $1", ids[4])
			c.shipAll(t)
			return ids[4]
		}, chain.FindingModified},
		{"row deleted", func(t *testing.T, c *rig, ids []string) string {
			exec(t, c, "DELETE FROM audit_events WHERE id = $1", ids[7])
			return ids[7]
		}, chain.FindingDeleted},
		{"row inserted into a logged batch", func(t *testing.T, c *rig, ids []string) string {
			exec(t, c, `INSERT INTO audit_events (id, occurred_at, recorded_at, actor_kind, actor_id, actor_auth, action, object_type,
				object_id, outcome, reason, request_id, source_addr, payload, salt, actor_id_c, object_id_c, request_id_c,
				source_addr_c, payload_commitment, batch_id, batch_index)
				SELECT '01900000-0000-7000-8000-000000000001', occurred_at, recorded_at, actor_kind, actor_id, actor_auth, action,
				object_type, object_id, outcome, reason, request_id, source_addr, payload, salt, actor_id_c, object_id_c,
				request_id_c, source_addr_c, payload_commitment, batch_id, batch_index FROM audit_events WHERE id = $1`, ids[2])
			return "01900000-0000-7000-8000-000000000001"
		}, chain.FindingInserted},
		{"row inserted back-dated, never logged", func(t *testing.T, c *rig, ids []string) string {
			exec(t, c, `INSERT INTO audit_events (id, occurred_at, recorded_at, actor_kind, actor_id, actor_auth, action,
				object_type, object_id, outcome, reason, request_id, source_addr, payload, salt, actor_id_c, object_id_c,
				request_id_c, source_addr_c, payload_commitment)
				SELECT '01900000-0000-7000-8000-000000000002', occurred_at - interval '1 hour', recorded_at - interval '1 hour',
				actor_kind, actor_id, actor_auth, action, object_type, object_id, outcome, reason, request_id, source_addr,
				payload, salt, actor_id_c, object_id_c, request_id_c, source_addr_c, payload_commitment
				FROM audit_events WHERE id = $1`, ids[2])
			return "01900000-0000-7000-8000-000000000002"
		}, chain.FindingUnauthenticated},
		{"outbox truncated", func(t *testing.T, c *rig, ids []string) string {
			exec(t, c, "TRUNCATE audit_events")
			return ""
		}, chain.FindingTruncated},
		{"outbox and batches truncated", func(t *testing.T, c *rig, ids []string) string {
			exec(t, c, "TRUNCATE audit_events, audit_batches")
			return ""
		}, chain.FindingBatchDeleted},
		{"batch row rewritten", func(t *testing.T, c *rig, ids []string) string {
			exec(t, c, `UPDATE audit_batches SET event_hashes = overlay(event_hashes placing '\x00'::bytea from 1 for 1)
				WHERE id = (SELECT batch_id FROM audit_events WHERE id = $1)`, ids[0])
			return ""
		}, chain.FindingBatchModified},
		{"checkpoint forged", func(t *testing.T, c *rig, ids []string) string {
			exec(t, c, `UPDATE audit_checkpoints SET note = regexp_replace(note, E'\n[0-9]+\n', E'\n99\n')`)
			return ""
		}, chain.FindingCheckpointInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each case on its own database and chain
			c, svc := newService(t)
			ids := c.record(t, 20)
			c.shipAll(t)
			if _, err := svc.CheckpointNow(context.Background()); err != nil {
				t.Fatal(err)
			}
			if r := verify(t, svc); !r.OK {
				t.Fatalf("Verify() before tampering: %+v", r.Findings)
			}
			want := tc.do(t, c, ids)
			r := verify(t, svc)
			if r.OK || !hasFinding(r, tc.kind, want) {
				j, _ := json.MarshalIndent(r.Findings, "", " ")
				t.Errorf("Verify() after %s: findings %s, want %s naming %q", tc.name, j, tc.kind, want)
			}
		})
	}
}

// A log that no longer extends the last checkpoint is a loud incident: not stored, audited,
// readiness red, and verify reports the fork.
// Verifies: REQ-AUD-006, REQ-AUD-007
func TestInconsistentLogIsAnIncident(t *testing.T) {
	t.Parallel()
	c, svc := newService(t)
	c.record(t, 10)
	c.shipAll(t)
	ctx := context.Background()
	cp, err := svc.CheckpointNow(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Make the stored checkpoint claim a different history: the log now looks forked.
	if _, err := c.pool.Exec(ctx, `UPDATE audit_checkpoints SET root_hash = sha256(root_hash) WHERE id = $1`, cp.ID); err != nil {
		t.Fatal(err)
	}
	c.record(t, 10)
	c.shipAll(t)
	if _, err := svc.CheckpointNow(ctx); !errors.Is(err, chain.ErrInconsistent) {
		t.Fatalf("CheckpointNow() on a forked log error = %v, want ErrInconsistent", err)
	}
	if _, err := svc.Ready(ctx); !errors.Is(err, chain.ErrNotReady) {
		t.Errorf("Ready() after an inconsistency = %v, want ErrNotReady", err)
	}
	var n int
	if err := c.pool.QueryRow(ctx, `SELECT count(*) FROM audit_events WHERE action = 'audit.log.inconsistent'`).Scan(&n); err != nil || n != 1 {
		t.Errorf("audit.log.inconsistent events = %d, %v, want 1", n, err)
	}
	r := verify(t, svc)
	if !hasFinding(r, chain.FindingIncident, "") {
		t.Errorf("Verify() findings = %+v, want an incident", r.Findings)
	}
	// Retrying does not pile up incidents; resolving one is itself audited.
	if _, err := svc.CheckpointNow(ctx); !errors.Is(err, chain.ErrInconsistent) {
		t.Fatalf("CheckpointNow() again error = %v, want ErrInconsistent", err)
	}
	inc, err := svc.Incidents(ctx)
	if err != nil || len(inc) != 1 {
		t.Fatalf("Incidents() = %+v, %v; want exactly one", inc, err)
	}
	by := audit.Actor{Kind: audit.ActorUser, ID: "operator-1", AuthMethod: "local-shell"}
	if err := svc.ResolveIncident(ctx, inc[0].ID, by, "restored from backup"); err != nil {
		t.Fatalf("ResolveIncident() error = %v", err)
	}
	if err := svc.ResolveIncident(ctx, inc[0].ID, by, "twice"); !errors.Is(err, chain.ErrIncidentNotFound) {
		t.Errorf("ResolveIncident(resolved) error = %v, want ErrIncidentNotFound", err)
	}
	if err := c.pool.QueryRow(ctx, `SELECT count(*) FROM audit_events WHERE action = 'audit.incident.resolved'`).Scan(&n); err != nil || n != 1 {
		t.Errorf("audit.incident.resolved events = %d, %v, want 1", n, err)
	}
}

// Erasing an event's identifiers, payload and salt (a retention policy) leaves every proof
// valid: the log holds commitments only.
// Verifies: REQ-AUD-003
func TestErasureKeepsProofsValid(t *testing.T) {
	t.Parallel()
	c, svc := newService(t)
	ids := c.record(t, 10)
	c.shipAll(t)
	ctx := context.Background()
	if _, err := svc.CheckpointNow(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.pool.Exec(ctx, `UPDATE audit_events SET actor_id = NULL, object_id = NULL, request_id = NULL,
		source_addr = NULL, payload = NULL, salt = NULL WHERE id = ANY($1)`, ids[:5]); err != nil {
		t.Fatal(err)
	}
	// Seven years later (past the retention age) the erasure is what retention does.
	later := time.Now().Add(7 * 365 * 24 * time.Hour)
	r, err := chain.Verify(ctx, chain.VerifyConfig{Pool: c.pool, Log: svc.Log(), VerifierKey: svc.VerifierKey(), Origin: svc.Origin(),
		Keys: audit.NewSessionKeys(c.rec.EventKeys()), PendingGrace: 10 * 365 * 24 * time.Hour, Now: func() time.Time { return later }})
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK || r.ProvenEvents != 10 {
		t.Errorf("Verify() after erasure = ok %v, proven %d, findings %+v; want OK, 10", r.OK, r.ProvenEvents, r.Findings)
	}
}

// While the log is unreachable the backlog and its lag show in Stats, and readiness turns red
// once the lag exceeds MaxLag (controlled clock); the events stay in the outbox.
// Verifies: REQ-AUD-005
func TestReadinessReportsLagWhileLogDown(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	ctx := context.Background()
	signer := newSigner(t)
	// First start creates the tree; then the embedded Trillian goes away for good.
	first, err := chain.OpenIdle(ctx, chain.Config{Pool: pool, Recorder: audittest.Recorder(t, pool, nil), DatabaseURL: url, Signer: signer, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	dead := first.TrillianAddr()
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	clock := func() time.Time { return now }
	rec := audittest.Recorder(t, pool, nil)
	svc, err := chain.OpenIdle(ctx, chain.Config{Pool: pool, Recorder: rec, TrillianAddr: dead, Signer: signer, Logger: quiet,
		MaxLag: time.Minute, Now: clock})
	if err != nil {
		t.Fatalf("OpenIdle(log down, tree known) error = %v", err)
	}
	t.Cleanup(func() { _ = svc.Close(context.Background()) })
	c := &rig{pool: pool, url: url, rec: rec, log: svc.Log(), shipper: svc.Shipper()}
	c.record(t, 5)
	step := func() error { // each pass with its own deadline: a loaded machine is slow
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		_, err := svc.Shipper().Step(sctx)
		return err
	}
	if err := step(); err == nil {
		t.Fatal("Step() with the log down error = nil")
	}
	if _, err := svc.Ready(ctx); err != nil {
		t.Errorf("Ready() right after the outage began = %v, want nil (lag below MaxLag)", err)
	}
	now = now.Add(3 * time.Minute)
	_ = step()
	detail, err := svc.Ready(ctx)
	if !errors.Is(err, chain.ErrNotReady) {
		t.Fatalf("Ready() after 3 min of outage = %v, want ErrNotReady", err)
	}
	st := detail.(chain.Stats)
	if st.UnintegratedBatches == 0 || st.Lag() < 2*time.Minute || st.ConsecutiveFailures < 2 {
		t.Errorf("Stats() during outage = %+v, want batches waiting, lag ≥ 2m, failures", st)
	}
}

// Close stops every goroutine the chain and the recorder started: embedded Trillian,
// sequencer, shipper, checkpointer, the recorder's group committer.
// Verifies: REQ-AUD-005
func TestCloseLeavesNoGoroutine(t *testing.T) {
	// Not parallel: it counts the process's goroutines (parallel tests wait until it is done).
	pool, url := testdb.NewWithURL(t)
	ctx := context.Background()
	if err := pool.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	rec, err := audit.NewOutbox(audit.Config{Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := chain.Open(ctx, chain.Config{Pool: pool, Recorder: rec, Backlog: rec, EventKeys: rec.EventKeys(), DatabaseURL: url, Signer: newSigner(t), Logger: quiet,
		Window: 10 * time.Millisecond, CheckpointInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rec.RecordNow(ctx, testEvent()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // let the workers run a few passes
	if err := svc.Close(ctx); err != nil {
		t.Fatalf("Close() error = %v", err)
	}
	rec.Close()
	deadline := time.Now().Add(20 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("goroutines after Close = %d, before Open %d:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond) // exiting goroutines finish asynchronously
	}
}

// Verify run while events are recorded and shipped finds nothing: it reads one snapshot,
// so batches sealed meanwhile cannot look like tampering.
// Verifies: REQ-AUD-007
func TestVerifyWhileShipping(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	ctx := context.Background()
	rec := audittest.Recorder(t, pool, nil)
	svc, err := chain.Open(ctx, chain.Config{Pool: pool, Recorder: rec, EventKeys: rec.EventKeys(), DatabaseURL: url, Signer: newSigner(t), Logger: quiet,
		Window: 5 * time.Millisecond, CheckpointInterval: 50 * time.Millisecond, SequencerInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close(context.Background()) })
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		c := &rig{pool: pool, rec: rec}
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			c.record(t, 5)
		}
	}()
	for i := range 15 {
		r, err := svc.Verify(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !r.OK {
			close(stop)
			<-done
			t.Fatalf("Verify() #%d while shipping: findings %+v", i, r.Findings)
		}
	}
	close(stop)
	<-done
}
