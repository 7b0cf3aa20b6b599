package schema_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/internal/schema"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// Migrate applies every embedded migration once; a second run applies nothing; the status
// then reads current; a database newer than the binary is refused, never touched.
// Verifies: REQ-FND-002
func TestMigrateLifecycle(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.NewEmpty(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	st, err := schema.Inspect(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(st.Check(), schema.ErrSchemaBehind) || st.Current != 0 {
		t.Fatalf("Inspect(empty) = %+v (%v), want behind at 0", st, st.Check())
	}
	applied, err := schema.Migrate(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != st.Pending || applied[len(applied)-1] != schema.LatestVersion() {
		t.Errorf("Migrate() applied %v, want %d migrations ending at %d", applied, st.Pending, schema.LatestVersion())
	}
	again, err := schema.Migrate(ctx, pool)
	if err != nil || len(again) != 0 {
		t.Errorf("second Migrate() = %v, %v; want nothing applied", again, err)
	}
	st, err = schema.Inspect(ctx, pool)
	if err != nil || st.Check() != nil {
		t.Fatalf("Inspect(migrated) = %+v, %v, check %v; want current", st, err, st.Check())
	}

	// A newer binary migrated this database.
	if _, err := pool.Exec(ctx, "INSERT INTO goose_db_version (version_id, is_applied) VALUES ($1, true)", schema.LatestVersion()+1); err != nil {
		t.Fatal(err)
	}
	st, _ = schema.Inspect(ctx, pool)
	if !errors.Is(st.Check(), schema.ErrSchemaAhead) {
		t.Errorf("Inspect(ahead).Check() = %v, want ErrSchemaAhead", st.Check())
	}
	if _, err := schema.Migrate(ctx, pool); !errors.Is(err, schema.ErrSchemaAhead) {
		t.Errorf("Migrate(ahead) error = %v, want ErrSchemaAhead", err)
	}
}

// The embedded migration set is identified stably (test templates depend on it).
// Verifies: REQ-FND-002
func TestFingerprintAndLatestAgree(t *testing.T) {
	if schema.LatestVersion() <= 0 {
		t.Fatalf("LatestVersion() = %d, want > 0", schema.LatestVersion())
	}
	if a, b := schema.Fingerprint(), schema.Fingerprint(); a != b || len(a) != 16 {
		t.Errorf("Fingerprint() = %q then %q, want one stable 16-char value", a, b)
	}
}
