package devices_test

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/devicestest"
	"github.com/vigilhealth/vigil/devices/envelope"
)

// Verifies: REQ-DEV-042
// BenchmarkAccept is the upload path without HTTP: verification, group commit through the
// real core into PostgreSQL, receipt signing; 10 samples per upload, many devices sending
// concurrently (each goroutine is one device sending its uploads in order). The time per op
// includes the device-side signing of each upload, done in the loop.
//
//	go test ./devices -run '^$' -bench BenchmarkAccept -benchtime 20000x
func BenchmarkAccept(b *testing.B) {
	e := devicestest.New(b, func(c *devices.Config) { c.RatePerSecond = -1; c.SampleQuotaPerHour = -1 })
	const fleet = 256
	devs := make([]*devicestest.Device, fleet)
	for i := range devs {
		devs[i] = e.NewDevice(b)
		p := e.NewPatient(b)
		if _, err := e.Devices.AssignPatient(e.Ctx, devicestest.Admin, devs[i].ID, &p); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	b.SetParallelism(max(fleet/runtime.GOMAXPROCS(0), 1)) // one goroutine per device
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		d := devs[int(next.Add(1)-1)%fleet]
		for pb.Next() {
			d.Seq++
			at := devicestest.T0.Add(-time.Duration(d.Seq) * 10 * time.Second)
			raw := d.Sign(b, &envelope.Upload{Device: d.ID.String(), KeyVersion: d.KV, Seq: d.Seq,
				SentAt: e.Clock.Now().UnixMilli(), Samples: devicestest.Vitals(10, at)})
			if _, err := e.Devices.Accept(e.Ctx, raw, devices.Meta{Transport: "bench"}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	st := e.Devices.Stats()
	b.ReportMetric(float64(st.Accepted)/float64(max(st.Groups, 1)), "uploads/commit")
	b.ReportMetric(float64(st.HookTime.Microseconds())/float64(max(st.Accepted, 1)), "hook-µs/upload")
	b.ReportMetric(float64(st.CommitTime.Microseconds())/float64(max(st.Accepted, 1)), "commit-µs/upload")
}
