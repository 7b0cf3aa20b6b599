package validation

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/internal/schema"
)

// schemaCatalogQuery describes every table, column, index and constraint of the public
// schema in a stable order, so that two databases with the same schema give the same text.
const schemaCatalogQuery = `
SELECT 'column ' || c.table_name || '.' || c.column_name || ' ' || c.data_type || ' ' || c.is_nullable || ' ' || coalesce(c.column_default, '')
  FROM information_schema.columns c WHERE c.table_schema = 'public'
UNION ALL
SELECT 'index ' || indexname || ' ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
  FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
ORDER BY 1`

func catalog(ctx context.Context, pool *pgxpool.Pool) ([]string, error) {
	rows, err := pool.Query(ctx, schemaCatalogQuery)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// withTempDatabase creates an empty database on the server of adminURL, runs f with a pool
// on it, and drops it. Its name starts with vigil_t_ so that a killed run's leftover is
// dropped by the test clean-up (make clean-testdbs).
func withTempDatabase(ctx context.Context, adminURL string, f func(*pgxpool.Pool) error) error {
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connect to the administrative database: %w", err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "vigil_t_validate_" + hex.EncodeToString(b)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		_, _ = admin.Exec(dctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	}()
	u, err := url.Parse(adminURL)
	if err != nil {
		return err
	}
	u.Path = "/" + name
	pool, err := pgxpool.New(ctx, u.String())
	if err != nil {
		return err
	}
	defer pool.Close()
	return f(pool)
}

// migrationsGate applies every embedded migration to an empty database, checks the schema
// is current, reverts them all, applies them again, and compares the two schemas.
func migrationsGate(ctx context.Context, e *env) Result {
	if e.cfg.DatabaseAdminURL == "" {
		return fail("no database", "no administrative database URL was given (VIGIL_TEST_DATABASE_URL)")
	}
	dir, rel, err := e.dir(GateMigrations)
	if err != nil {
		return fail("evidence", err.Error())
	}
	var res Result
	var log []string
	err = withTempDatabase(ctx, e.cfg.DatabaseAdminURL, func(pool *pgxpool.Pool) error {
		up, err := schema.Migrate(ctx, pool)
		if err != nil {
			return fmt.Errorf("up from empty: %w", err)
		}
		log = append(log, fmt.Sprintf("up from empty: %d migrations applied (%d … %d)", len(up), first(up), last(up)))
		st, err := schema.Inspect(ctx, pool)
		if err != nil {
			return err
		}
		if err := st.Check(); err != nil {
			return fmt.Errorf("after up: %w", err)
		}
		log = append(log, fmt.Sprintf("schema current: version %d = the binary's %d", st.Current, st.Latest))
		one, err := catalog(ctx, pool)
		if err != nil {
			return err
		}
		down, err := schema.MigrateDownTo(ctx, pool, 0)
		if err != nil {
			return fmt.Errorf("down to empty: %w", err)
		}
		log = append(log, fmt.Sprintf("down to empty: %d migrations reverted", len(down)))
		if len(down) != len(up) {
			return fmt.Errorf("down reverted %d migrations, up applied %d", len(down), len(up))
		}
		again, err := schema.Migrate(ctx, pool)
		if err != nil {
			return fmt.Errorf("up again: %w", err)
		}
		two, err := catalog(ctx, pool)
		if err != nil {
			return err
		}
		log = append(log, fmt.Sprintf("up again: %d migrations applied", len(again)))
		h1, h2 := digest(one), digest(two)
		log = append(log, "schema digest after first up: "+h1, "schema digest after down and up: "+h2)
		if h1 != h2 {
			for _, d := range diff(one, two) {
				res.Reasons = append(res.Reasons, d)
			}
			return fmt.Errorf("the schema after down and up differs from the first (%d differences)", len(res.Reasons))
		}
		res.Summary = fmt.Sprintf("%d migrations: up from empty, current at %d, down and up again give the same schema (%d objects)", len(up), st.Current, len(one))
		return nil
	})
	if werr := writeJSONFile(filepath.Join(dir, "migrations.json"), map[string]any{"steps": log, "error": errString(err)}); werr != nil {
		return fail("evidence", werr.Error())
	}
	res.Evidence = []string{filepath.Join(rel, "migrations.json")}
	if err != nil {
		res.Summary = "migrations failed"
		res.Reasons = append([]string{err.Error()}, res.Reasons...)
		return res
	}
	res.Passed = true
	return res
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func first(v []int64) int64 {
	if len(v) == 0 {
		return 0
	}
	return v[0]
}

func last(v []int64) int64 {
	if len(v) == 0 {
		return 0
	}
	return v[len(v)-1]
}

func digest(lines []string) string {
	h := sha256.Sum256([]byte(strings.Join(lines, "\n")))
	return hex.EncodeToString(h[:])
}

func diff(a, b []string) []string {
	in := func(s []string) map[string]bool {
		m := map[string]bool{}
		for _, x := range s {
			m[x] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out []string
	for _, x := range a {
		if !mb[x] {
			out = append(out, "only after the first up: "+x)
		}
	}
	for _, x := range b {
		if !ma[x] {
			out = append(out, "only after down and up: "+x)
		}
	}
	return out
}
