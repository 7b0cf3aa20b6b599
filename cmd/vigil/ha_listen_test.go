package main

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// listeningBackends returns the backends of pool's database whose last statement was a
// LISTEN: the listening connections (pool connections never LISTEN; a listener's connection
// does nothing else).
func listeningBackends(t *testing.T, pool *pgxpool.Pool) []int32 {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT pid FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ILIKE 'listen %' ORDER BY pid`)
	if err != nil {
		t.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		t.Fatal(err)
	}
	return pids
}

// wantListeners waits until the database has n listening connections, none of them in
// except (connections already cut), and checks that no more appear: each replica holds one,
// shared by all its services (internal/pglisten), whatever it follows.
func wantListeners(t *testing.T, pool *pgxpool.Pool, n int, except []int32) []int32 {
	t.Helper()
	fresh := func() []int32 {
		return slices.DeleteFunc(listeningBackends(t, pool), func(p int32) bool { return slices.Contains(except, p) })
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(fresh()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("listening connections = %v (cut: %v), want %d within 20 s", listeningBackends(t, pool), except, n)
		}
		time.Sleep(50 * time.Millisecond) // the replicas (re)connecting
	}
	time.Sleep(time.Second) // any other listener would have connected by now
	got := listeningBackends(t, pool)
	if len(got) != n || slices.ContainsFunc(got, func(p int32) bool { return slices.Contains(except, p) }) {
		rows, _ := pool.Query(context.Background(), `SELECT pid, application_name, backend_start, client_port, state, query FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid() ORDER BY backend_start`)
		all, _ := pgx.CollectRows(rows, pgx.RowToMap)
		t.Fatalf("listening connections = %v (cut: %v), want %d: one per replica\n%v", got, except, n, all)
	}
	return got
}
