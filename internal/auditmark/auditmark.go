// Package auditmark is the one mark, carried in a request's context, that says "this
// request's audit event is already recorded by its handler". The server's state-change audit
// middleware puts a fresh mark on every request (Track); a handler whose domain recorded the
// action's event — in the action's own transaction, or with Recorder.RecordNow for a refusal
// — sets it (Set) once that event is committed; the middleware and the server's error handler
// then add no generic event of their own. So each action yields exactly one audit event,
// whichever layer records it (server.Audited and the portal both set this same mark).
//
// Set it only after the event is committed and only on a path that really recorded one: a
// request marked without an event is missing from the trail.
package auditmark

import (
	"context"
	"sync/atomic"
)

type key struct{}

type mark struct{ set atomic.Bool }

// Track returns ctx carrying a fresh, unset mark. A context derived from it carries the same
// mark. Tracking again gives a new mark (the old one is no longer seen).
func Track(ctx context.Context) context.Context {
	return context.WithValue(ctx, key{}, &mark{})
}

// Set marks the request of ctx as audited by its handler. Without a tracked mark (a handler
// run outside the server's middleware, a test) it does nothing and reports false.
func Set(ctx context.Context) bool {
	m, _ := ctx.Value(key{}).(*mark)
	if m == nil {
		return false
	}
	m.set.Store(true)
	return true
}

// IsSet reports whether the request of ctx was marked audited by its handler.
func IsSet(ctx context.Context) bool {
	m, _ := ctx.Value(key{}).(*mark)
	return m != nil && m.set.Load()
}

// Tracked reports whether ctx carries a mark at all (the middleware is in front).
func Tracked(ctx context.Context) bool {
	_, ok := ctx.Value(key{}).(*mark)
	return ok
}
