// Package interoptest helps the interop packages' tests use real parts: an audit recorder
// on the test's PostgreSQL database, the audit events it wrote, and the external tools
// (Debian's python3-hl7, the npm FHIR validator) that `make test` installs.
package interoptest

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/interop"
	"github.com/vigilhealth/vigil/interop/mllp"
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

// ServeMLLP serves h on a loopback port until the test ends and returns its address.
func ServeMLLP(t testing.TB, h mllp.Handler) string {
	t.Helper()
	srv, err := mllp.NewServer(mllp.ServerConfig{Handler: h})
	if err != nil {
		t.Fatalf("interoptest: MLLP server: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("interoptest: listen: %v", err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close(context.Background()) })
	return l.Addr().String()
}

// MLLPSend sends msgs to addr in one run of Debian's python3-hl7 mllp_send, an independent
// MLLP sender, and returns the ACKs it printed, one per message (the test fails otherwise).
func MLLPSend(t testing.TB, addr string, msgs []string) [][]byte {
	t.Helper()
	mllpSend := RequireTool(t, "mllp_send")
	var file bytes.Buffer
	for _, m := range msgs {
		if err := mllp.WriteFrame(&file, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "adt.hl7")
	if err := os.WriteFile(path, file.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, mllpSend, "-p", port, "-f", path, host).CombinedOutput()
	if err != nil {
		t.Fatalf("mllp_send = %v: %s", err, out)
	}
	var acks [][]byte
	for _, part := range bytes.Split(out, []byte{mllp.EndBlock}) {
		if part = bytes.Trim(part, "\r\n\x0b "); len(part) > 0 {
			acks = append(acks, part)
		}
	}
	if len(acks) != len(msgs) {
		t.Fatalf("mllp_send printed %d ACKs, want %d:\n%q", len(acks), len(msgs), out)
	}
	return acks
}
