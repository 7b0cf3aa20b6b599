package devices_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/devicestest"
)

// Two servers on one database (two replicas behind a load balancer): a suspension or a
// decommission made on replica A drops the device from replica B's cache as soon as it
// commits (PostgreSQL NOTIFY), and B refuses the device's next upload.
// Verifies: REQ-HA-005
func TestRegistryChangeReachesOtherReplica(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		status string
		want   error
	}{
		{devices.StatusSuspended, devices.ErrDeviceSuspended},
		{devices.StatusDecommissioned, devices.ErrDeviceDecommissioned},
	} {
		t.Run(tc.status, func(t *testing.T) {
			t.Parallel()
			a := devicestest.New(t, nil)
			b := devicestest.NewOn(t, a.Pool, a.URL, a.Clock, nil)
			d := a.NewDevice(t)
			// Uploads through B until B holds the device in its cache (the notifications of the
			// device's registration and assignment on A may arrive after B first loaded it).
			stored := 0
			for b.Devices.Stats().CachedDevices != 1 || stored == 0 {
				if stored == 20 {
					t.Fatalf("B does not keep the device cached")
				}
				a.Clock.Add(time.Second)
				if _, err := b.Devices.Accept(b.Ctx, d.Upload(t, a.Clock.Now(), 3), devices.Meta{Transport: "http"}); err != nil {
					t.Fatalf("B.Accept(upload) = %v", err)
				}
				stored++
				time.Sleep(100 * time.Millisecond)
			}
			if _, err := a.Devices.SetStatus(a.Ctx, devicestest.Admin, d.ID, tc.status, "ticket 42"); err != nil {
				t.Fatalf("A.SetStatus(%s) = %v", tc.status, err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for b.Devices.Stats().CachedDevices != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("B still caches the device 5 s after A changed it: no notification")
				}
				time.Sleep(10 * time.Millisecond)
			}
			a.Clock.Add(time.Second)
			if _, err := b.Devices.Accept(b.Ctx, d.Upload(t, a.Clock.Now(), 3), devices.Meta{Transport: "http"}); !errors.Is(err, tc.want) {
				t.Errorf("B.Accept(upload after %s on A) = %v, want %v", tc.status, err, tc.want)
			}
			if n := a.Count(t, `SELECT count(*) FROM core_uploads`); n != stored {
				t.Errorf("uploads stored = %d, want %d (none after the change)", n, stored)
			}
		})
	}
}

// An upload re-sent to a second replica while its first attempt is still being committed by
// the first one (the device's connection to the first dropped and the load balancer sent the
// re-send to the other) gets the original's receipt from both, and is stored once: the second
// replica's commit finds the sequence taken by the original and answers with its receipt
// instead of refusing the re-send as a replay.
// Verifies: REQ-DEV-130
func TestResendRacingItsOriginalOnAnotherReplica(t *testing.T) {
	t.Parallel()
	a := devicestest.New(t, nil)
	b := devicestest.NewOn(t, a.Pool, a.URL, a.Clock, nil)
	d := a.NewDevice(t)
	const rounds = 30
	for i := range rounds {
		a.Clock.Add(time.Second)
		raw := d.Upload(t, a.Clock.Now(), 2)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for j, s := range []*devices.Service{a.Devices, b.Devices} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[j] = s.Accept(a.Ctx, raw, devices.Meta{Transport: "http"})
			}()
		}
		wg.Wait()
		for j, err := range errs {
			if err != nil {
				t.Fatalf("round %d: replica %d: Accept(the same upload on both) = %v, want the receipt", i, j, err)
			}
		}
	}
	var n int
	if err := a.Pool.QueryRow(a.Ctx, `SELECT count(*) FROM devices_uploads WHERE device_id = $1`, d.ID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != rounds {
		t.Errorf("stored uploads = %d, want %d (each once)", n, rounds)
	}
}
