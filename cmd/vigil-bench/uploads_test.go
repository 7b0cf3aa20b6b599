package main

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/internal/testdb"
)

// A short run of the load tool through the whole stack: every upload sent in the window is
// accepted, every accepted upload is stored with its audit event and its ten observations
// and evaluated by the rules engine, the CPU accounting is reported, and the benchmark
// database is dropped afterwards.
// Verifies: REQ-FND-011
func TestBenchUploadsSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole stack")
	}
	ctx := context.Background()
	t.Setenv("VIGIL_DATABASE_URL", testdb.AdminURL())
	benchDBs := func() int {
		conn, err := pgx.Connect(ctx, testdb.AdminURL())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_database WHERE datname LIKE 'vigil\_bench\_%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := benchDBs()
	var out strings.Builder
	err := runBenchUploads(ctx, &out, benchOpts{devices: 20, samples: 10, workers: 4, poolSize: 4,
		rate: 100, duration: 2 * time.Second, warmup: 500 * time.Millisecond})
	if err != nil {
		t.Fatalf("bench uploads: %v\n%s", err, out.String())
	}
	text := out.String()
	m := regexp.MustCompile(`: (\d+) requests, (\d+) accepted \(201\)`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no throughput line in:\n%s", text)
	}
	requests, _ := strconv.Atoi(m[1])
	accepted, _ := strconv.Atoi(m[2])
	// How many fit in the window depends on the machine's load (a busy shared machine may
	// manage a handful): what is asserted is that every one sent was accepted.
	if accepted == 0 || accepted != requests {
		t.Errorf("%d of %d requests accepted in 2 s at 100/s:\n%s", accepted, requests, text)
	}
	s := regexp.MustCompile(`stored: (\d+) upload.accepted audit events, (\d+) observations`).FindStringSubmatch(text)
	if s == nil {
		t.Fatalf("no storage line in:\n%s", text)
	}
	events, _ := strconv.Atoi(s[1])
	obs, _ := strconv.Atoi(s[2])
	if events < accepted || obs != 10*events {
		t.Errorf("stored %d audit events and %d observations for %d uploads accepted in the window (of 10 samples each)", events, obs, accepted)
	}
	r := regexp.MustCompile(`rules: (\d+) patient batches evaluated \((\d+) failed\)`).FindStringSubmatch(text)
	if r == nil {
		t.Fatalf("no rules line in:\n%s", text)
	}
	// A patient's uploads committed in one group are evaluated as one batch: at least one
	// batch, none failed, and the hand-off drained before the report.
	if evaluated, _ := strconv.Atoi(r[1]); evaluated == 0 || r[2] != "0" || strings.Contains(text, "not caught up") {
		t.Errorf("rules evaluated %s patient batches (%s failed) for %d uploads accepted in the window, want all of them, none failed:\n%s", r[1], r[2], accepted, text)
	}
	if !regexp.MustCompile(`CPU per upload: this process [0-9.]+(µs|ms|s) .*PostgreSQL [0-9.]+(ns|µs|ms|s) \(`).MatchString(text) {
		t.Errorf("no CPU accounting with PostgreSQL's share in:\n%s", text)
	}
	if after := benchDBs(); after != before {
		t.Errorf("benchmark databases: %d before, %d after (the run's database was not dropped)", before, after)
	}
}
