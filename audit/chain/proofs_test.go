package chain_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/internal/pgxuuid"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// tableReads counts the queries sent on a pool that read audit_events and audit_batches.
type tableReads struct{ events, batches atomic.Int64 }

func (q *tableReads) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if strings.Contains(d.SQL, "FROM audit_events") {
		q.events.Add(1)
	}
	if strings.Contains(d.SQL, "FROM audit_batches") {
		q.batches.Add(1)
	}
	return ctx
}

func (q *tableReads) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// A page of proofs (the audit browser's) reads its events in one query and their batches in
// one more, whatever the number of events and batches; the proofs are those Event gives one
// by one, in the order asked (a repeated id included), and all verify.
// Verifies: REQ-POR-050
func TestEventProofsOneQueryPerPage(t *testing.T) {
	t.Parallel()
	c := &rig{}
	_, c.url = testdb.NewWithURL(t)
	pc, err := pgxpool.ParseConfig(c.url)
	if err != nil {
		t.Fatal(err)
	}
	reads := &tableReads{}
	pc.AfterConnect, pc.ConnConfig.Tracer = pgxuuid.AfterConnect, reads
	if c.pool, err = pgxpool.NewWithConfig(context.Background(), pc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.pool.Close)
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

	raw := c.record(t, 40) // six batches of at most 7
	c.shipAll(t)
	if _, err := svc.CheckpointNow(context.Background()); err != nil {
		t.Fatal(err)
	}
	var ids []uuid.UUID
	for i := len(raw) - 1; i >= 0; i-- { // newest first, as the browser lists them
		ids = append(ids, uuid.MustParse(raw[i]))
	}
	ids = append(ids, ids[3]) // a repeat
	e0, b0 := reads.events.Load(), reads.batches.Load()
	ps, err := svc.EventProofs(context.Background(), ids)
	if err != nil || len(ps) != len(ids) {
		t.Fatalf("EventProofs() = %d proofs, %v; want %d", len(ps), err, len(ids))
	}
	if e, b := reads.events.Load()-e0, reads.batches.Load()-b0; e != 1 || b != 1 {
		t.Errorf("EventProofs(%d events) read audit_events %d times and audit_batches %d times, want 1 and 1", len(ids), e, b)
	}
	batches := map[uuid.UUID]bool{}
	for i, id := range ids {
		one, err := svc.Event(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if ps[i].Event.ID != id || ps[i].Status != "proven" || !proofsEqual(one, ps[i]) {
			t.Errorf("EventProofs()[%d] = %s %s, want the proof Event(%s) gives", i, ps[i].Event.ID, ps[i].Status, id)
		}
		batches[ps[i].Batch.ID] = true
	}
	if len(batches) < 5 {
		t.Errorf("the events are in %d batches, want at least 5", len(batches))
	}
	for i, err := range chain.VerifyEventProofs(ps, svc.VerifierKey()) {
		if err != nil {
			t.Errorf("VerifyEventProofs()[%d] = %v", i, err)
		}
	}
	if ps, err := svc.EventProofs(context.Background(), nil); err != nil || len(ps) != 0 {
		t.Errorf("EventProofs(none) = %v, %v; want none", ps, err)
	}
}

func proofsEqual(a, b chain.EventProof) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}
