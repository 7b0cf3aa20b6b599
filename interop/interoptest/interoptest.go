// Package interoptest helps the interop packages' tests use real parts: an audit recorder
// on the test's PostgreSQL database, the audit events it wrote, and the external tools
// (Debian's python3-hl7, the npm FHIR validator) that `make test` installs.
package interoptest

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/interop"
)

// Recorder returns the process's audit recorder over pool (the test database), as every
// service receives it in production: Record inside the caller's transaction, RecordNow
// group-committed. It is closed when the test ends.
func Recorder(t testing.TB, pool *pgxpool.Pool) interop.Recorder {
	t.Helper()
	return audittest.Recorder(t, pool, nil)
}

// Event is an audit event as stored.
type Event struct {
	Action, Outcome, Reason, ObjectType, ObjectID, ActorID, SourceAddr string
	Payload                                                            map[string]any
}

// Events returns the audit events whose action starts with prefix, oldest first.
func Events(t testing.TB, pool *pgxpool.Pool, prefix string) []Event {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT action, outcome, reason, object_type, COALESCE(object_id, ''), COALESCE(actor_id, ''), COALESCE(source_addr, ''), payload
		FROM audit_events WHERE starts_with(action, $1) ORDER BY occurred_at, id`, prefix)
	if err != nil {
		t.Fatalf("interoptest: audit events: %v", err)
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var e Event
		var payload []byte
		if err := rows.Scan(&e.Action, &e.Outcome, &e.Reason, &e.ObjectType, &e.ObjectID, &e.ActorID, &e.SourceAddr, &payload); err != nil {
			t.Fatalf("interoptest: scan audit event: %v", err)
		}
		if payload != nil {
			if err := json.Unmarshal(payload, &e.Payload); err != nil {
				t.Fatalf("interoptest: audit payload: %v", err)
			}
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("interoptest: audit events: %v", err)
	}
	return out
}

// RequireTool returns the path of an external tool the interop tests drive. When it is
// missing the test is skipped, or fails under VIGIL_REQUIRE_INTEROP_TOOLS=1 (as `make test`
// runs, after .ci/ensure-interop installed them).
func RequireTool(t testing.TB, path string) string {
	t.Helper()
	p, err := exec.LookPath(path)
	if err != nil {
		if os.Getenv("VIGIL_REQUIRE_INTEROP_TOOLS") == "1" {
			t.Fatalf("interoptest: %s is missing (run bash .ci/ensure-interop): %v", path, err)
		}
		t.Skipf("interoptest: %s is missing (run bash .ci/ensure-interop)", path)
	}
	return p
}
