package main

import (
	"context"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/internal/testdb"
)

// `vigil core maintain` creates the partitions ahead (and drops nothing on a fresh database);
// `vigil core partitions` lists them; device uploads' waveforms and receipts past their
// retention are removed; a bad retention setting is refused.
// Verifies: REQ-CORE-008, REQ-CORE-009, REQ-DEV-027
func TestCoreMaintainCommand(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	env, dir := commandRing(t, url)
	// Two accepted uploads' rows with waveforms: 400 and 100 days old.
	for i, age := range []string{"400 days", "100 days"} {
		if _, err := pool.Exec(context.Background(), `INSERT INTO devices_uploads
			(hash, device_id, seq, key_version, received_at, audit_event_id, transport, receipt, waveforms)
			VALUES (sha256($1), $2, 1, 1, now() - $3::interval, $4, 'http', '\xa0', '\x80')`,
			[]byte{byte(i)}, uuid.New(), age, uuid.New()); err != nil {
			t.Fatal(err)
		}
	}
	out, err := executeEnv(t, env, "core", "maintain", "--data-dir", dir)
	if err != nil || !strings.Contains(out, "0 partition(s) dropped") ||
		!strings.Contains(out, "1 device upload receipt(s) purged, waveforms removed from 2 upload(s)") {
		t.Fatalf("vigil core maintain = %q, %v; want 0 partitions dropped, 1 receipt purged, 2 uploads' waveforms removed", out, err)
	}
	out, err = executeEnv(t, env, "core", "partitions", "--data-dir", dir)
	if err != nil || strings.Count(out, "core_observations_p") != 8 || strings.Count(out, "core_uploads_p") != 8 {
		t.Errorf("vigil core partitions = %q, %v; want 8 days of each class", out, err)
	}
	env["VIGIL_RETENTION_OBSERVATIONS_DAYS"] = "zero"
	if _, err := executeEnv(t, env, "core", "maintain", "--data-dir", dir); err == nil || !strings.Contains(err.Error(), "VIGIL_RETENTION_OBSERVATIONS_DAYS") {
		t.Errorf("vigil core maintain with a bad retention = %v, want an error naming the variable", err)
	}
}
