package sim_test

import (
	"context"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/devices/sdk"
	"github.com/vigilhealth/vigil/devices/sim"
	"github.com/vigilhealth/vigil/devices/sim/simtest"
)

// A mixed fleet enrolls through the SDK and delivers every upload with a verified receipt;
// the offline monitor's backlog is delivered when it comes back; the artefact monitor's
// implausible readings are stored flagged.
// Verifies: REQ-DEV-122, REQ-DEV-121
func TestRunMixedFleet(t *testing.T) {
	t.Parallel()
	st := simtest.New(t, nil)
	in := sim.InProcess{Devices: st.Devices}
	res, err := sim.Run(context.Background(), sim.Config{
		// Seed 2 gives the artefact monitor an implausible reading on its very first tick, so
		// the flagging check does not depend on how many ticks a loaded machine manages.
		// A fixed number of uploads rather than a duration: the outage spans measurement
		// periods 5–19, which a loaded machine might not reach in a fixed time.
		Patients: 10, Rate: 25, Uploads: 40, Duration: 2 * time.Minute, Scenario: sim.Mixed, Seed: 2,
		Ramp: time.Second, OfflineAfter: 200 * time.Millisecond, OfflineFor: 600 * time.Millisecond,
		Provisioner: st.Prov, Enroller: in, ReceiptKey: st.ReceiptKey, StateDir: t.TempDir(),
		Transport: func(context.Context, sdk.Identity) (sdk.Transport, error) { return in, nil },
	})
	if err != nil {
		t.Fatalf("Run = %v", err)
	}
	t.Logf("%s", res.Summary())
	if res.Uploads != 10*40 {
		t.Errorf("Run measured %d uploads, want 400 (40 per monitor)", res.Uploads)
	}
	if res.Uploads == 0 || res.Accepted != res.Uploads || res.Pending != 0 || len(res.Rejected) != 0 {
		t.Errorf("Run = %d uploads, %d accepted, %d pending, rejected %v; want uploads, all accepted, none pending or rejected",
			res.Uploads, res.Accepted, res.Pending, res.Rejected)
	}
	// The offline monitor measured through its outage (0.6 s at 25/s: 15 ticks that never
	// flush) into its buffer, and delivered all of it afterwards (nothing pending).
	if res.Backlog < 14 {
		t.Errorf("offline backlog = %d, want ≥ 14 (the outage's readings buffered)", res.Backlog)
	}
	if res.Scenarios[sim.Offline] != 1 || res.Scenarios[sim.Stable] != 5 {
		t.Errorf("Scenarios = %v, want 1 offline, 5 stable", res.Scenarios)
	}
	var stored, flagged int
	if err := st.Pool.QueryRow(context.Background(), `SELECT coalesce(sum(stored),0), coalesce(sum(flagged),0) FROM core_uploads`).Scan(&stored, &flagged); err != nil {
		t.Fatal(err)
	}
	if stored != 8*res.Accepted {
		t.Errorf("stored observations = %d, want %d (8 per upload)", stored, 8*res.Accepted)
	}
	if flagged == 0 {
		t.Errorf("flagged observations = 0, want some from the artefact monitor")
	}
}
