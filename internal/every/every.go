// Package every runs background work at a fixed interval: the one loop of the hourly
// retention passes, the alarm and rule ticks and the audit checkpoints.
package every

import (
	"context"
	"time"
)

// Tick calls fn every interval until ctx ends, the first call one interval from now (call fn
// yourself first for a pass at once). A call that outlasts the interval delays the next one;
// missed ticks are not queued up. fn gets ctx and handles its own errors.
func Tick(ctx context.Context, interval time.Duration, fn func(ctx context.Context)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if ctx.Err() != nil {
				return
			}
			fn(ctx)
		}
	}
}
