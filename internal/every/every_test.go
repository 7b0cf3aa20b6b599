package every

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// The background passes (retention, alarm and rule ticks, checkpoints) run again and again
// at their interval, not at once, and stop when their context ends.
// Verifies: REQ-FND-009
func TestTick(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var n atomic.Int64
	done := make(chan struct{})
	start := time.Now()
	var first atomic.Int64
	go func() {
		defer close(done)
		Tick(ctx, 20*time.Millisecond, func(context.Context) {
			if n.Add(1) == 1 {
				first.Store(int64(time.Since(start)))
			}
		})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for n.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("fn called %d times in 10 s at a 20 ms interval", n.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if d := time.Duration(first.Load()); d < 20*time.Millisecond {
		t.Errorf("first call after %v, want one interval (20 ms) from the start", d)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Tick did not return after its context ended")
	}
	after := n.Load()
	time.Sleep(60 * time.Millisecond)
	if n.Load() != after {
		t.Errorf("fn called after Tick returned")
	}
}
