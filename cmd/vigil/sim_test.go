package main

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/sdk"
	"github.com/vigilhealth/vigil/devices/sim"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// The simulator's scenarios make the real clinical rules fire: a mixed fleet runs through
// the SDK, the devices service, core and the default rule set with its alarm service. Sample
// time runs 20× faster than the wall clock (starting 4 min in the past, so it never gets
// ahead of the server), which gives the scenarios minutes to develop in seconds.
// Verifies: REQ-DEV-121, REQ-DEV-122
func TestSimScenariosFireClinicalRules(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	ring := keystest.LocalRing(t, nil)
	rec := audittest.Recorder(t, pool, nil)
	link := newClinicalLink(slog.Default())
	cs, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: ring.PHI(), Handoff: link.handoff, Release: link})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := startClinical(ctx, pool, rec, cs, link, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cl.Close(ctx) }()
	signer, err := ring.Signer(ctx, keys.ReceiptSigning)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := devices.New(devices.Config{Pool: pool, Recorder: rec, Ingester: cs, ReceiptSigner: signer})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ds.Close(ctx) }()

	r0 := time.Now()
	base := r0.Add(-4 * time.Minute)
	warp := func() time.Time { return base.Add(time.Since(r0) * 20) }
	in := sim.InProcess{Devices: ds}
	prov := &sim.LocalProvisioner{Core: cs, Devices: ds, Run: "e2e"}
	res, err := sim.Run(ctx, sim.Config{
		Patients: 10, Rate: 5, Duration: 11 * time.Second, Scenario: sim.Mixed, Seed: 1, Ramp: 5 * time.Second,
		OfflineAfter: 3 * time.Second, OfflineFor: 3 * time.Second, Now: warp,
		Provisioner: prov, Enroller: in, ReceiptKey: signer.Public(),
		Transport: func(context.Context, sdk.Identity) (sdk.Transport, error) { return in, nil },
	})
	if err != nil {
		t.Fatalf("Run = %v", err)
	}
	t.Logf("%s", res.Summary())
	if res.Accepted != res.Uploads || res.Pending != 0 {
		t.Fatalf("Run: %d of %d uploads accepted, %d pending; want all", res.Accepted, res.Uploads, res.Pending)
	}
	if err := link.handoff.Flush(ctx); err != nil { // the engine has evaluated every upload
		t.Fatal(err)
	}
	rulesOf := func(i int) map[string]bool {
		p, err := cs.PatientByMRN(ctx, fmt.Sprintf("SIM-e2e-%04d", i))
		if err != nil {
			t.Fatalf("patient %d: %v", i, err)
		}
		as, err := cl.alarms.List(ctx, alarms.Filter{PatientID: p.ID})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, a := range as {
			out[a.RuleID] = true
		}
		return out
	}
	for i := 0; i < 10; i++ {
		got := rulesOf(i)
		sc := sim.ScenarioFor(sim.Mixed, i)
		t.Logf("patient %d (%s): alarms %v", i, sc, got)
		switch sc {
		case sim.Sepsis, sim.Hypoxia:
			if !got["news2"] {
				t.Errorf("patient %d (%s): alarms %v, want a news2 alarm", i, sc, got)
			}
		case sim.Bradycardia:
			if !got["hr-low"] {
				t.Errorf("patient %d (bradycardia): alarms %v, want hr-low", i, got)
			}
		case sim.Stable, sim.Artifact, sim.Offline:
			if got["news2"] || got["hr-low"] || got["spo2-low"] {
				t.Errorf("patient %d (%s): alarms %v, want no news2, hr-low or spo2-low", i, sc, got)
			}
		}
	}
}
