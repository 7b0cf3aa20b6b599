package devices_test

import (
	"errors"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/devicestest"
	"github.com/vigilhealth/vigil/devices/envelope"
)

// Accepted uploads' rows are kept for the retention and no longer: waveforms go after the
// waveform retention, the rows (receipts) after the receipt retention, batch by batch, each
// removal audited with its count; a re-send of a purged upload is refused as a replay.
// Verifies: REQ-DEV-027
func TestUploadRetention(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, nil) // defaults: receipts 365 days, waveforms 90 days
	d := e.NewDevice(t)
	send := func() []byte {
		t.Helper()
		now := e.Clock.Now()
		wf := []envelope.Waveform{{Code: "131328", Unit: "mV", T0: now.Add(-time.Second).UnixMilli(), Hz: 250, Scale: 0.005, Data: []int64{0, 12, 40}}}
		d.Seq++
		raw := d.Sign(t, &envelope.Upload{Device: d.ID.String(), KeyVersion: d.KV, Seq: d.Seq, SentAt: now.UnixMilli(),
			Samples: devicestest.Vitals(2, now), Waveforms: wf})
		if _, err := e.Devices.Accept(e.Ctx, raw, devices.Meta{Transport: "http"}); err != nil {
			t.Fatalf("Accept = %v", err)
		}
		return raw
	}
	old := send()
	send()
	e.Clock.Add(100 * 24 * time.Hour)
	send()
	rows := func(q string) int { t.Helper(); return e.Count(t, q) }

	// Day 100: the first two uploads' waveforms are past 90 days, their receipts are not.
	p, err := e.Devices.EnforceRetention(e.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p.Waveforms != 2 || p.Receipts != 0 {
		t.Errorf("day 100: purged %+v, want the waveforms of 2 uploads and no receipts", p)
	}
	if n := rows(`SELECT count(*) FROM devices_uploads WHERE waveforms IS NOT NULL`); n != 1 {
		t.Errorf("day 100: %d uploads with waveforms, want 1", n)
	}
	if n := rows(`SELECT count(*) FROM audit_events WHERE action = 'retention.waveforms_purged' AND (payload->>'rows')::int = 2`); n != 1 {
		t.Errorf("day 100: %d retention.waveforms_purged events for 2 rows, want 1", n)
	}
	if again, err := e.Devices.Accept(e.Ctx, old, devices.Meta{Transport: "http"}); err != nil || !again.Replayed {
		t.Errorf("day 100: re-send of the first upload = %v, %v; want its original receipt", again, err)
	}

	// Day 400: the first two uploads are past 365 days; the third (300 days old) stays, without
	// its waveforms.
	e.Clock.Add(300 * 24 * time.Hour)
	if p, err = e.Devices.EnforceRetention(e.Ctx); err != nil {
		t.Fatal(err)
	}
	if p.Receipts != 2 || p.Waveforms != 1 {
		t.Errorf("day 400: purged %+v, want 2 receipts and 1 upload's waveforms", p)
	}
	if n := rows(`SELECT count(*) FROM devices_uploads`); n != 1 {
		t.Errorf("day 400: %d upload rows left, want 1", n)
	}
	if n := rows(`SELECT count(*) FROM audit_events WHERE action = 'retention.receipts_purged' AND (payload->>'rows')::int = 2 AND (payload->>'retention_days')::int = 365`); n != 1 {
		t.Errorf("day 400: %d retention.receipts_purged events for 2 rows, want 1", n)
	}
	if _, err := e.Devices.Accept(e.Ctx, old, devices.Meta{Transport: "http"}); !errors.Is(err, devices.ErrReplay) {
		t.Errorf("day 400: re-send of a purged upload = %v, want ErrReplay", err)
	}
	// Nothing more to do: no rows touched, no events.
	if p, err = e.Devices.EnforceRetention(e.Ctx); err != nil || p != (devices.Purged{}) {
		t.Errorf("second run = %+v, %v; want nothing purged", p, err)
	}
	// Three removals, three events: day 100's waveforms, day 400's waveforms and receipts.
	if n := rows(`SELECT count(*) FROM audit_events WHERE action LIKE 'retention.%_purged'`); n != 3 {
		t.Errorf("%d retention events, want 3", n)
	}
}

// Purges run in bounded batches, each its own transaction with its own audit event, and the
// counts add up; waveforms never outlive their receipts.
// Verifies: REQ-DEV-027
func TestUploadRetentionBatches(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, func(c *devices.Config) {
		c.Retention = devices.Retention{Receipts: 10 * 24 * time.Hour, Waveforms: 20 * 24 * time.Hour, Batch: 2}
	})
	d := e.NewDevice(t)
	for i := 0; i < 5; i++ {
		e.Clock.Add(time.Second)
		if _, err := e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 2), devices.Meta{Transport: "http"}); err != nil {
			t.Fatal(err)
		}
	}
	// A waveform retention above the receipt retention is cut to it, so at day 11 the rows go.
	e.Clock.Add(11 * 24 * time.Hour)
	p, err := e.Devices.EnforceRetention(e.Ctx)
	if err != nil || p.Receipts != 5 {
		t.Fatalf("day 11 with 10-day receipts = %+v, %v; want 5 receipts purged", p, err)
	}
	if n := e.Count(t, `SELECT count(*) FROM devices_uploads`); n != 0 {
		t.Errorf("%d upload rows left, want 0", n)
	}
	var batches []int
	rows, err := e.Pool.Query(e.Ctx, `SELECT (payload->>'rows')::int FROM audit_events WHERE action = 'retention.receipts_purged' ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n int
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		batches = append(batches, n)
	}
	if rows.Err() != nil || len(batches) != 3 || batches[0] != 2 || batches[1] != 2 || batches[2] != 1 {
		t.Errorf("retention.receipts_purged batches = %v (%v), want [2 2 1]", batches, rows.Err())
	}
}
