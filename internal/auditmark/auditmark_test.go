package auditmark

import (
	"context"
	"testing"
	"time"
)

// The mark is shared by every context derived from the tracked one (a handler's timeout
// context marks the request the middleware sees), and absent without Track.
// Verifies: REQ-POR-080
func TestMarkSharedByDerivedContexts(t *testing.T) {
	if Set(context.Background()) || IsSet(context.Background()) || Tracked(context.Background()) {
		t.Fatal("an untracked context is marked")
	}
	ctx := Track(context.Background())
	if IsSet(ctx) || !Tracked(ctx) {
		t.Fatal("a fresh mark is set, or not tracked")
	}
	child, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if !Set(child) || !IsSet(ctx) {
		t.Fatal("setting the mark on a derived context is not seen on the tracked one")
	}
	if IsSet(Track(ctx)) {
		t.Fatal("a new Track inherits the old mark")
	}
}
