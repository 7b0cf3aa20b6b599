package chain_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// Two replicas' checkpointers on one database, checkpointing at the same moment, issue one
// checkpoint per log root, never two (the second finds the first's).
// Verifies: REQ-HA-009
func TestCheckpointOncePerDatabase(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	rec := audittest.Recorder(t, pool, nil)
	a := chaintest.Start(t, pool, url, rec)
	b := chaintest.Start(t, pool, url, rec)
	ctx := context.Background()
	for round := range 6 {
		if _, err := rec.RecordNow(ctx, audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "test"}, Action: "test.round",
			Object: audit.Object{Type: "round", ID: "r"}, Outcome: audit.OutcomeSuccess, Payload: map[string]any{"round": round}}); err != nil {
			t.Fatal(err)
		}
		shipOnly(t, a)
		var wg sync.WaitGroup
		for _, s := range []*chain.Service{a, b, a, b, a, b, a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := s.CheckpointNow(ctx); err != nil {
					t.Errorf("CheckpointNow() = %v", err)
				}
			}()
		}
		wg.Wait()
	}
	var dup int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM (SELECT tree_size FROM audit_checkpoints GROUP BY tree_size HAVING count(*) > 1) d`).Scan(&dup); err != nil {
		t.Fatal(err)
	}
	if dup != 0 {
		t.Errorf("%d log sizes checkpointed more than once, want 0", dup)
	}
}

// shipOnly integrates every pending event in the log without checkpointing.
func shipOnly(t *testing.T, svc *chain.Service) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := svc.Shipper().Step(context.Background())
		st := svc.Shipper().Stats()
		if err == nil && st.PendingEvents == 0 && st.UnintegratedBatches == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("shipper did not catch up: %+v (last error %v)", st, err)
		}
		time.Sleep(10 * time.Millisecond) // waiting for Trillian's sequencer
	}
}
