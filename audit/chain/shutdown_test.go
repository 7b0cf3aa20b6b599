package chain_test

import (
	"context"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// Attack-free case 6: an orderly stop ships and checkpoints what was recorded; what the
// writer records after (its final attestation) is reported as stopped, not as a pending
// finding, however old. An event of a writer that did not stop in order still is.
// Verifies: REQ-AUD-047
func TestOrderlyStopLeavesNothingUnexplained(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, url := testdb.NewWithURL(t)
	rec := audittest.Recorder(t, pool, nil)
	svc, err := chain.Open(ctx, chain.Config{Pool: pool, Recorder: rec, Backlog: rec, EventKeys: rec.EventKeys(), DatabaseURL: url,
		Signer: newSigner(t), SequencerInterval: 20 * time.Millisecond, Window: time.Hour, CheckpointInterval: time.Hour, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	c := &rig{pool: pool, url: url, rec: rec}
	ids := c.record(t, 6)
	if err := svc.Close(ctx); err != nil {
		t.Fatalf("Close() error = %v", err)
	}
	rec.Close() // the final attestation, after the final checkpoint

	later := time.Now().Add(10 * time.Minute)
	ro, err := chain.OpenIdle(ctx, chain.Config{Pool: pool, Recorder: audittest.Recorder(t, pool, nil), EventKeys: rec.EventKeys(),
		DatabaseURL: url, Signer: newSigner(t), ReadOnly: true, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ro.Close(context.Background()) })
	vcfg := ro.VerifyConfig()
	vcfg.VerifierKey, vcfg.Origin = svc.VerifierKey(), svc.Origin()
	vcfg.Keys = audit.NewSessionKeys(rec.EventKeys())
	vcfg.Now = func() time.Time { return later }
	r, err := chain.Verify(ctx, vcfg)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK || r.ProvenEvents < int64(len(ids)) {
		t.Fatalf("Verify() after an orderly stop = ok %v, proven %d, findings %s; want OK with the %d events proven", r.OK, r.ProvenEvents, findings(r), len(ids))
	}
	for _, p := range r.Pending {
		if !p.Stopped {
			t.Errorf("pending %+v is not marked stopped", p)
		}
	}

	// A writer that is still running (or crashed): its old pending event is a finding.
	other := audittest.Unauthenticated(t, pool, nil)
	if err := other.EnableAuthentication(ctx, rec.EventKeys()); err != nil {
		t.Fatal(err)
	}
	id, err := other.RecordNow(ctx, testEvent())
	if err != nil {
		t.Fatal(err)
	}
	if r, err = chain.Verify(ctx, vcfg); err != nil {
		t.Fatal(err)
	}
	if !hasFinding(r, chain.FindingPending, id.String()) {
		t.Errorf("Verify() findings = %s, want pending naming %s", findings(r), id)
	}
}

// An orderly stop whose writer's last event is a periodic attestation, recorded after the
// last shipping and followed by a tick with nothing new: the final attestation is still
// recorded and covers it. Before, Close recorded no final attestation then (nothing new to
// attest), and verify reported the periodic attestation as pending once a minute old (seen
// in `vigil release` under load: the release proven, then two attester ticks before exit).
// Verifies: REQ-AUD-047
func TestOrderlyStopAfterAnIdleAttestation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, url := testdb.NewWithURL(t)
	rec := audittest.Recorder(t, pool, nil)
	svc, err := chain.Open(ctx, chain.Config{Pool: pool, Recorder: rec, Backlog: rec, EventKeys: rec.EventKeys(), DatabaseURL: url,
		Signer: newSigner(t), SequencerInterval: 20 * time.Millisecond, Window: time.Hour, CheckpointInterval: time.Hour, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	c := &rig{pool: pool, url: url, rec: rec}
	ids := c.record(t, 3)
	if err := svc.Close(ctx); err != nil {
		t.Fatalf("Close() error = %v", err)
	}
	// The attester's two ticks after the last shipping: one attests the events, the next
	// finds nothing new but that attestation.
	for range 2 {
		if err := rec.Attest(ctx); err != nil {
			t.Fatalf("Attest() error = %v", err)
		}
	}
	rec.Close()

	ro, err := chain.OpenIdle(ctx, chain.Config{Pool: pool, Recorder: audittest.Recorder(t, pool, nil), EventKeys: rec.EventKeys(),
		DatabaseURL: url, Signer: newSigner(t), ReadOnly: true, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ro.Close(context.Background()) })
	vcfg := ro.VerifyConfig()
	vcfg.VerifierKey, vcfg.Origin = svc.VerifierKey(), svc.Origin()
	vcfg.Keys = audit.NewSessionKeys(rec.EventKeys())
	later := time.Now().Add(10 * time.Minute)
	vcfg.Now = func() time.Time { return later }
	r, err := chain.Verify(ctx, vcfg)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK || r.ProvenEvents < int64(len(ids)) {
		t.Fatalf("Verify() = ok %v, proven %d, findings %s; want OK with the %d events proven", r.OK, r.ProvenEvents, findings(r), len(ids))
	}
	if len(r.Pending) < 2 {
		t.Errorf("pending = %+v, want the periodic and the final attestation", r.Pending)
	}
	for _, p := range r.Pending {
		if !p.Stopped {
			t.Errorf("pending %+v is not marked stopped", p)
		}
	}
}
