package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/obs"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/envelope"
	"github.com/vigilhealth/vigil/internal/cpuacct"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/server"
)

// `vigil-bench uploads`: the end-to-end load test of the device upload path. It builds the
// real stack in this process (a fresh database on the PostgreSQL server of
// VIGIL_DATABASE_URL, a local key ring, the audit recorder, core with the rules engine and
// the alarm service draining its hand-off, devices, the echo server on loopback), enrolls a
// fleet of devices, pre-signs their uploads (device-side work is not the server's), then
// sends them over HTTP at the asked rate and reports throughput and latency.

func newUploadsCmd() *cobra.Command {
	var o benchOpts
	up := &cobra.Command{
		Use:   "uploads",
		Short: "Signed uploads end to end over HTTP: verified, stored, audited, evaluated by the rules",
		Long: `Measure signed uploads per second end to end over HTTP on loopback: each upload is
verified (Ed25519, sequence, skew), stored through core (COPY of its samples, provenance,
its audit event in the outbox) with its receipt, in group-committed transactions, and its
observations are then evaluated by the real rules engine (every default rule, alarms opened
as the data says) through the same hand-off as in vigil serve.

It needs VIGIL_DATABASE_URL pointing at a PostgreSQL server where it may CREATE DATABASE:
the run uses a fresh database vigil_bench_<random>, dropped at the end unless --keep.

Besides throughput and latency it reports the CPU time spent per accepted upload in the
measured window by this process (server and load generator), by PostgreSQL's processes for
the benchmark database and its background writers (read from /proc, so only when PostgreSQL
runs on this Linux host), and by the whole machine; and the CPU-bound ceiling, cores ÷
(vigil + PostgreSQL CPU per upload). On a shared machine throughput moves with whatever else
runs; CPU per upload moves much less.

With --replicas N it also reports the rules_inbox rows not yet evaluated at the end of the
window apart from those evaluated and waiting for their checkpoint, how many group commits
waited for a deep inbox (back-pressure), the CPU per upload until every forwarded row was
evaluated, and then with one checkpoint of every replica (which deletes the rows evaluated).`,
		Example: `  VIGIL_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres vigil-bench uploads --rate 10000 --duration 20s
  vigil-bench uploads --rate 0 --workers 128 --cpuprofile cpu.pprof   # as fast as possible`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBenchUploads(cmd.Context(), cmd.OutOrStdout(), o)
		},
	}
	f := up.Flags()
	f.IntVar(&o.devices, "devices", 1000, "devices (each with its own patient)")
	f.IntVar(&o.samples, "samples", 10, "samples per upload")
	f.Float64Var(&o.rate, "rate", 10000, "target uploads per second (0: as fast as the workers go)")
	f.DurationVar(&o.duration, "duration", 20*time.Second, "measured duration")
	f.DurationVar(&o.warmup, "warmup", 3*time.Second, "unmeasured warm-up before it")
	f.IntVar(&o.workers, "workers", 256, "concurrent HTTP clients (each owns devices/workers devices)")
	f.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of the measured window to this file")
	f.BoolVar(&o.keep, "keep", false, "keep the benchmark database")
	f.IntVar(&o.batch, "batch", 0, "devices.Config.BatchMaxUploads (0: default)")
	f.DurationVar(&o.batchWait, "batch-wait", 0, "devices.Config.BatchMaxWait (0: default)")
	f.IntVar(&o.committers, "committers", 0, "devices.Config.Committers (0: default; with --replicas N, as vigil serve --replicas N: 2 divided by N, at least 1)")
	f.IntVar(&o.poolSize, "pool", 16, "database connections")
	f.IntVar(&o.replicas, "replicas", 0, "replicas of the serving stack on the database, each wired as vigil serve with several replicas (lease buckets, rules inbox, hub relay), the workers spread over them; 0: one stack without leases")
	f.BoolVar(&o.noRules, "no-rules", false, "store only: no rules engine behind core (the path before it had one; for comparisons)")
	return up
}

type benchOpts struct {
	devices, samples, workers, batch, committers, poolSize int
	replicas                                               int
	rate                                                   float64
	duration, warmup, batchWait                            time.Duration
	cpuprofile                                             string
	keep, noRules                                          bool
}

type benchDevice struct {
	id      uuid.UUID
	key     ed25519.PrivateKey
	patient uuid.UUID
}

func runBenchUploads(ctx context.Context, out io.Writer, o benchOpts) error {
	if o.devices < 1 || o.workers < 1 || o.samples < 1 || o.duration <= 0 {
		return errors.New("--devices, --workers, --samples and --duration must be positive")
	}
	if o.workers > o.devices {
		o.workers = o.devices
	}
	pool, drop, err := benchPool(ctx, o.poolSize, o.keep)
	if err != nil {
		return err
	}
	defer drop()

	// The stack: key ring, core, devices, server.
	ring, closeRing, err := benchRing(ctx)
	if err != nil {
		return err
	}
	defer closeRing()
	signer, err := ring.Signer(ctx, keys.ReceiptSigning)
	if err != nil {
		return err
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var (
		bases    []string
		handoffs []*obs.Handoff
		dss      []*devices.Service
		engs     []*rules.Engine
		cs       *core.Service
		ds       *devices.Service
		handoff  *obs.Handoff
	)
	if o.replicas > 0 {
		if o.noRules {
			return errors.New("--replicas and --no-rules: the replicas run the rules")
		}
		if o.committers == 0 { // as vigil serve --replicas N: the replicas share one's two
			o.committers = max(1, 2/o.replicas)
		}
		for range o.replicas {
			r, err := startBenchReplica(ctx, pool, ring, signer, quiet, o)
			if err != nil {
				return err
			}
			defer func() {
				cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
				defer cancel()
				_ = r.Close(cctx)
			}()
			bases, handoffs, dss, engs = append(bases, r.base), append(handoffs, r.handoff), append(dss, r.ds), append(engs, r.eng)
			if cs == nil {
				cs = r.core
			}
		}
		if err := waitShared(ctx, pool, o.replicas); err != nil {
			return err
		}
		ds = dss[0]
	} else {
		rec, err := audit.NewOutbox(audit.Config{Pool: pool})
		if err != nil {
			return err
		}
		defer rec.Close()
		// Core publishes committed observations to the hand-off; the rules engine drains it and
		// raises alarms through the alarm service, as in vigil serve.
		handoff = obs.NewHandoff(obs.HandoffConfig{Logger: quiet})
		ccfg := core.Config{Pool: pool, Recorder: rec, PHI: ring.PHI(), Handoff: handoff, Logger: quiet}
		if o.noRules {
			ccfg.Handoff = nil
		}
		cs, err = core.New(ccfg)
		if err != nil {
			return err
		}
		if err := cs.MaintainPartitions(ctx); err != nil {
			return err
		}
		as, err := alarms.New(alarms.Config{Pool: pool, Recorder: rec, Notifier: cs.Hub(), Logger: quiet})
		if err != nil {
			return err
		}
		eng, err := rules.New(ctx, rules.Config{Pool: pool, Recorder: rec, Alarms: as, History: cs, Handoff: handoff, Logger: quiet})
		if err != nil {
			return err
		}
		if o.noRules {
			_ = handoff.Stop(ctx) // nothing is handed off
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			_ = eng.Close(cctx)
		}()
		ds, err = devices.New(devices.Config{Pool: pool, Recorder: rec, Ingester: cs, ReceiptSigner: signer, Logger: quiet,
			BatchMaxUploads: o.batch, BatchMaxWait: o.batchWait, Committers: o.committers})
		if err != nil {
			return err
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_ = ds.Close(cctx)
		}()
		srv, err := server.New(server.Config{Pool: pool, Recorder: rec, Devices: ds, Logger: quiet})
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		sctx, stop := context.WithCancel(ctx)
		defer stop()
		go func() { _ = srv.Serve(sctx, ln, 5*time.Second) }()
		base := "http://" + ln.Addr().String()

		bases, handoffs, dss = []string{base}, []*obs.Handoff{handoff}, []*devices.Service{ds}
	}
	// The fleet.
	fmt.Fprintf(out, "provisioning %d devices and patients…\n", o.devices)
	fleet, err := provisionFleet(ctx, cs, ds, o.devices, nil)
	if err != nil {
		return err
	}
	total := int(o.rate * (o.duration + o.warmup).Seconds())
	if o.rate <= 0 {
		total = 30000 * int((o.duration + o.warmup).Seconds())
	}
	perWorker := (total + o.workers - 1) / o.workers
	fmt.Fprintf(out, "pre-signing %d uploads of %d samples…\n", perWorker*o.workers, o.samples)
	uploads := presign(fleet, o, perWorker, nil)

	// The run.
	transport := &http.Transport{MaxIdleConns: o.workers * 2, MaxIdleConnsPerHost: o.workers * 2, IdleConnTimeout: time.Minute}
	client := &http.Client{Transport: transport, Timeout: 30 * time.Second}
	var (
		started   = time.Now()
		measureAt = started.Add(o.warmup)
		endAt     = measureAt.Add(o.duration)
		sent      atomic.Int64
		statuses  sync.Map // int → *atomic.Int64
		firstErr  sync.Map // int → string: the first answer of each failing status
		lat       = make([][]time.Duration, o.workers)
		wg        sync.WaitGroup
		profiling atomic.Bool
		cpuWindow = make(chan cpuacct.Report, 1) // CPU used in the measured window
		cpuStart  = make(chan cpuacct.Snapshot, 1)
	)
	go func() {
		time.Sleep(time.Until(measureAt))
		a := cpuacct.Take(ctx, pool)
		cpuStart <- a
		time.Sleep(time.Until(endAt))
		cpuWindow <- cpuacct.Between(a, cpuacct.Take(ctx, pool))
	}()
	if o.cpuprofile != "" {
		go func() {
			time.Sleep(time.Until(measureAt))
			f, err := os.Create(o.cpuprofile)
			if err != nil {
				slog.Error("cpuprofile", slog.String("error", err.Error()))
				return
			}
			if err := pprof.StartCPUProfile(f); err == nil {
				profiling.Store(true)
			}
		}()
	}
	interval := time.Duration(0)
	if o.rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(o.workers) / o.rate)
	}
	for w := 0; w < o.workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			mine := uploads[w]
			// Stagger workers across one interval so the load is smooth.
			next := started.Add(time.Duration(int64(interval) * int64(w) / int64(o.workers)))
			for _, raw := range mine {
				now := time.Now()
				if now.After(endAt) || ctx.Err() != nil {
					return
				}
				if interval > 0 {
					if d := next.Sub(now); d > 0 {
						time.Sleep(d)
					}
					next = next.Add(interval)
				}
				t0 := time.Now()
				resp, err := client.Post(bases[w%len(bases)]+"/api/v1/uploads", "application/cbor", bytes.NewReader(raw))
				code := -1
				if err == nil {
					if resp.StatusCode != http.StatusCreated {
						b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
						firstErr.LoadOrStore(resp.StatusCode, string(b))
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					code = resp.StatusCode
				} else {
					firstErr.LoadOrStore(-1, err.Error())
				}
				t1 := time.Now()
				if t0.After(measureAt) && t1.Before(endAt) {
					lat[w] = append(lat[w], t1.Sub(t0))
					sent.Add(1)
					c, _ := statuses.LoadOrStore(code, new(atomic.Int64))
					c.(*atomic.Int64).Add(1)
				}
			}
		}(w)
	}
	wg.Wait()
	if profiling.Load() {
		pprof.StopCPUProfile()
	}
	elapsed := min(time.Since(measureAt), o.duration)

	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	pct := func(p float64) time.Duration {
		if len(all) == 0 {
			return 0
		}
		return all[min(len(all)-1, int(p*float64(len(all))))]
	}
	ok := int64(0)
	if c, found := statuses.Load(http.StatusCreated); found {
		ok = c.(*atomic.Int64).Load()
	}
	fmt.Fprintf(out, "\nuploads: %d devices, %d samples each, target %.0f/s, %d workers, %d CPUs (GOMAXPROCS %d)\n",
		o.devices, o.samples, o.rate, o.workers, runtime.NumCPU(), runtime.GOMAXPROCS(0))
	fmt.Fprintf(out, "measured %s: %d requests, %d accepted (201) = %.0f uploads/s, %.0f samples/s\n",
		elapsed.Round(time.Millisecond), sent.Load(), ok, float64(ok)/elapsed.Seconds(), float64(ok)*float64(o.samples)/elapsed.Seconds())
	fmt.Fprintf(out, "latency: p50 %s  p90 %s  p99 %s  p99.9 %s  max %s\n",
		pct(0.50).Round(10*time.Microsecond), pct(0.90).Round(10*time.Microsecond), pct(0.99).Round(10*time.Microsecond),
		pct(0.999).Round(10*time.Microsecond), pct(1).Round(10*time.Microsecond))
	statuses.Range(func(k, v any) bool {
		fmt.Fprintf(out, "  status %d: %d\n", k, v.(*atomic.Int64).Load())
		if e, ok := firstErr.Load(k); ok {
			fmt.Fprintf(out, "    first: %s\n", e)
		}
		return true
	})
	select {
	case r := <-cpuWindow:
		r.Write(out, ok, runtime.NumCPU(), "upload") // this process: server and load generator
	case <-time.After(5 * time.Second):
	}
	st := ds.Stats()
	for _, d := range dss[1:] { // the other replicas
		x := d.Stats()
		st.Accepted, st.Groups, st.Rejected, st.Fallbacks = st.Accepted+x.Accepted, st.Groups+x.Groups, st.Rejected+x.Rejected, st.Fallbacks+x.Fallbacks
		st.CommitTime, st.HookTime, st.PublishTime = st.CommitTime+x.CommitTime, st.HookTime+x.HookTime, st.PublishTime+x.PublishTime
	}
	fmt.Fprintf(out, "devices: %d accepted in %d group commits (mean %.1f uploads/commit, mean %s/commit of which %s device state), %d rejected, %d fallbacks\n",
		st.Accepted, st.Groups, float64(st.Accepted)/max(float64(st.Groups), 1),
		(st.CommitTime / time.Duration(max(st.Groups, 1))).Round(10*time.Microsecond),
		(st.HookTime / time.Duration(max(st.Groups, 1))).Round(10*time.Microsecond), st.Rejected, st.Fallbacks)
	// The rules catch up with what was committed (they run behind the receipts).
	if o.noRules {
		fmt.Fprintf(out, "rules: off (--no-rules)\n")
		return storedLine(ctx, out, pool, o)
	}
	fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	var ferr error
	var hs obs.HandoffStats
	for _, h := range handoffs {
		ferr = errors.Join(ferr, h.Flush(fctx))
		x := h.Stats()
		hs.Consumed, hs.Failed, hs.Waited, hs.Queued = hs.Consumed+x.Consumed, hs.Failed+x.Failed, hs.Waited+x.Waited, hs.Queued+x.Queued
	}
	cancel()
	var cpuFrom *cpuacct.Snapshot
	select {
	case a := <-cpuStart:
		cpuFrom = &a
	default:
	}
	if o.replicas > 0 {
		// Inbox rows not yet evaluated: those evaluated wait in the table for the checkpoint of
		// their patients' state (core/rules persist), counted by each engine.
		unevaluated := func() (rows, waiting int) {
			_ = pool.QueryRow(ctx, `SELECT count(*) FROM rules_inbox`).Scan(&rows)
			for _, e := range engs {
				st := e.InboxStats()
				waiting += st.Pending
			}
			return rows, waiting
		}
		rows, waiting := unevaluated()
		var waits, timeouts int64
		for _, e := range engs {
			st := e.InboxStats()
			waits, timeouts = waits+st.PaceWaits, timeouts+st.PaceTimeouts
		}
		fmt.Fprintf(out, "replicas: %d, uploads spread round robin; rules_inbox rows at the end: %d not evaluated yet, %d evaluated and waiting for their checkpoint; uploads paced for a deep inbox: %d group commits (%d gave up waiting)\n",
			o.replicas, rows-waiting, waiting, waits, timeouts)
		// The observations forwarded to another replica's patients are evaluated from the
		// inbox behind the uploads: wait for them, so that the CPU below covers that work too.
		for deadline := time.Now().Add(5 * time.Minute); rows > waiting && time.Now().Before(deadline); {
			time.Sleep(200 * time.Millisecond)
			rows, waiting = unevaluated()
		}
		fmt.Fprintf(out, "rules_inbox evaluated %s after the end of the window (%d rows left not evaluated)\n", time.Since(endAt).Round(100*time.Millisecond), rows-waiting)
	}
	if cpuFrom != nil {
		fmt.Fprintf(out, "from the window's start until the rules caught up (%s):\n  ", time.Since(measureAt).Round(100*time.Millisecond))
		cpuacct.Between(*cpuFrom, cpuacct.Take(ctx, pool)).Write(out, ok, runtime.NumCPU(), "upload")
		if o.replicas > 0 {
			// and the checkpoint every replica writes (every minute in vigil serve), which
			// settles the inbox rows evaluated: their deletion is part of their cost.
			for _, e := range engs {
				if err := e.Checkpoint(ctx); err != nil {
					fmt.Fprintf(out, "checkpoint: %v\n", err)
				}
			}
			var left int
			_ = pool.QueryRow(ctx, `SELECT count(*) FROM rules_inbox`).Scan(&left)
			fmt.Fprintf(out, "… and one checkpoint of every replica (%s, rules_inbox rows left: %d):\n  ", time.Since(measureAt).Round(100*time.Millisecond), left)
			cpuacct.Between(*cpuFrom, cpuacct.Take(ctx, pool)).Write(out, ok, runtime.NumCPU(), "upload")
		}
	}
	var opened int64
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM alarms`).Scan(&opened)
	fmt.Fprintf(out, "rules: %d patient batches evaluated (%d failed), hand-off waited %d times (devices held back by the rules: %s in total), %d alarms opened\n",
		hs.Consumed, hs.Failed, hs.Waited, st.PublishTime.Round(time.Millisecond), opened)
	if ferr != nil {
		fmt.Fprintf(out, "rules: not caught up: %v (%d batches queued)\n", ferr, hs.Queued)
	}
	return storedLine(ctx, out, pool, o)
}

// storedLine reports what the whole run stored.
func storedLine(ctx context.Context, out io.Writer, pool *pgxpool.Pool, o benchOpts) error {
	var events, stored int64
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM audit_events WHERE action = 'upload.accepted'`).Scan(&events)
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM core_observations`).Scan(&stored)
	fmt.Fprintf(out, "stored: %d upload.accepted audit events, %d observations (whole run incl. warm-up)\n", events, stored)
	if o.cpuprofile != "" {
		fmt.Fprintf(out, "CPU profile: %s (go tool pprof -top %s)\n", o.cpuprofile, o.cpuprofile)
	}
	return nil
}

// provisionFleet creates n patients and n enrolled devices, each assigned to its patient.
// With ward, patient i is admitted to ward(i) (nil: to no ward).
func provisionFleet(ctx context.Context, cs *core.Service, ds *devices.Service, n int, ward func(i int) *uuid.UUID) ([]benchDevice, error) {
	fleet := make([]benchDevice, n)
	o := devices.Origin{Actor: audit.Actor{Kind: audit.ActorService, ID: "bench", AuthMethod: "internal"}, RequestID: "bench"}
	run := uuid.NewString()[:8]
	wardOf := func(i int) *uuid.UUID {
		if ward == nil {
			return nil
		}
		return ward(i)
	}
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		errMu sync.Mutex
		first error
	)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				err := func() error {
					p, err := cs.CreatePatient(ctx, audit.Event{Actor: o.Actor, RequestID: "bench"},
						core.PatientPHI{MRN: fmt.Sprintf("BENCH-%s-%d", run, i), GivenName: "Bench", FamilyName: fmt.Sprint(i)}, wardOf(i))
					if err != nil {
						return err
					}
					d, err := ds.Register(ctx, o, devices.NewDevice{Serial: fmt.Sprintf("BENCH-%s-%d", run, i), Model: "bench", Firmware: "1"})
					if err != nil {
						return err
					}
					tok, _, err := ds.IssueEnrollmentToken(ctx, o, d.ID)
					if err != nil {
						return err
					}
					_, priv, _ := ed25519.GenerateKey(rand.Reader)
					raw, err := envelope.SignEnroll(tok, priv, time.Now())
					if err != nil {
						return err
					}
					if _, err := ds.Enroll(ctx, raw, devices.Meta{Transport: "bench"}); err != nil {
						return err
					}
					if _, err := ds.AssignPatient(ctx, o, d.ID, &p.ID); err != nil {
						return err
					}
					fleet[i] = benchDevice{id: d.ID, key: priv, patient: p.ID}
					return nil
				}()
				if err != nil {
					errMu.Lock()
					if first == nil {
						first = fmt.Errorf("provision device %d: %w", i, err)
					}
					errMu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return fleet, first
}

// presign makes each worker's uploads: worker w owns devices w, w+workers, …, and sends
// their uploads round-robin, each device's in sequence order. seqs, when not nil, holds each
// device's last sequence number used (by fleet index) and is advanced; nil starts at 1.
func presign(fleet []benchDevice, o benchOpts, perWorker int, seqs []uint64) [][][]byte {
	// A stable patient's vital signs that move a little but trigger no rule (a ward's usual
	// traffic): heart rate, SpO2, respiratory rate, temperature, systolic pressure, each
	// stepping through three values.
	codes := []envelope.Sample{
		{Code: "8867-4", Value: 72, Unit: "/min"}, {Code: "59408-5", Value: 96, Unit: "%"},
		{Code: "9279-1", Value: 15, Unit: "/min"}, {Code: "8310-5", Value: 36.8, Unit: "Cel"},
		{Code: "8480-6", Value: 121, Unit: "mm[Hg]"},
	}
	steps := []float64{1, 1, 1, 0.1, 1}
	out := make([][][]byte, o.workers)
	now := time.Now()
	// Samples taken after the devices were assigned (a moment ago, in provisioning): a
	// reading from before its device's assignment is refused (outside_assignment), and the
	// 5-minute grace for slow device clocks covers these two minutes.
	base := now.Add(-2 * time.Minute).UnixMilli()
	var wg sync.WaitGroup
	for w := 0; w < o.workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var mine []int
			for d := w; d < len(fleet); d += o.workers {
				mine = append(mine, d)
			}
			seq := make([]uint64, len(mine))
			if seqs != nil {
				for k, d := range mine {
					seq[k] = seqs[d]
				}
				defer func() {
					for k, d := range mine {
						seqs[d] = seq[k]
					}
				}()
			}
			list := make([][]byte, 0, perWorker)
			for j := 0; j < perWorker; j++ {
				k := j % len(mine)
				dev := fleet[mine[k]]
				seq[k]++
				s := seq[k]
				samples := make([]envelope.Sample, o.samples)
				for i := range samples {
					smp := codes[i%len(codes)]
					smp.Value += float64((int(s)+i)%3) * steps[i%len(codes)]
					// Distinct times per (patient, code): no sample is a duplicate of another.
					smp.T = base + int64(s)*int64(o.samples) + int64(i)
					samples[i] = smp
				}
				raw, _, err := envelope.Sign(&envelope.Upload{Device: dev.id.String(), KeyVersion: 1, Seq: s,
					SentAt: now.UnixMilli(), Samples: samples}, dev.key)
				if err != nil {
					slog.Error("presign", slog.String("error", err.Error()))
					return
				}
				list = append(list, raw)
			}
			out[w] = list
		}(w)
	}
	wg.Wait()
	return out
}
