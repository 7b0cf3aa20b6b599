// Package schema owns Vigil's PostgreSQL schema: the migrations embedded in the binary, applying
// them, and checking that a database's schema matches the running binary.
//
// Migration files live in migrations/ and are numbered by area so that areas never collide:
// 00001–00099 foundation, 00100–00199 audit (including Trillian's own tables), 00200–00299 keys,
// 00300–00399 clinical core, 00400–00499 devices, 00500–00599 server (portal, sessions).
package schema

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"sort"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
)

//go:embed migrations/*.sql
var migrations embed.FS

// ErrSchemaAhead means the database was migrated by a newer Vigil than this binary: running
// would risk writing data the newer schema does not expect. Upgrade the binary.
var ErrSchemaAhead = errors.New("database schema is newer than this binary")

// ErrSchemaBehind means migrations embedded in this binary have not been applied yet.
// Run `vigil migrate`.
var ErrSchemaBehind = errors.New("database schema is older than this binary")

// Status describes a database's schema relative to this binary.
type Status struct {
	Current int64 // highest applied migration version (0 when none)
	Latest  int64 // highest migration version embedded in this binary
	Pending int   // embedded migrations not yet applied
}

// Check returns nil when every embedded migration is applied and none newer exists; otherwise
// ErrSchemaBehind or ErrSchemaAhead wrapped with the versions.
func (s Status) Check() error {
	switch {
	case s.Current > s.Latest:
		return fmt.Errorf("%w: database at version %d, binary knows up to %d", ErrSchemaAhead, s.Current, s.Latest)
	case s.Pending > 0:
		return fmt.Errorf("%w: %d migration(s) pending (database at %d, binary at %d)", ErrSchemaBehind, s.Pending, s.Current, s.Latest)
	}
	return nil
}

func provider(pool *pgxpool.Pool) (*goose.Provider, *sql.DB, error) {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, nil, fmt.Errorf("open embedded migrations: %w", err)
	}
	db := stdlib.OpenDBFromPool(pool)
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub, goose.WithAllowOutofOrder(true))
	if err != nil {
		_ = db.Close()
		return nil, nil, fmt.Errorf("load migrations: %w", err)
	}
	return p, db, nil
}

// Migrate applies every pending embedded migration, each in its own transaction, and returns
// the versions applied. It refuses (ErrSchemaAhead) to touch a database newer than the binary.
// Concurrent callers are serialized by a PostgreSQL advisory lock.
func Migrate(ctx context.Context, pool *pgxpool.Pool) ([]int64, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate: acquire connection: %w", err)
	}
	defer conn.Release()
	const lockKey = 0x76696769 // "vigi"
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
		return nil, fmt.Errorf("migrate: take advisory lock: %w", err)
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", lockKey) }()

	st, err := Inspect(ctx, pool)
	if err != nil {
		return nil, err
	}
	if st.Current > st.Latest {
		return nil, st.Check()
	}
	p, db, err := provider(pool)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	results, err := p.Up(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	applied := make([]int64, 0, len(results))
	for _, r := range results {
		applied = append(applied, r.Source.Version)
	}
	return applied, nil
}

// Inspect reads the database's migration state without changing anything.
func Inspect(ctx context.Context, pool *pgxpool.Pool) (Status, error) {
	p, db, err := provider(pool)
	if err != nil {
		return Status{}, err
	}
	defer db.Close()
	var st Status
	sources := p.ListSources()
	if len(sources) > 0 {
		st.Latest = sources[len(sources)-1].Version
	}
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass('goose_db_version') IS NOT NULL").Scan(&exists); err != nil {
		return Status{}, fmt.Errorf("inspect schema: %w", err)
	}
	if !exists {
		st.Pending = len(sources)
		return st, nil
	}
	applied := map[int64]bool{}
	rows, err := pool.Query(ctx, "SELECT version_id FROM goose_db_version WHERE is_applied AND version_id > 0")
	if err != nil {
		return Status{}, fmt.Errorf("inspect schema: %w", err)
	}
	for rows.Next() {
		var v int64
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return Status{}, fmt.Errorf("inspect schema: %w", err)
		}
		applied[v] = true
		if v > st.Current {
			st.Current = v
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return Status{}, fmt.Errorf("inspect schema: %w", err)
	}
	for _, s := range sources {
		if !applied[s.Version] {
			st.Pending++
		}
	}
	return st, nil
}

// Fingerprint is a short hash of every embedded migration's name and content. Tests use it to
// name template databases, so a changed migration never reuses a stale template.
func Fingerprint() string {
	h := sha256.New()
	entries, _ := fs.ReadDir(migrations, "migrations")
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, n := range names {
		b, _ := migrations.ReadFile("migrations/" + n)
		h.Write([]byte(n))
		h.Write([]byte{0})
		h.Write(b)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// LatestVersion is the highest migration version embedded in this binary.
func LatestVersion() int64 {
	entries, _ := fs.ReadDir(migrations, "migrations")
	var latest int64
	for _, e := range entries {
		var v int64
		if _, err := fmt.Sscanf(e.Name(), "%d_", &v); err == nil && v > latest {
			latest = v
		}
	}
	return latest
}
