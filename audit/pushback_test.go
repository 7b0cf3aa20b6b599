package audit_test

import (
	"errors"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/internal/testclock"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// The global back-pressure refuses new work when the audit log is far behind: a huge
// backlog, or an old one the shipper is failing to move; not the old events a restart finds,
// which a working shipper ships within seconds.
// Verifies: REQ-DEV-041
func TestPushbackPolicy(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name string
		b    audit.Backlog
		want bool
	}{
		{"idle", audit.Backlog{}, false},
		{"small recent backlog", audit.Backlog{PendingEvents: 5000, OldestPendingAge: time.Second}, false},
		{"old backlog after a restart, shipper working", audit.Backlog{PendingEvents: 40, OldestPendingAge: 3 * time.Hour}, false},
		{"old backlog, shipper failing", audit.Backlog{PendingEvents: 40, OldestPendingAge: 11 * time.Minute, ConsecutiveFailures: 3}, true},
		{"old unintegrated batch, shipper failing", audit.Backlog{OldestBatchAge: 11 * time.Minute, ConsecutiveFailures: 1}, true},
		{"recent backlog, shipper failing", audit.Backlog{PendingEvents: 40, OldestPendingAge: time.Minute, ConsecutiveFailures: 9}, false},
		{"huge backlog", audit.Backlog{PendingEvents: 2_000_001, OldestPendingAge: time.Second}, true},
		{"old backlog, no pass for 11 minutes", audit.Backlog{PendingEvents: 40, OldestPendingAge: time.Hour, LastPass: now.Add(-11 * time.Minute)}, true},
		{"old backlog, pass a second ago", audit.Backlog{PendingEvents: 40, OldestPendingAge: time.Hour, LastPass: now.Add(-time.Second)}, false},
	} {
		err := audit.PushbackPolicy{}.Check(c.b, now)
		var pe *audit.PushbackError
		got := err != nil
		if got != c.want || (got && (!errors.Is(err, audit.ErrPushback) || !errors.As(err, &pe) || pe.RetryAfter <= 0)) {
			t.Errorf("%s: Check() = %v; want push back %v (ErrPushback with a Retry-After when refusing)", c.name, err, c.want)
		}
	}
}

// The recorder owns the backlog: what the shipper reports decides Admit, with the policy's
// guidance; a shipper that stops reporting is noticed by the clock alone.
// Verifies: REQ-DEV-041
func TestOutboxAdmit(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	clk := testclock.New(testclock.T0)
	o, err := audit.NewOutbox(audit.Config{Pool: pool, Now: clk.Now, Pushback: audit.PushbackPolicy{RetryAfter: 7 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.Close)
	if err := o.Admit(); err != nil {
		t.Fatalf("Admit() before any report = %v, want nil", err)
	}
	o.ReportBacklog(audit.Backlog{PendingEvents: 40, OldestPendingAge: time.Hour, LastPass: clk.Now()})
	if err := o.Admit(); err != nil {
		t.Fatalf("Admit() with a working shipper = %v, want nil", err)
	}
	clk.Add(11 * time.Minute) // no pass since
	var pe *audit.PushbackError
	if err := o.Admit(); !errors.As(err, &pe) || pe.RetryAfter != 7*time.Second {
		t.Fatalf("Admit() with a stalled shipper = %v, want a PushbackError with RetryAfter 7s", err)
	}
}
