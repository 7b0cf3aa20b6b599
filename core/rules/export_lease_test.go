package rules

import (
	"context"
	"time"
)

// WaitTakeOver waits for the take-over rebuilds started by Leases.Step (tests).
func (e *Engine) WaitTakeOver() { e.waitRebuilds() }

// AnnounceNow announces this replica's inbox progress at once (tests).
func (e *Engine) AnnounceNow(ctx context.Context) {
	e.ls.drain.Lock()
	defer e.ls.drain.Unlock()
	e.ls.annAt = time.Time{}
	e.announce(ctx)
}

// KnowsOwner reports whether an owner announced bucket to this replica (tests).
func (e *Engine) KnowsOwner(bucket int) bool {
	e.ls.bp.mu.Lock()
	defer e.ls.bp.mu.Unlock()
	_, ok := e.ls.bp.owner[bucket]
	return ok
}

// DrainNew drains as RunInbox does: only the rows committed since the last drain (tests).
func (e *Engine) DrainNew(ctx context.Context) (int, error) { return e.drainInbox(ctx, false) }
