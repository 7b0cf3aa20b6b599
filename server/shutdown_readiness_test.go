package server

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/internal/schema"
	"github.com/vigilhealth/vigil/internal/schema/schematest"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// During a rolling upgrade a replica of version N stays ready while the next version's expand
// migrations are applied under it, and turns not-ready, naming the migration, once the
// contract phase is applied (a replica forgotten on N is taken out of rotation).
// Verifies: REQ-HA-021
func TestReadinessFollowsTheCompatibilityWindow(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	s, err := New(Config{Pool: pool, Recorder: audittest.Recorder(t, pool, nil)})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	ready := func() (int, checkResult) {
		t.Helper()
		resp, err := http.Get(ts.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct{ Checks map[string]checkResult }
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body.Checks["schema"]
	}
	if st, ch := ready(); st != http.StatusOK || !ch.OK {
		t.Fatalf("readyz on the binary's own schema = %d %+v", st, ch)
	}
	next, err := schema.Embedded().Plus(schematest.Next())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := next.Apply(ctx, pool, schema.PhaseExpand); err != nil {
		t.Fatal(err)
	}
	st, ch := ready()
	if detail, _ := ch.Detail.(map[string]any); st != http.StatusOK || !ch.OK || detail["newer_applied"] != float64(1) {
		t.Errorf("readyz after the next version's expand = %d %+v, want ready with one newer migration", st, ch)
	}
	if _, err := next.Apply(ctx, pool, schema.PhaseContract); err != nil {
		t.Fatal(err)
	}
	if st, ch := ready(); st != http.StatusServiceUnavailable || ch.OK || !strings.Contains(ch.Error, "00812 (contract") {
		t.Errorf("readyz after the next version's contract = %d %+v, want 503 naming 00812", st, ch)
	}
}
