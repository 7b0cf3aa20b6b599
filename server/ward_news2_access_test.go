package server

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
)

// A charge nurse of ward A changes ward A's NEWS2 settings over the API and is refused on
// ward B. Before the route asked about the ward, the nurse was refused on both.
// Verifies: REQ-ACC-046
func TestWardNEWS2SettingsByTheWardsChargeNurse(t *testing.T) {
	t.Parallel()
	f := newFullServer(t)
	ctx := context.Background()
	by := audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "setup", AuthMethod: "internal"}, RequestID: "setup"}
	site, err := f.env.Core.CreateSite(ctx, by, "ward-news2-site")
	if err != nil {
		t.Fatal(err)
	}
	wardA, err := f.env.Core.CreateWard(ctx, by, site.ID, "A")
	if err != nil {
		t.Fatal(err)
	}
	wardB, err := f.env.Core.CreateWard(ctx, by, site.ID, "B")
	if err != nil {
		t.Fatal(err)
	}
	nurse := SignedInClient(t, f.auth, authtest.Grant{Role: auth.RoleChargeNurse, Domain: auth.WardDomain(wardA.ID)})
	put := func(ward string) int {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"charted": []string{"acvpu"}, "charted_max_age": "4h", "reason": "ACVPU charted by nurses"})
		req, _ := http.NewRequest(http.MethodPut, f.ts.URL+"/api/v1/wards/"+ward+"/news2", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := nurse.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := put(wardA.ID.String()); st != http.StatusOK {
		t.Errorf("charge nurse of ward A on ward A: %d, want 200", st)
	}
	if st := put(wardB.ID.String()); st != http.StatusForbidden {
		t.Errorf("charge nurse of ward A on ward B: %d, want 403", st)
	}
	if st := put("not-a-uuid"); st != http.StatusBadRequest {
		t.Errorf("malformed ward id: %d, want 400", st)
	}
}
