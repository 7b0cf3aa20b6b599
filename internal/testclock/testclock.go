// Package testclock is the one controlled clock of Vigil's tests: services take a
// `Now func() time.Time` in their Config, and tests hand them Clock.Now and move time with
// Set, Add or Advance — never Sleep.
package testclock

import (
	"sync"
	"time"
)

// T0 is the usual start of a test's clock: a fixed instant, so that tests do not depend on
// when they run.
var T0 = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

// Clock is a controlled clock, safe for concurrent use.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// New returns a clock stopped at t.
func New(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Set moves the clock to t (forward or back).
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// Add moves the clock by d.
func (c *Clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// Advance is Add (the name some tests read better with).
func (c *Clock) Advance(d time.Duration) { c.Add(d) }
