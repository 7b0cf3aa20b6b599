package chain_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// A new leader's first background pass resumes from the state stored (signed) with the last
// complete run when that run was clean: it verifies only what came after (an old event
// tampered with meanwhile is not re-read; the auditor's full run names it). After a run with
// findings, or when the stored state is not authentic (a forged run row claiming a later
// state, signed with a copied signature), the new leader verifies in full, and the forged
// state is recorded as audit.verify.state_rejected.
// Verifies: REQ-AUD-081, REQ-AUD-082
func TestNewLeaderResumesFromLastCompleteRun(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, url := testdb.NewWithURL(t)
	rec := audittest.Recorder(t, pool, nil)
	signer := chaintest.Signer(t)
	// open starts the audit chain as a new leader (a restarted server): nothing in memory.
	open := func() *chain.Service {
		t.Helper()
		svc, err := chain.OpenIdle(ctx, chain.Config{Pool: pool, Recorder: rec, Backlog: rec, DatabaseURL: url, Signer: signer,
			EventKeys: rec.EventKeys(), SequencerInterval: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}
	var ids []uuid.UUID
	record := func(n int) {
		t.Helper()
		for range n {
			id, err := rec.RecordNow(ctx, audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "test", AuthMethod: "internal"},
				Action: "test.action", Object: audit.Object{Type: "thing", ID: "1"}, Outcome: audit.OutcomeSuccess})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
	}
	pass := func(svc *chain.Service, kind string, ok bool) chain.VerifyRun {
		t.Helper()
		run, err := svc.VerifyInBackground(ctx)
		if err != nil || run.Kind != kind || run.OK == nil || *run.OK != ok {
			t.Fatalf("VerifyInBackground() = kind %s ok %v events %d/%d findings %v, %v; want a %s run, ok %v",
				run.Kind, deref(run.OK), run.Events, run.TotalEvents, run.Findings, err, kind, ok)
		}
		return run
	}

	svc := open()
	record(5)
	chaintest.ShipAll(t, svc)
	first := pass(svc, chain.RunFull, true)
	var signed bool
	if err := pool.QueryRow(ctx, `SELECT state IS NOT NULL AND length(state_sig) = 64 FROM audit_verifications WHERE id = $1`, first.ID).Scan(&signed); err != nil || !signed {
		t.Fatalf("the clean run's state is not stored signed (%v)", err)
	}
	if err := svc.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// A new leader: an incremental pass from the stored state, reading only the new events.
	svc = open()
	t.Cleanup(func() { _ = svc.Close(context.Background()) })
	record(2)
	chaintest.ShipAll(t, svc)
	if _, err := pool.Exec(ctx, `UPDATE audit_events SET action = 'test.other' WHERE id = $1`, ids[1]); err != nil {
		t.Fatal(err)
	}
	resumed := pass(svc, chain.RunIncremental, true)
	if resumed.Events >= first.Events || resumed.TotalEvents <= first.Events {
		t.Errorf("resumed pass verified %d events (%d in all), the first %d; want only the new ones", resumed.Events, resumed.TotalEvents, first.Events)
	}
	// Asked for (POST): a full run, which names the old event.
	if _, err := svc.StartFullVerify(ctx, audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "auditor-1", AuthMethod: "password+totp"}}); err != nil {
		t.Fatal(err)
	}
	svc.WaitVerifications()
	latest, err := svc.LatestVerification(ctx)
	if err != nil || latest.Kind != chain.RunFull || latest.OK == nil || *latest.OK || !hasFinding(&chain.Report{Findings: latest.Findings}, chain.FindingModified, ids[1].String()) {
		t.Fatalf("LatestVerification() after the full run = %+v, %v; want a full run naming %s modified", latest.VerifyRun, err, ids[1])
	}
	if err := svc.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// The last complete run had findings: the next leader verifies in full.
	svc = open()
	pass(svc, chain.RunFull, false)
	if _, err := pool.Exec(ctx, `UPDATE audit_events SET action = 'test.action' WHERE id = $1`, ids[1]); err != nil {
		t.Fatal(err)
	}
	clean := pass(svc, chain.RunFull, true)
	if err := svc.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// A run row forged by the database's writers, claiming a state past events it never
	// verified (the real state's signature copied): the new leader does not trust it.
	record(1)
	if _, err := pool.Exec(ctx, `INSERT INTO audit_verifications (kind, started_at, finished_at, ok, events, total_events, state, state_sig)
		SELECT 'incremental', now(), now(), true, 1, total_events + 1,
			convert_to(jsonb_set(convert_from(state, 'UTF8')::jsonb, '{event_seq}', to_jsonb((SELECT max(seq) FROM audit_events)))::text, 'UTF8'), state_sig
		FROM audit_verifications WHERE id = $1`, clean.ID); err != nil {
		t.Fatal(err)
	}
	svc = open()
	chaintest.ShipAll(t, svc)
	pass(svc, chain.RunFull, true)
	var rejected int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM audit_events WHERE action = 'audit.verify.state_rejected' AND reason = 'invalid_state_signature'`).Scan(&rejected); err != nil || rejected != 1 {
		t.Errorf("audit.verify.state_rejected events = %d, %v; want 1", rejected, err)
	}
}

func deref(b *bool) any {
	if b == nil {
		return nil
	}
	return *b
}

// BenchmarkLeaderFirstPass measures a new leader's first background pass on a trail of
// 50,000 events: resumed from the stored state (1,000 events recorded since, per iteration;
// "s/pass"), against the full pass the first leader ran ("s/full", once, outside the timing).
func BenchmarkLeaderFirstPass(b *testing.B) {
	ctx := context.Background()
	c := &rig{}
	c.pool, c.url = testdb.NewWithURL(b)
	c.rec = audittest.Recorder(b, c.pool, nil)
	signer := newSigner(b)
	open := func() *chain.Service {
		svc, err := chain.OpenIdle(ctx, chain.Config{Pool: c.pool, Recorder: c.rec, EventKeys: c.rec.EventKeys(), DatabaseURL: c.url,
			Signer: signer, SequencerInterval: 20 * time.Millisecond, Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		c.log, c.shipper = svc.Log(), svc.Shipper()
		return svc
	}
	svc := open()
	recordAttestShip(b, c, svc, 50_000)
	start := time.Now()
	full, err := svc.VerifyInBackground(ctx)
	if err != nil || full.Kind != chain.RunFull || full.OK == nil || !*full.OK {
		b.Fatalf("first leader's pass = %+v, %v", full, err)
	}
	fullSecs := time.Since(start).Seconds()
	_ = svc.Close(ctx)
	var secs float64
	var events int64
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		svc := open()
		recordAttestShip(b, c, svc, 1_000)
		b.StartTimer()
		start := time.Now()
		run, err := svc.VerifyInBackground(ctx)
		secs += time.Since(start).Seconds()
		b.StopTimer()
		if err != nil || run.Kind != chain.RunIncremental || run.OK == nil || !*run.OK {
			b.Fatalf("new leader's first pass = %+v, %v", run, err)
		}
		events += run.Events
		_ = svc.Close(ctx)
		b.StartTimer()
	}
	b.ReportMetric(fullSecs, "s/full")
	b.ReportMetric(secs/float64(b.N), "s/pass")
	b.ReportMetric(float64(events)/float64(b.N), "events/pass")
}
