package audit_test

import (
	"context"
	"errors"
	"testing"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/internal/testdb"
)

func testEvent() audit.Event {
	return audit.Event{
		Actor:   audit.Actor{Kind: audit.ActorService, ID: "test", AuthMethod: "internal"},
		Action:  "test.action",
		Object:  audit.Object{Type: "thing", ID: "1"},
		Outcome: audit.OutcomeSuccess,
		Payload: map[string]any{"k": "v"},
	}
}

// An action and its event commit together, or roll back together.
// Verifies: REQ-AUD-002
func TestRecordCommitsAndRollsBackWithAction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.New(t)
	rec := audittest.Recorder(t, pool, nil)
	if _, err := pool.Exec(ctx, "CREATE TABLE action_under_test (id int)"); err != nil {
		t.Fatal(err)
	}
	for _, commit := range []bool{true, false} {
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO action_under_test VALUES (1)"); err != nil {
			t.Fatal(err)
		}
		id, err := rec.Record(ctx, tx, testEvent())
		if err != nil {
			t.Fatalf("Record() error = %v", err)
		}
		if commit {
			err = tx.Commit(ctx)
		} else {
			err = tx.Rollback(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
		var n int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM audit_events WHERE id = $1", id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		want := 0
		if commit {
			want = 1
		}
		if n != want {
			t.Errorf("commit=%v: events with id %s = %d, want %d", commit, id, n, want)
		}
	}
}

// A malformed event is refused and nothing is written.
// Verifies: REQ-AUD-001
func TestRecordRejectsMalformedEvent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.New(t)
	rec := audittest.Recorder(t, pool, nil)
	bad := testEvent()
	bad.Action = "NotDotted"
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := rec.Record(ctx, tx, bad); !errors.Is(err, audit.ErrInvalidEvent) {
		t.Fatalf("Record(action %q) error = %v, want ErrInvalidEvent", bad.Action, err)
	}
}

// RecordMany writes a whole slice with one COPY in the caller's transaction, or nothing when
// any event is malformed.
// Verifies: REQ-AUD-001, REQ-AUD-002
func TestRecordManyAllOrNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.New(t)
	rec := audittest.Recorder(t, pool, nil)
	evs := make([]audit.Event, 250)
	for i := range evs {
		evs[i] = testEvent()
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := rec.RecordMany(ctx, tx, evs)
	if err != nil {
		t.Fatalf("RecordMany(250) error = %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM audit_events WHERE id = ANY($1)", ids).Scan(&n); err != nil || n != len(evs) {
		t.Fatalf("events written by RecordMany = %d, %v, want %d", n, err, len(evs))
	}
	bad := append([]audit.Event{testEvent()}, testEvent())
	bad[1].Outcome = "maybe"
	tx, err = pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := rec.RecordMany(ctx, tx, bad); !errors.Is(err, audit.ErrInvalidEvent) {
		t.Fatalf("RecordMany(one malformed) error = %v, want ErrInvalidEvent", err)
	}
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM audit_events").Scan(&n); err != nil || n != len(evs) {
		t.Errorf("events after a refused RecordMany = %d, %v, want %d", n, err, len(evs))
	}
}
