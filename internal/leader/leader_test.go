package leader_test

import (
	"context"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/internal/leader"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// Of two replicas on one database exactly one leads; when it goes away the other takes over
// at its next step; a second leadership name is independent.
// Verifies: REQ-HA-009
func TestOneLeaderPerDatabase(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	mk := func(name string) *leader.Elector {
		e, err := leader.New(leader.Config{Pool: pool, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close(ctx) })
		return e
	}
	a, b, other := mk("background"), mk("background"), mk("other")
	for _, e := range []*leader.Elector{a, b, other, a, b} {
		if err := e.Step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if !a.Leader() || b.Leader() {
		t.Fatalf("leaders: a=%v b=%v, want a only", a.Leader(), b.Leader())
	}
	if !other.Leader() {
		t.Errorf("another leadership's elector does not lead")
	}
	a.Close(ctx) // a dies: its connection ends, the server releases the lock
	if a.Leader() {
		t.Errorf("a still leads after Close")
	}
	// The server releases the lock when a's backend has exited, a moment after Close.
	for deadline := time.Now().Add(10 * time.Second); !b.Leader() && time.Now().Before(deadline); {
		if err := b.Step(ctx); err != nil {
			t.Fatal(err)
		}
		if !b.Leader() {
			time.Sleep(20 * time.Millisecond) // waiting for the server to end a's session
		}
	}
	if !b.Leader() {
		t.Fatalf("b does not lead within 10 s after a went away")
	}
	if err := a.Step(ctx); err != nil {
		t.Fatal(err)
	}
	if a.Leader() {
		t.Errorf("a leads again while b leads")
	}
}
