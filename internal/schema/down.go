package schema

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
)

// MigrateDownTo reverts applied migrations, newest first, until the database is at version
// (0 reverts every migration), each in its own transaction, and returns the versions
// reverted. It is for the migrations validation gate and for tests, never for production data.
func MigrateDownTo(ctx context.Context, pool *pgxpool.Pool, version int64) ([]int64, error) {
	return Embedded().MigrateDownTo(ctx, pool, version)
}

// MigrateDownTo reverts the set's applied migrations down to version (see MigrateDownTo) and
// forgets their recorded phases.
func (s *Set) MigrateDownTo(ctx context.Context, pool *pgxpool.Pool, version int64) ([]int64, error) {
	p, db, err := s.provider(pool)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	results, err := p.DownTo(ctx, version)
	if err != nil {
		return nil, fmt.Errorf("migrate down to %d: %w", version, err)
	}
	out := make([]int64, 0, len(results))
	for _, r := range results {
		out = append(out, r.Source.Version)
	}
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass('vigil_schema_phases') IS NOT NULL").Scan(&exists); err != nil {
		return out, err
	}
	if exists {
		if _, err := pool.Exec(ctx, "DELETE FROM vigil_schema_phases WHERE version = ANY($1)", out); err != nil {
			return out, fmt.Errorf("migrate down: forget phases: %w", err)
		}
	}
	return out, nil
}
