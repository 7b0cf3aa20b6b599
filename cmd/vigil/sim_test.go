package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
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
// the SDK, the devices service, core and the default rule set with its alarm service.
// Sample time is a time-lapse tied to the measurements, not to the wall clock: each
// monitor's k-th upload is dated 4 min ago + k × 4 s (20× its 200 ms period), and each
// monitor sends a fixed 55 uploads. The scenarios' readings depend only on the tick too, so
// what the rules see — and which alarms fire — is the same however slowly a loaded machine
// gets through the run; sample times stay in the past, and uploads are signed at the real
// time, so nothing is refused for a clock skew.
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
	cl, err := startClinical(ctx, pool, rec, cs, link, nil, slog.Default())
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

	const uploads, rate, lapse = 55, 5, 20 // per monitor; per second; sample time per wall time
	period := time.Second / rate
	base := time.Now().Add(-4 * time.Minute)
	sampleTime := func(tick int) time.Time { return base.Add(time.Duration(tick) * period * lapse) }
	in := sim.InProcess{Devices: ds}
	prov := &sim.LocalProvisioner{Core: cs, Devices: ds, Run: "e2e"}
	res, err := sim.Run(ctx, sim.Config{
		// The 11 s of the run at 5/s: a 5 s ramp (25 ticks, 100 s of sample time), the offline
		// monitor silent from tick 15 to tick 30.
		// Duration only bounds a run that hangs: a slow one still sends all its uploads.
		Patients: 10, Rate: rate, Uploads: uploads, Duration: 5 * time.Minute, Scenario: sim.Mixed, Seed: 1, Ramp: 5 * time.Second,
		OfflineAfter: 3 * time.Second, OfflineFor: 3 * time.Second, SampleTime: sampleTime,
		Provisioner: prov, Enroller: in, ReceiptKey: signer.Public(),
		Transport: func(context.Context, sdk.Identity) (sdk.Transport, error) { return in, nil },
	})
	if err != nil {
		t.Fatalf("Run = %v", err)
	}
	t.Logf("%s", res.Summary())
	if res.Uploads != 10*uploads || res.Accepted != res.Uploads || res.Pending != 0 || len(res.Rejected) != 0 {
		t.Fatalf("Run: %d uploads, %d accepted, %d pending, rejected %v; want %d, all accepted, none pending or rejected",
			res.Uploads, res.Accepted, res.Pending, res.Rejected, 10*uploads)
	}
	if err := link.handoff.Flush(ctx); err != nil { // the engine has evaluated every upload
		t.Fatal(err)
	}
	rulesOf := func(i int) []string {
		p, err := cs.PatientByMRN(ctx, fmt.Sprintf("SIM-e2e-%04d", i))
		if err != nil {
			t.Fatalf("patient %d: %v", i, err)
		}
		as, err := cl.alarms.List(ctx, alarms.Filter{PatientID: p.ID})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, a := range as {
			if !slices.Contains(out, a.RuleID) {
				out = append(out, a.RuleID)
			}
		}
		slices.Sort(out)
		return out
	}
	// The readings and their times are fixed by the seed and the tick, so the alarms are too:
	// exactly these rules fire, each scenario's own (news2 for sepsis and hypoxia, hr-low for
	// bradycardia) among them, and nothing for the stable, artefact and offline patients.
	want := map[sim.Scenario][]string{
		sim.Sepsis:      {"hr-high", "news2", "rr-high", "sbp-fall", "sbp-low", "temp-high"},
		sim.Hypoxia:     {"news2", "rr-high", "spo2-low"},
		sim.Bradycardia: {"hr-low", "news2", "sbp-fall", "sbp-low"},
	}
	for i := 0; i < 10; i++ {
		got := rulesOf(i)
		sc := sim.ScenarioFor(sim.Mixed, i)
		t.Logf("patient %d (%s): alarms %v", i, sc, got)
		if !slices.Equal(got, want[sc]) {
			t.Errorf("patient %d (%s): alarms of rules %v, want %v", i, sc, got, want[sc])
		}
	}
}
