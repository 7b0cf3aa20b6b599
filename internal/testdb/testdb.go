// Package testdb gives each test its own PostgreSQL database with Vigil's schema applied, made
// from a template so that packages can test in parallel without sharing state.
//
// The server is found at VIGIL_TEST_DATABASE_URL (default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable). A test that cannot reach it
// fails; it never skips, so a missing database can never look like a green run.
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/internal/pgxuuid"
	"github.com/vigilhealth/vigil/internal/schema"
)

// DefaultURL is the administrative connection used when VIGIL_TEST_DATABASE_URL is unset.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// AdminURL returns the URL of the administrative database tests create their databases from.
func AdminURL() string {
	if u := os.Getenv("VIGIL_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// URLFor returns AdminURL with its database name replaced by name.
func URLFor(name string) (string, error) {
	u, err := url.Parse(AdminURL())
	if err != nil {
		return "", fmt.Errorf("parse VIGIL_TEST_DATABASE_URL: %w", err)
	}
	u.Path = "/" + name
	return u.String(), nil
}

// New creates a fresh database with every migration applied, returns a pool on it, and drops
// the database when the test ends.
func New(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, _ := NewWithURL(t)
	return pool
}

// NewWithURL is New that also returns the database's connection URL, for code under test that
// opens its own connections (a server, an embedded Trillian, a subprocess).
func NewWithURL(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tmpl, err := ensureTemplate(ctx)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	name := "vigil_t_" + randomHex(8)
	if err := adminExec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", name, tmpl)); err != nil {
		t.Fatalf("testdb: create database: %v", err)
	}
	dbURL, err := URLFor(name)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	pcfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	pcfg.AfterConnect = pgxuuid.AfterConnect // as the server's pools do
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Fatalf("testdb: connect: %v", err)
	}
	t.Cleanup(func() {
		pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := adminExec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", name)); err != nil {
			t.Logf("testdb: drop %s: %v", name, err)
		}
	})
	return pool, dbURL
}

// NewEmpty creates a fresh database with no schema at all (for migration tests) and returns
// its URL; it is dropped when the test ends.
func NewEmpty(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := "vigil_t_" + randomHex(8)
	if err := adminExec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("testdb: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := adminExec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", name)); err != nil {
			t.Logf("testdb: drop %s: %v", name, err)
		}
	})
	u, err := URLFor(name)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	return u
}

// ensureTemplate makes (once per migration fingerprint, across all test processes) a template
// database with every migration applied, and returns its name.
func ensureTemplate(ctx context.Context) (string, error) {
	name := "vigil_tmpl_" + schema.Fingerprint()
	conn, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		return "", fmt.Errorf("connect to %s: %w (is PostgreSQL running? `make test` starts it)", redact(AdminURL()), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// Serialize template creation across concurrently running test binaries.
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(7466)"); err != nil {
		return "", fmt.Errorf("lock template: %w", err)
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(7466)") }()

	var ready bool
	err = conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1 AND datistemplate)", name).Scan(&ready)
	if err != nil {
		return "", fmt.Errorf("look up template: %w", err)
	}
	if ready {
		return name, nil
	}
	// A half-made template from a crashed run is dropped and made again.
	if _, err := conn.Exec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", name)); err != nil {
		return "", fmt.Errorf("drop stale template: %w", err)
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("create template: %w", err)
	}
	u, err := URLFor(name)
	if err != nil {
		return "", err
	}
	pool, err := pgxpool.New(ctx, u)
	if err != nil {
		return "", fmt.Errorf("connect to template: %w", err)
	}
	_, merr := schema.Migrate(ctx, pool)
	pool.Close()
	if merr != nil {
		return "", fmt.Errorf("migrate template: %w", merr)
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER DATABASE %s WITH is_template true ALLOW_CONNECTIONS false", name)); err != nil {
		return "", fmt.Errorf("mark template: %w", err)
	}
	return name, nil
}

func adminExec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		return fmt.Errorf("connect to %s: %w", redact(AdminURL()), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return strings.ToLower(hex.EncodeToString(b))
}
