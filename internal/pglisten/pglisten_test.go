package pglisten_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/internal/pglisten"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// recorder collects what a handler is told, for the test goroutine.
type recorder struct {
	notes     chan string
	listening chan struct{}
}

func newRecorder() *recorder {
	return &recorder{notes: make(chan string, 100), listening: make(chan struct{}, 100)}
}

func (r *recorder) handler(prefix string) pglisten.Handler {
	return pglisten.Handler{
		Notify:    func(p string) { r.notes <- prefix + p },
		Listening: func() { r.listening <- struct{}{} },
	}
}

func (r *recorder) waitListening(t *testing.T) {
	t.Helper()
	select {
	case <-r.listening:
	case <-time.After(15 * time.Second):
		t.Fatal("Listening was not called")
	}
}

func (r *recorder) want(t *testing.T, want ...string) {
	t.Helper()
	got := map[string]bool{}
	deadline := time.After(15 * time.Second)
	for len(got) < len(want) {
		select {
		case n := <-r.notes:
			got[n] = true
		case <-deadline:
			t.Fatalf("got notifications %v, want %v", got, want)
		}
	}
	for _, w := range want {
		if !got[w] {
			t.Fatalf("got notifications %v, want %v", got, want)
		}
	}
}

func notify(t *testing.T, pool *pgxpool.Pool, channel, payload string) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), `SELECT pg_notify($1, $2)`, channel, payload); err != nil {
		t.Fatal(err)
	}
}

// listeners returns the backends of the test's database whose last statement was a LISTEN
// (a listening connection; the pool's connections never LISTEN).
func listeners(t *testing.T, pool *pgxpool.Pool) []int32 {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT pid FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ILIKE 'listen %' ORDER BY pid`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var pids []int32
	for rows.Next() {
		var pid int32
		if err := rows.Scan(&pid); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return pids
}

func start(t *testing.T, l *pglisten.Listener) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	return func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after its context ended")
		}
	}
}

// Verifies: REQ-HA-050
// Several components on several channels share one connection: each gets its channel's
// notifications, every Listening is called once LISTEN took effect, and a second Run is refused.
func TestListenerChannelsShareOneConnection(t *testing.T) {
	pool := testdb.New(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	l := pglisten.New(pool, quiet)
	a, b := newRecorder(), newRecorder()
	l.Handle("vigil_test_a", a.handler("a:"))
	l.Handle("vigil_test_b", b.handler("b:"))
	l.Handle("vigil_test_c", b.handler("c:")) // one component on two channels
	l.Handle("vigil_test_a", b.handler("a2:"))
	stop := start(t, l)
	a.waitListening(t)
	for range 3 {
		b.waitListening(t)
	}
	if err := l.Run(context.Background()); err == nil {
		t.Error("a second Run was accepted")
	}
	notify(t, pool, "vigil_test_a", "1")
	notify(t, pool, "vigil_test_b", "2")
	notify(t, pool, "vigil_test_c", "3")
	notify(t, pool, "vigil_test_other", "4")
	a.want(t, "a:1")
	b.want(t, "b:2", "c:3", "a2:1")
	if got := listeners(t, pool); len(got) != 1 {
		t.Errorf("listening backends = %v, want one", got)
	}
	if n := l.Connections(); n != 1 {
		t.Errorf("Connections() = %d, want 1", n)
	}
	stop()
	deadline := time.Now().Add(10 * time.Second)
	for len(listeners(t, pool)) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the listening connection outlived Run")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Verifies: REQ-HA-050
// A lost connection (its backend terminated) is re-established: Listening is called again
// (what was announced meanwhile is to be read again) and notifications sent after it arrive.
func TestListenerReconnectsAfterLostConnection(t *testing.T) {
	pool := testdb.New(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	l := pglisten.New(pool, quiet)
	r := newRecorder()
	l.Handle("vigil_test_a", r.handler("a:"))
	l.Handle("vigil_test_b", r.handler("b:"))
	stop := start(t, l)
	defer stop()
	r.waitListening(t)
	r.waitListening(t)
	notify(t, pool, "vigil_test_a", "before")
	r.want(t, "a:before")
	for round := range 2 {
		pids := listeners(t, pool)
		if len(pids) != 1 {
			t.Fatalf("listening backends = %v, want one", pids)
		}
		if _, err := pool.Exec(context.Background(), `SELECT pg_terminate_backend($1)`, pids[0]); err != nil {
			t.Fatal(err)
		}
		r.waitListening(t)
		r.waitListening(t)
		notify(t, pool, "vigil_test_a", "after")
		notify(t, pool, "vigil_test_b", "after")
		r.want(t, "a:after", "b:after")
		if n := l.Connections(); n != int64(round+2) {
			t.Errorf("Connections() = %d, want %d", n, round+2)
		}
	}
}

// Verifies: REQ-HA-050
// A handler added while Run is connected takes effect: the listener listens again (every
// Listening called again) and delivers the new channel's notifications too.
func TestListenerHandleWhileRunning(t *testing.T) {
	pool := testdb.New(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	l := pglisten.New(pool, quiet)
	stop := start(t, l) // no handler yet: waits for one
	defer stop()
	a, b := newRecorder(), newRecorder()
	l.Handle("vigil_test_a", a.handler("a:"))
	a.waitListening(t)
	l.Handle("vigil_test_b", b.handler("b:"))
	b.waitListening(t)
	a.waitListening(t)
	notify(t, pool, "vigil_test_a", "1")
	notify(t, pool, "vigil_test_b", "2")
	a.want(t, "a:1")
	b.want(t, "b:2")
	if got := listeners(t, pool); len(got) != 1 {
		t.Errorf("listening backends = %v, want one", got)
	}
}
