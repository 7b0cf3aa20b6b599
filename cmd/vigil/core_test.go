package main

import (
	"strings"
	"testing"

	"github.com/vigilhealth/vigil/internal/testdb"
)

// `vigil core maintain` creates the partitions ahead (and drops nothing on a fresh database);
// `vigil core partitions` lists them; a bad retention setting is refused.
// Verifies: REQ-CORE-008, REQ-CORE-009
func TestCoreMaintainCommand(t *testing.T) {
	_, url := testdb.NewWithURL(t)
	t.Setenv("VIGIL_DATABASE_URL", url)
	out, err := execute(t, "core", "maintain")
	if err != nil || !strings.Contains(out, "0 partition(s) dropped") {
		t.Fatalf("vigil core maintain = %q, %v; want 0 dropped", out, err)
	}
	out, err = execute(t, "core", "partitions")
	if err != nil || strings.Count(out, "core_observations_p") != 8 || strings.Count(out, "core_uploads_p") != 8 {
		t.Errorf("vigil core partitions = %q, %v; want 8 days of each class", out, err)
	}
	t.Setenv("VIGIL_RETENTION_OBSERVATIONS_DAYS", "zero")
	if _, err := execute(t, "core", "maintain"); err == nil || !strings.Contains(err.Error(), "VIGIL_RETENTION_OBSERVATIONS_DAYS") {
		t.Errorf("vigil core maintain with a bad retention = %v, want an error naming the variable", err)
	}
}
