package chain_test

import (
	"context"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// Several processes on one database each serve the log API, but exactly one sequences; when
// it stops, another takes over.
// Verifies: REQ-AUD-005
func TestOneSequencerPerDatabase(t *testing.T) {
	t.Parallel()
	_, url := testdb.NewWithURL(t)
	ctx := context.Background()
	start := func() *chain.Embedded {
		s, err := chain.StartEmbedded(ctx, chain.EmbedConfig{DatabaseURL: url, LeaderRetry: 50 * time.Millisecond})
		if err != nil {
			t.Fatalf("Start() error = %v", err)
		}
		t.Cleanup(func() { _ = s.Close(context.Background()) })
		return s
	}
	a, b := start(), start()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond) // the leader election retries on its own schedule
		}
	}
	waitFor("a sequencer", func() bool { return a.Sequencing() || b.Sequencing() })
	time.Sleep(200 * time.Millisecond) // several retry periods: the other must stay a follower
	if a.Sequencing() == b.Sequencing() {
		t.Fatalf("Sequencing() = %v and %v, want exactly one", a.Sequencing(), b.Sequencing())
	}
	leader, follower := a, b
	if b.Sequencing() {
		leader, follower = b, a
	}
	if err := leader.Close(ctx); err != nil {
		t.Fatalf("Close() error = %v", err)
	}
	waitFor("the follower to take over", follower.Sequencing)
}
