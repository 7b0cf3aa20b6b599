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
		Patients: 10, Rate: 25, Duration: 2 * time.Second, Scenario: sim.Mixed, Seed: 3,
		Ramp: time.Second, OfflineAfter: 400 * time.Millisecond, OfflineFor: time.Second,
		Provisioner: st.Prov, Enroller: in, ReceiptKey: st.ReceiptKey, StateDir: t.TempDir(),
		Transport: func(context.Context, sdk.Identity) (sdk.Transport, error) { return in, nil },
	})
	if err != nil {
		t.Fatalf("Run = %v", err)
	}
	t.Logf("%s", res.Summary())
	if res.Uploads < 10*25 || res.Accepted != res.Uploads || res.Pending != 0 || len(res.Rejected) != 0 {
		t.Errorf("Run = %d uploads, %d accepted, %d pending, rejected %v; want ≥ 250 uploads, all accepted, none pending or rejected",
			res.Uploads, res.Accepted, res.Pending, res.Rejected)
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
	// The offline monitor's uploads all arrived, the backlog after the outage.
	var gapMax float64
	if err := st.Pool.QueryRow(context.Background(), `
		SELECT coalesce(max(gap), 0) FROM (
		  SELECT extract(epoch FROM received_at - lag(received_at) OVER (PARTITION BY device_id ORDER BY sequence)) AS gap
		  FROM core_uploads) g`).Scan(&gapMax); err != nil {
		t.Fatal(err)
	}
	if gapMax < 0.8 {
		t.Errorf("largest gap between a device's uploads = %.2fs, want ≥ 0.8s (the offline monitor's outage)", gapMax)
	}
}
