package devices_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/devicestest"
	"github.com/vigilhealth/vigil/devices/envelope"
)

// With more active devices than the cache holds, devices are dropped from memory and
// reloaded from the database: every upload is still verified and accepted, and a device's
// sequence state survives being dropped (a replay is still refused, an exact re-send still
// gets its original receipt).
// Verifies: REQ-DEV-013, REQ-DEV-023
func TestDeviceCacheBounded(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, func(c *devices.Config) { c.MaxCachedDevices = 2 })
	fleet := []*devicestest.Device{e.NewDevice(t), e.NewDevice(t), e.NewDevice(t), e.NewDevice(t)}
	var first []byte
	var firstReceipt *devices.Receipt
	for round := 0; round < 3; round++ {
		for i, d := range fleet {
			e.Clock.Add(time.Second)
			raw := d.Upload(t, e.Clock.Now(), 5)
			rc, err := e.Devices.Accept(e.Ctx, raw, devices.Meta{Transport: "http"})
			if err != nil {
				t.Fatalf("round %d device %d: Accept = %v, want nil", round, i, err)
			}
			if round == 0 && i == 0 {
				first, firstReceipt = raw, rc
			}
			if n := e.Devices.Stats().CachedDevices; n > 2 {
				t.Fatalf("%d devices cached, want at most 2", n)
			}
		}
	}
	if n := e.Count(t, `SELECT count(*) FROM core_uploads`); n != 12 {
		t.Errorf("uploads stored = %d, want 12", n)
	}
	// Device 0 has certainly been dropped since its first upload (three others loaded after
	// it into a cache of two).
	again, err := e.Devices.Accept(e.Ctx, first, devices.Meta{Transport: "http"})
	if err != nil || !again.Replayed || !bytes.Equal(again.Signed.Body, firstReceipt.Signed.Body) {
		t.Errorf("exact re-send after eviction = %v, %v; want the original receipt", again, err)
	}
	d := fleet[0]
	replay := d.Sign(t, &envelope.Upload{Device: d.ID.String(), KeyVersion: d.KV, Seq: 2, SentAt: e.Clock.Now().UnixMilli(), Samples: devicestest.Vitals(3, e.Clock.Now())})
	if _, err := e.Devices.Accept(e.Ctx, replay, devices.Meta{Transport: "http"}); !errors.Is(err, devices.ErrReplay) {
		t.Errorf("Accept(new upload with an old sequence number) after eviction = %v, want ErrReplay", err)
	}
}
