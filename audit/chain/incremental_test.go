package chain_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/internal/testdb"
)

func verifySince(t testing.TB, svc *chain.Service, since *chain.VerifyState) *chain.Report {
	t.Helper()
	cfg := svc.VerifyConfig()
	cfg.Since = since
	r, err := chain.Verify(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Verify(since) error = %v", err)
	}
	return r
}

// recordAttestShip records n events in transactions of up to 1,000, attests them, ships
// them and issues a checkpoint.
func recordAttestShip(t testing.TB, c *rig, svc *chain.Service, n int) chain.Checkpoint {
	t.Helper()
	ctx := context.Background()
	evs := make([]audit.Event, 1000)
	for i := range evs {
		evs[i] = testEvent()
		evs[i].Object.ID = fmt.Sprint("obj-", i)
	}
	for done := 0; done < n; done += len(evs) {
		k := min(len(evs), n-done)
		if err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
			_, err := c.rec.RecordMany(ctx, tx, evs[:k])
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.rec.Attest(ctx); err != nil {
		t.Fatal(err)
	}
	// (rig.shipAll gives up after 30 s; 200,000 events take longer on a shared machine.)
	deadline := time.Now().Add(10 * time.Minute)
	for {
		_, err := c.shipper.Step(ctx)
		st := c.shipper.Stats()
		if err == nil && st.PendingEvents == 0 && st.UnintegratedBatches == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shipper did not catch up: stats %+v, last error %v", st, err)
		}
		if err != nil || st.UnintegratedBatches > 0 {
			time.Sleep(10 * time.Millisecond) // waiting for Trillian's sequencer, not for logic
		}
	}
	cp, err := svc.CheckpointNow(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

// An incremental verify starts from the state a clean verify returned: it reads only the
// events, batches and log leaves after it, proves the new leaves against the new checkpoint
// through the remembered compact range, and continues the writers' numbering; it still
// catches a new event deleted, forged or changed, and a rewritten log (the remembered
// checkpoint gone). A change to an event verified before is left to the full verify, which
// catches it. The state survives a file round trip.
// Verifies: REQ-AUD-054
func TestIncrementalVerify(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		attack func(t *testing.T, c *rig, st *chain.VerifyState, newIDs []string)
		kind   string // finding of the incremental run; "" = none
	}{
		{"clean", nil, ""},
		{"new event deleted", func(t *testing.T, c *rig, _ *chain.VerifyState, ids []string) {
			mustExec(t, c, `DELETE FROM audit_events WHERE id = $1`, ids[3])
		}, chain.FindingDeleted},
		{"new event changed", func(t *testing.T, c *rig, _ *chain.VerifyState, ids []string) {
			mustExec(t, c, `UPDATE audit_events SET object_id = 'other' WHERE id = $1`, ids[4])
		}, chain.FindingModified},
		{"forged event", func(t *testing.T, c *rig, _ *chain.VerifyState, ids []string) {
			mustExec(t, c, `INSERT INTO audit_events (id, occurred_at, recorded_at, actor_kind, actor_id, actor_auth, action, object_type,
				object_id, outcome, reason, request_id, source_addr, payload, salt, actor_id_c, object_id_c, request_id_c, source_addr_c,
				payload_commitment, session_id, session_seq, auth_mac)
				SELECT gen_random_uuid(), occurred_at, recorded_at, actor_kind, actor_id, actor_auth, action, object_type,
				object_id, outcome, reason, request_id, source_addr, payload, salt, actor_id_c, object_id_c, request_id_c, source_addr_c,
				payload_commitment, session_id, session_seq + 1000, auth_mac FROM audit_events WHERE id = $1`, ids[0])
		}, chain.FindingUnauthenticated},
		{"remembered checkpoint rewritten", func(t *testing.T, c *rig, st *chain.VerifyState, _ []string) {
			mustExec(t, c, `UPDATE audit_checkpoints SET note = note || ' ' WHERE id = $1`, st.CheckpointID)
		}, chain.FindingFork},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, svc := newService(t)
			oldIDs := c.record(t, 12)
			cp1 := recordAttestShip(t, c, svc, 0)
			full := verify(t, svc)
			if !full.OK || full.State == nil || full.State.Size != cp1.Size {
				t.Fatalf("full Verify(): ok %v, state %+v, findings %s", full.OK, full.State, findings(full))
			}
			// The state round-trips through the auditor's file.
			file := filepath.Join(t.TempDir(), "verify-state.json")
			if err := chain.WriteVerifyState(file, full.State); err != nil {
				t.Fatal(err)
			}
			st, err := chain.ReadVerifyState(file)
			if err != nil || st == nil {
				t.Fatalf("ReadVerifyState() = %v, %v", st, err)
			}
			newIDs := c.record(t, 9)
			if err := c.rec.Attest(ctx); err != nil {
				t.Fatal(err)
			}
			c.shipAll(t)
			cp2, err := svc.CheckpointNow(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if tc.attack != nil {
				tc.attack(t, c, st, newIDs)
			}
			inc := verifySince(t, svc, st)
			if !inc.Incremental {
				t.Error("report not marked incremental")
			}
			if tc.kind == "" {
				if !inc.OK || inc.State == nil || inc.State.Size != cp2.Size || inc.ProvenEvents >= full.ProvenEvents+9 || inc.ProvenEvents < 9 {
					t.Fatalf("incremental Verify(): ok %v, %d events (%d proven; full had %d), state %+v, findings %s",
						inc.OK, inc.Events, inc.ProvenEvents, full.ProvenEvents, inc.State, findings(inc))
				}
				// The same state again gives the same answer (the run does not change it).
				if r := verifySince(t, svc, st); !r.OK || r.ProvenEvents != inc.ProvenEvents {
					t.Errorf("incremental Verify() from the same state again: ok %v, %d proven (first %d), findings %s", r.OK, r.ProvenEvents, inc.ProvenEvents, findings(r))
				}
				// Chained: a second incremental run with nothing new reads nothing new.
				again := verifySince(t, svc, inc.State)
				if !again.OK || again.ProvenEvents != 0 {
					t.Errorf("second incremental Verify(): ok %v, %d proven, findings %s", again.OK, again.ProvenEvents, findings(again))
				}
				// A change to an event verified before: not the incremental run's to see; the
				// full verify sees it.
				mustExec(t, c, `UPDATE audit_events SET object_id = 'other' WHERE id = $1`, oldIDs[2])
				if r := verifySince(t, svc, inc.State); !r.OK {
					t.Errorf("incremental Verify() after changing an old event: %s (expected to pass: it is not re-read)", findings(r))
				}
				if r := verify(t, svc); r.OK {
					t.Error("full Verify() after changing an old event: OK")
				}
				return
			}
			if inc.OK || !hasFinding(inc, tc.kind, "") || inc.State != nil {
				t.Errorf("incremental Verify() after %s: findings %s (state %v), want %s and no new state", tc.name, findings(inc), inc.State != nil, tc.kind)
			}
		})
	}
}

// A trail of 200,000 events verified in full and then incrementally after 5,000 more
// (`go test -run TestIncrementalVerifyLarge -v ./audit/chain/` logs the rates; skipped under
// -short). Rates are measured by BenchmarkVerify / BenchmarkVerifyIncremental.
// Verifies: REQ-AUD-054
func TestIncrementalVerifyLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("200,000 events: not under -short")
	}
	t.Parallel()
	c, svc := largeTrail(t, 200_000)
	start := time.Now()
	full := verify(t, svc)
	fullTook := time.Since(start)
	if !full.OK || full.Events < 200_000 || full.State == nil {
		t.Fatalf("full Verify() of 200,000 events: ok %v, %d events, findings %s", full.OK, full.Events, findings(full))
	}
	recordAttestShip(t, c, svc, 5_000)
	start = time.Now()
	inc := verifySince(t, svc, full.State)
	incTook := time.Since(start)
	if !inc.OK || inc.Events < 5_000 || inc.Events > 6_000 || inc.State == nil || inc.State.Events < 205_000 {
		t.Fatalf("incremental Verify() after 5,000 more: ok %v, %d events read, findings %s", inc.OK, inc.Events, findings(inc))
	}
	t.Logf("full: %d events in %s (%.0f events/s); incremental: %d events in %s (%.0f events/s)",
		full.Events, fullTook.Round(time.Millisecond), float64(full.Events)/fullTook.Seconds(),
		inc.Events, incTook.Round(time.Millisecond), float64(inc.Events)/incTook.Seconds())
}

// largeTrail is a trail of n events, all shipped and under a checkpoint (the service's
// default batch size).
func largeTrail(t testing.TB, n int) (*rig, *chain.Service) {
	t.Helper()
	ctx := context.Background()
	c := &rig{}
	c.pool, c.url = testdb.NewWithURL(t)
	c.rec = audittest.Recorder(t, c.pool, nil)
	svc, err := chain.OpenIdle(ctx, chain.Config{Pool: c.pool, Recorder: c.rec, EventKeys: c.rec.EventKeys(), DatabaseURL: c.url,
		Signer: newSigner(t), SequencerInterval: 20 * time.Millisecond, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close(context.Background()) })
	c.log, c.shipper = svc.Log(), svc.Shipper()
	recordAttestShip(t, c, svc, n)
	return c, svc
}

// BenchmarkVerifyIncremental measures an incremental verify of the last 5,000 events of a
// trail of 200,000 (the full verify's state is taken once, outside the timing).
func BenchmarkVerifyIncremental(b *testing.B) {
	c, svc := largeTrail(b, 200_000)
	full := verify(b, svc)
	if !full.OK || full.State == nil {
		b.Fatalf("full Verify(): %s", findings(full))
	}
	recordAttestShip(b, c, svc, 5_000)
	var events int64
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		r := verifySince(b, svc, full.State)
		if !r.OK {
			b.Fatalf("incremental Verify(): %s", findings(r))
		}
		events += r.Events
	}
	b.StopTimer()
	b.ReportMetric(float64(events)/time.Since(start).Seconds(), "events/s")
	b.ReportMetric(time.Since(start).Seconds()/float64(b.N), "s/verify")
}
