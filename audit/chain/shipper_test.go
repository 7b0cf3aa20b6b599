package chain_test

import (
	"context"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/leaf"
)

func treeSize(t testing.TB, c *rig) uint64 {
	t.Helper()
	r, err := c.log.LatestRoot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return r.Size
}

func countBatches(t testing.TB, c *rig) int {
	t.Helper()
	var n int
	if err := c.pool.QueryRow(context.Background(), "SELECT count(*) FROM audit_batches WHERE leaf_index IS NOT NULL").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// The shipper seals events into batches, each batch one Trillian leaf, and stores every
// event's batch and every batch's leaf index and root.
// Verifies: REQ-AUD-004
func TestShipperIntegratesEventsInBatches(t *testing.T) {
	t.Parallel()
	c := newChain(t)
	ids := c.record(t, 120)
	c.shipAll(t)
	ctx := context.Background()
	var unassigned int
	if err := c.pool.QueryRow(ctx, "SELECT count(*) FROM audit_events WHERE batch_id IS NULL").Scan(&unassigned); err != nil {
		t.Fatal(err)
	}
	if unassigned != 0 {
		t.Errorf("events without batch after shipping = %d, want 0", unassigned)
	}
	nb := countBatches(t, c)
	if nb < 3 { // BatchSize 50
		t.Errorf("batches = %d, want ≥ 3 for %d events", nb, len(ids))
	}
	if got := treeSize(t, c); got != uint64(nb) {
		t.Errorf("Trillian tree size = %d, want %d (one leaf per batch)", got, nb)
	}
	// The leaf stored in Trillian at each index is the batch's leaf.
	vals, err := c.log.Leaves(ctx, 0, int64(nb))
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range vals {
		bl, err := leaf.DecodeBatch(v)
		if err != nil {
			t.Fatalf("leaf %d: %v", i, err)
		}
		var idx int64
		if err := c.pool.QueryRow(ctx, "SELECT leaf_index FROM audit_batches WHERE id = $1", bl.ID[:]).Scan(&idx); err != nil {
			t.Fatalf("batch of leaf %d: %v", i, err)
		}
		if idx != int64(i) {
			t.Errorf("batch %x leaf_index = %d, want %d", bl.ID, idx, i)
		}
	}
	if st := c.shipper.Stats(); st.PendingEvents != 0 || st.Lag() != 0 {
		t.Errorf("Stats() = %+v, want no backlog", st)
	}
}

// A batch submitted again (a retry after a timeout, a restart) never becomes a second leaf.
// Verifies: REQ-AUD-004
func TestRetriedBatchMakesNoDuplicateLeaves(t *testing.T) {
	t.Parallel()
	c := newChain(t)
	c.record(t, 10)
	c.shipAll(t)
	ctx := context.Background()
	nb := countBatches(t, c)
	// Resubmit every batch, twice, as a shipper that lost track of them would.
	rows, err := c.pool.Query(ctx, "SELECT leaf_value FROM audit_batches")
	if err != nil {
		t.Fatal(err)
	}
	var leaves []leaf.Batch
	for rows.Next() {
		var v []byte
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		bl, err := leaf.DecodeBatch(v)
		if err != nil {
			t.Fatal(err)
		}
		leaves = append(leaves, bl)
	}
	rows.Close()
	for range 2 {
		for _, bl := range leaves {
			if err := c.log.Queue(ctx, bl); err != nil {
				t.Fatalf("Queue(retry) error = %v", err)
			}
		}
	}
	if _, err := c.pool.Exec(ctx, "UPDATE audit_batches SET queued_at = NULL"); err != nil {
		t.Fatal(err)
	}
	// A later batch is integrated after the retries, so any duplicate would be in the tree.
	c.record(t, 1)
	c.shipAll(t)
	if got, want := treeSize(t, c), uint64(nb+1); got != want {
		t.Errorf("tree size after retries = %d, want %d", got, want)
	}
}

// With Trillian stopped, events keep being recorded and sealed; nothing is lost, and the
// shipper catches up once Trillian is back.
// Verifies: REQ-AUD-005
func TestTrillianDownNothingLost(t *testing.T) {
	t.Parallel()
	c := newChain(t)
	c.record(t, 5)
	c.shipAll(t)
	addr := c.trill.Addr()
	if err := c.trill.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.record(t, 30)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.shipper.Step(ctx); err == nil {
		t.Fatal("Step() with Trillian down error = nil, want an error")
	}
	st := c.shipper.Stats()
	if st.LastError == "" || st.ConsecutiveFailures == 0 {
		t.Errorf("Stats() with Trillian down = %+v, want LastError and failures", st)
	}
	var total int
	if err := c.pool.QueryRow(ctx, "SELECT count(*) FROM audit_events").Scan(&total); err != nil {
		t.Fatal(err)
	}
	if total != 35 {
		t.Errorf("events recorded with Trillian down = %d, want 35", total)
	}
	c.trill = startTrillian(t, c.url, addr)
	t.Cleanup(func() { _ = c.trill.Close(context.Background()) })
	c.shipAll(t)
	var shipped int
	if err := c.pool.QueryRow(ctx, `SELECT count(*) FROM audit_events e JOIN audit_batches b ON b.id = e.batch_id
		WHERE b.leaf_index IS NOT NULL`).Scan(&shipped); err != nil {
		t.Fatal(err)
	}
	if shipped != 35 {
		t.Errorf("events in the log after catch-up = %d, want 35", shipped)
	}
	_ = chain.ErrLogUnavailable
}
