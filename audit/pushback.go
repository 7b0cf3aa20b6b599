package audit

import (
	"errors"
	"fmt"
	"time"
)

// ErrPushback means the audit trail is too far behind to take more optional work: the
// caller refuses new input (a device upload) and tells its client to retry later. It is
// returned wrapped in a *PushbackError that says when. Nothing already accepted is ever
// refused: Record and RecordNow always record.
var ErrPushback = errors.New("audit trail is behind: push back")

// PushbackError is ErrPushback with the caller's guidance: retry after RetryAfter.
type PushbackError struct {
	RetryAfter time.Duration
	Reason     string // why, for operators (no PHI)
}

func (e *PushbackError) Error() string {
	return fmt.Sprintf("%v: %s; retry after %s", ErrPushback, e.Reason, e.RetryAfter)
}

// Unwrap returns ErrPushback.
func (e *PushbackError) Unwrap() error { return ErrPushback }

// Backlog is the state of the outbox's drain into the transparency log, as the shipper
// (audit/chain) saw it on its last pass.
type Backlog struct {
	PendingEvents       int64         // in the outbox, not yet sealed into a batch
	OldestPendingAge    time.Duration // age of the oldest of them
	OldestBatchAge      time.Duration // age of the oldest sealed batch not yet in the log
	ConsecutiveFailures int           // failed shipper passes in a row (0: the last one worked)
	LastPass            time.Time     // when the shipper finished its last pass
}

// Lag is how far behind the log is: the age of the oldest event not yet integrated.
func (b Backlog) Lag() time.Duration { return max(b.OldestPendingAge, b.OldestBatchAge) }

// PushbackPolicy says when the backlog is too long. The outbox is the buffer: new work is
// refused only when the log is far behind — more than MaxPending events waiting, or the
// oldest waiting event older than MaxLag while the shipper is failing (Trillian unreachable,
// say) or has not completed a pass for StallAfter. Age alone does not refuse: after a
// restart the events left from before the downtime are old, and a working shipper catches
// up with them within seconds.
type PushbackPolicy struct {
	MaxPending int64         // default 2,000,000 events
	MaxLag     time.Duration // default 10 minutes
	StallAfter time.Duration // default 10 minutes
	RetryAfter time.Duration // the guidance given to clients; default 30 s
}

func (p *PushbackPolicy) setDefaults() {
	if p.MaxPending <= 0 {
		p.MaxPending = 2_000_000
	}
	if p.MaxLag <= 0 {
		p.MaxLag = 10 * time.Minute
	}
	if p.StallAfter <= 0 {
		p.StallAfter = 10 * time.Minute
	}
	if p.RetryAfter <= 0 {
		p.RetryAfter = 30 * time.Second
	}
}

// Check returns nil when the backlog b admits new work at now, else a *PushbackError.
func (p PushbackPolicy) Check(b Backlog, now time.Time) error {
	p.setDefaults()
	stuck := b.ConsecutiveFailures > 0 || (!b.LastPass.IsZero() && now.Sub(b.LastPass) > p.StallAfter)
	switch {
	case b.PendingEvents > p.MaxPending:
		return &PushbackError{RetryAfter: p.RetryAfter, Reason: fmt.Sprintf("%d audit events wait for the log", b.PendingEvents)}
	case b.Lag() > p.MaxLag && stuck:
		return &PushbackError{RetryAfter: p.RetryAfter, Reason: fmt.Sprintf("the audit log is %s behind and its shipper is failing or stalled", b.Lag().Round(time.Second))}
	}
	return nil
}

// ReportBacklog records the backlog the shipper saw on its last pass (audit/chain calls it
// after every pass).
func (o *Outbox) ReportBacklog(b Backlog) {
	o.bmu.Lock()
	o.backlog = b
	o.bmu.Unlock()
}

// Admit reports whether new work may be admitted now: nil, or a *PushbackError (wrapping
// ErrPushback) when the backlog is too long under Config.Pushback. Callers that admit
// optional input (device uploads) ask before accepting it; nothing else is ever refused.
func (o *Outbox) Admit() error {
	o.bmu.Lock()
	b := o.backlog
	o.bmu.Unlock()
	return o.cfg.Pushback.Check(b, o.cfg.Now())
}
