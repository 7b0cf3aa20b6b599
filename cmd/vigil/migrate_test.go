package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/vigilhealth/vigil/internal/schema"
	"github.com/vigilhealth/vigil/internal/schema/schematest"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// `vigil migrate` names the phase of what it applies; --phase expand refuses to pass a
// breaking migration; --status and serve accept a schema expanded by the next version and
// refuse it, with the contract migration named, once the next version's contract is applied.
// Verifies: REQ-HA-021
// Verifies: REQ-HA-022
func TestMigratePhases(t *testing.T) {
	t.Parallel()
	url := testdb.NewEmpty(t)
	env := map[string]string{"VIGIL_DATABASE_URL": url}
	var ee *exitError
	if out, err := executeEnv(t, env, "migrate", "--phase", "sideways"); !errors.As(err, &ee) || ee.code != 2 {
		t.Errorf("migrate --phase sideways = %q, %v; want exit code 2", out, err)
	}
	out, err := executeEnv(t, env, "migrate", "--phase", "expand")
	if !errors.Is(err, schema.ErrPhaseOrder) || !strings.Contains(err.Error(), "without --phase") {
		t.Errorf("migrate --phase expand over breaking migrations = %q, %v; want ErrPhaseOrder", out, err)
	}
	out, err = executeEnv(t, env, "migrate")
	if err != nil || !strings.Contains(out, "applied 00810_schema_phases (expand") || !strings.Contains(out, "applied 00001_installation (breaking") {
		t.Fatalf("migrate = %q, %v; want each migration with its phase", out, err)
	}

	pool, err := openPool(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	next, err := schema.Embedded().Plus(schematest.Next())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := next.Apply(context.Background(), pool, schema.PhaseExpand); err != nil {
		t.Fatal(err)
	}
	out, err = executeEnv(t, env, "migrate", "--status")
	if err != nil || !strings.Contains(out, "applied by a newer binary: 00811 (expand)") {
		t.Errorf("migrate --status after the next version's expand = %q, %v; want success naming 00811", out, err)
	}
	if out, err := executeEnv(t, env, "migrate", "--phase", "contract"); err != nil || !strings.Contains(out, "the contract phase: nothing to apply") {
		t.Errorf("migrate --phase contract (nothing of ours) = %q, %v", out, err)
	}

	if _, err := next.Apply(context.Background(), pool, schema.PhaseContract); err != nil {
		t.Fatal(err)
	}
	out, err = executeEnv(t, env, "migrate", "--status")
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(err.Error(), "00812 (contract, binaries from 00811)") {
		t.Errorf("migrate --status after the next version's contract = %q, %v; want exit 1 naming 00812", out, err)
	}
	_, err = executeEnv(t, env, "serve", "--listen", "127.0.0.1:0", "--data-dir", t.TempDir())
	if !errors.Is(err, schema.ErrSchemaAhead) || !strings.Contains(err.Error(), "upgrade this binary") {
		t.Errorf("serve past its window: %v, want ErrSchemaAhead telling to upgrade", err)
	}
}
