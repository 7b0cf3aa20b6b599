package schema_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/internal/schema"
	"github.com/vigilhealth/vigil/internal/schema/schematest"
	"github.com/vigilhealth/vigil/internal/testdb"
)

func versions(ms []schema.Migration) []int64 {
	out := make([]int64, len(ms))
	for i, m := range ms {
		out[i] = m.Version
	}
	return out
}

func same(a []int64, b ...int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Every embedded migration's phase declaration parses, and the phases table itself is an
// expand migration (it may be applied under running replicas of the previous version).
// Verifies: REQ-HA-020
func TestEmbeddedPhases(t *testing.T) {
	set := schema.Embedded()
	if set.Latest() != schema.LatestVersion() {
		t.Errorf("Embedded().Latest() = %d, want LatestVersion() %d", set.Latest(), schema.LatestVersion())
	}
	found := false
	for _, m := range set.Migrations() {
		if m.Version == 810 {
			found = true
			if m.Phase != schema.PhaseExpand || m.Compat != 0 {
				t.Errorf("00810 = %+v, want an expand migration", m)
			}
		}
		if m.Phase == schema.PhaseContract && (m.Compat <= 0 || m.Compat > m.Version) {
			t.Errorf("%s: compat %d outside (0, %d]", m.Name, m.Compat, m.Version)
		}
	}
	if !found {
		t.Error("migration 00810 (schema phases) is not embedded")
	}
	next, err := set.Plus(schematest.Next())
	if err != nil {
		t.Fatal(err)
	}
	got := map[int64]schema.Migration{}
	for _, m := range next.Migrations() {
		got[m.Version] = m
	}
	if got[811].Phase != schema.PhaseExpand || got[812].Phase != schema.PhaseContract || got[812].Compat != 811 {
		t.Errorf("next set: 811 = %+v, 812 = %+v; want expand, then contract compat=811", got[811], got[812])
	}
	br, err := set.Plus(schematest.Breaking())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range br.Migrations() {
		if m.Version == 813 && (m.Phase != schema.PhaseBreaking || m.Compat != 813) {
			t.Errorf("undeclared 00813 = %+v, want breaking with compat 813", m)
		}
	}
}

// Rolling upgrade of the schema, N → N+1: the expand phase is applied under N, which runs on
// (its readiness check passes); N+1 runs with its contract pending; the contract refuses N
// with a message naming the migration and the window, and N refuses to migrate it; a missing
// phase record counts as breaking until the next `vigil migrate` restores it; contract before
// expand and expand past a breaking migration are refused.
// Verifies: REQ-HA-020
// Verifies: REQ-HA-021
// Verifies: REQ-HA-022
func TestExpandContractWindow(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.NewEmpty(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	n := schema.Embedded()
	n1, err := n.Plus(schematest.Next())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Apply(ctx, pool, schema.PhaseAll); err != nil {
		t.Fatal(err)
	}
	inspect := func(s *schema.Set) schema.Status {
		t.Helper()
		st, err := s.Inspect(ctx, pool)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	if err := inspect(n).Check(); err != nil || !inspect(n).Exact() {
		t.Fatalf("N on its own schema: %v", err)
	}
	st := inspect(n1)
	if !errors.Is(st.Check(), schema.ErrSchemaBehind) || !same(versions(st.PendingExpand), 811) || !same(versions(st.PendingContract), 812) {
		t.Fatalf("N+1 before expand: %+v, %v; want behind, 811 expand and 812 contract pending", st, st.Check())
	}
	if _, err := n1.Apply(ctx, pool, schema.PhaseContract); !errors.Is(err, schema.ErrPhaseOrder) {
		t.Errorf("contract before expand: %v, want ErrPhaseOrder", err)
	}

	applied, err := n1.Apply(ctx, pool, schema.PhaseExpand)
	if err != nil || !same(versions(applied), 811) {
		t.Fatalf("expand phase applied %v, %v; want [811]", versions(applied), err)
	}
	if st := inspect(n); st.Check() != nil || !same(versions(st.Unknown), 811) {
		t.Errorf("N after N+1's expand: %+v, %v; want it to run, 811 unknown", st, st.Check())
	}
	if st := inspect(n1); st.Check() != nil || !same(versions(st.PendingContract), 812) {
		t.Errorf("N+1 after expand: %+v, %v; want it to run with 812 pending", st, st.Check())
	}
	if again, err := n.Apply(ctx, pool, schema.PhaseAll); err != nil || len(again) != 0 {
		t.Errorf("N migrating an expanded schema: %v, %v; want nothing to do", again, err)
	}

	// A crash between a migration and the record of its phase: 811 counts as breaking.
	if _, err := pool.Exec(ctx, "DELETE FROM vigil_schema_phases WHERE version = 811"); err != nil {
		t.Fatal(err)
	}
	if err := inspect(n).Check(); !errors.Is(err, schema.ErrSchemaAhead) {
		t.Errorf("N with 811 unrecorded: %v, want ErrSchemaAhead", err)
	}
	if _, err := n1.Apply(ctx, pool, schema.PhaseExpand); err != nil {
		t.Fatal(err)
	}
	if err := inspect(n).Check(); err != nil {
		t.Errorf("N after the record was restored: %v", err)
	}

	applied, err = n1.Apply(ctx, pool, schema.PhaseContract)
	if err != nil || !same(versions(applied), 812) {
		t.Fatalf("contract phase applied %v, %v; want [812]", versions(applied), err)
	}
	err = inspect(n).Check()
	if !errors.Is(err, schema.ErrSchemaAhead) || !strings.Contains(err.Error(), "00812 (contract, binaries from 00811)") {
		t.Errorf("N after contract: %v; want ErrSchemaAhead naming 00812 and its window", err)
	}
	if _, err := n.Apply(ctx, pool, schema.PhaseAll); !errors.Is(err, schema.ErrSchemaAhead) {
		t.Errorf("N migrating a contracted schema: %v, want ErrSchemaAhead", err)
	}
	if st := inspect(n1); st.Check() != nil || !st.Exact() {
		t.Errorf("N+1 after contract: %+v, %v; want exact", st, st.Check())
	}
	var cols int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'vigil_upgrade_demo'").Scan(&cols); err != nil || cols != 2 {
		t.Errorf("vigil_upgrade_demo has %d columns (%v), want 2 after the contract", cols, err)
	}

	// A migration without a phase: expand refuses to pass it; without --phase it applies.
	n2, err := n1.Plus(schematest.Breaking())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n2.Apply(ctx, pool, schema.PhaseExpand); !errors.Is(err, schema.ErrPhaseOrder) || !strings.Contains(err.Error(), "00813 (breaking)") {
		t.Errorf("expand past a breaking migration: %v, want ErrPhaseOrder naming 00813", err)
	}
	if applied, err := n2.Apply(ctx, pool, schema.PhaseAll); err != nil || !same(versions(applied), 813) {
		t.Fatalf("breaking applied %v, %v; want [813]", versions(applied), err)
	}
	if err := inspect(n1).Check(); !errors.Is(err, schema.ErrSchemaAhead) {
		t.Errorf("N+1 after a breaking migration it does not know: %v, want ErrSchemaAhead", err)
	}

	// Down forgets the phases of what it reverts.
	if _, err := n2.MigrateDownTo(ctx, pool, 811); err != nil {
		t.Fatal(err)
	}
	var recorded int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM vigil_schema_phases WHERE version > 811").Scan(&recorded); err != nil || recorded != 0 {
		t.Errorf("%d phase records above 811 after down (%v), want 0", recorded, err)
	}
}

// Malformed phase declarations are refused with the file named.
// Verifies: REQ-HA-020
func TestPhaseDeclarationErrors(t *testing.T) {
	for name, body := range map[string]string{
		"00900_a.sql": "-- vigil:phase shrink\n-- +goose Up\nSELECT 1;\n",
		"00901_b.sql": "-- vigil:phase expand compat=00800\n-- +goose Up\nSELECT 1;\n",
		"00902_c.sql": "-- vigil:phase contract compat=00999\n-- +goose Up\nSELECT 1;\n",
		"00903_d.sql": "-- vigil:phase expand\n-- vigil:phase contract\n-- +goose Up\nSELECT 1;\n",
		"00904_e.sql": "-- vigil:phase\n-- +goose Up\nSELECT 1;\n",
	} {
		_, err := schema.NewSet(mapFS(name, body))
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: NewSet() = %v, want an error naming the file", name, err)
		}
	}
	s, err := schema.NewSet(mapFS("00905_f.sql", "-- +goose Up\n-- vigil:phase expand\nSELECT 1;\n"))
	if err != nil || s.Migrations()[0].Phase != schema.PhaseBreaking {
		t.Errorf("a declaration after the Up marker: %v, %v; want it ignored (breaking)", s, err)
	}
}

// The contract phase is refused while a live replica runs a binary it would refuse, naming the
// replica; a replica's row goes at its orderly stop, a crashed replica's goes stale; a replica
// of the new version does not hold the contract back.
// Verifies: REQ-HA-022
func TestContractWaitsForOldReplicas(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.NewEmpty(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	n := schema.Embedded()
	n1, err := n.Plus(schematest.Next())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n1.Apply(ctx, pool, schema.PhaseExpand); !errors.Is(err, schema.ErrPhaseOrder) {
		t.Fatalf("expand over the breaking baseline: %v", err) // the baseline needs a plain migrate
	}
	if _, err := n.Apply(ctx, pool, schema.PhaseAll); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.Apply(ctx, pool, schema.PhaseExpand); err != nil {
		t.Fatal(err)
	}
	old, err := schema.RegisterReplica(ctx, pool, schema.Replica{Host: "vigil-a", Listen: "10.0.0.11:8080", Version: "N", Latest: n.Latest()})
	if err != nil {
		t.Fatal(err)
	}
	upgraded, err := schema.RegisterReplica(ctx, pool, schema.Replica{Host: "vigil-b", Listen: "10.0.0.12:8080", Version: "N+1", Latest: n1.Latest()})
	if err != nil {
		t.Fatal(err)
	}
	defer upgraded.Close(ctx)
	_, err = n1.Apply(ctx, pool, schema.PhaseContract)
	if !errors.Is(err, schema.ErrPhaseOrder) || !strings.Contains(err.Error(), "vigil-a 10.0.0.11:8080 (version N") || strings.Contains(err.Error(), "vigil-b") {
		t.Fatalf("contract with a replica of N running: %v; want ErrPhaseOrder naming vigil-a only", err)
	}
	if err := old.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// A crashed replica of N: its row stays, its heartbeat is past the stale limit.
	if _, err := pool.Exec(ctx, `INSERT INTO vigil_replicas (id, host, listen, version, schema_latest, seen_at)
		VALUES (gen_random_uuid(), 'vigil-c', '10.0.0.13:8080', 'N', $1, now() - interval '5 minutes')`, n.Latest()); err != nil {
		t.Fatal(err)
	}
	if applied, err := n1.Apply(ctx, pool, schema.PhaseContract); err != nil || !same(versions(applied), 812) {
		t.Errorf("contract once only N+1 runs: %v, %v; want [812]", versions(applied), err)
	}
}
