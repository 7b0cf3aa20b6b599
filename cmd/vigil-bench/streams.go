package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/obs"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/envelope"
	"github.com/vigilhealth/vigil/internal/cpuacct"
	"github.com/vigilhealth/vigil/internal/pglisten"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/portal"
	"github.com/vigilhealth/vigil/server"
)

// `vigil-bench streams`: how many portal live sessions (the ward overview's SSE stream) one
// server holds while devices upload. It builds the stack of vigil serve in this process
// (core with the rules engine and alarm service, devices, auth, the portal, the echo server
// on loopback), admits a fleet of devices' patients to wards, signs clinicians of those wards
// in through the portal's sign-in form (password and TOTP), opens each one's ward overview and
// the live stream its page (portal/web/static/ward.js) opens, then drives signed uploads at
// the asked rate and measures, for every accepted upload and every session of its ward, the
// time from the upload's accepted answer to its "observations" event arriving on the stream.

func newStreamsCmd() *cobra.Command {
	var o streamOpts
	var sessions string
	cmd := &cobra.Command{
		Use:   "streams",
		Short: "Portal live sessions (SSE) held while devices upload: upload → stream latency, missed events",
		Long: `Measure how many portal live sessions one server holds while devices upload. The stack is
vigil serve's (core, rules engine, alarms, devices, auth, portal, server) in this process, on
a fresh database vigil_bench_<random> of the PostgreSQL server at VIGIL_DATABASE_URL.

--devices patients (one device each) are spread over --wards wards; clinicians, one per
session, spread over the same wards, each holding the clinician role on their ward, sign in
through the portal's form (POST /signin with password and TOTP: the session cookie), read
their ward overview (GET /) and open the stream that page opens (GET /api/v1/stream with the
page's patients and the tile's event types). Each round adds sessions up to the next count of
--sessions and sends signed uploads for --warmup + --duration at --rate.

For every upload accepted in the measured window it reports, over every session of the
upload's ward, the time from the upload's accepted answer (201) to its "observations" event
on the stream (p50, p99, max; an event may arrive before the answer: counted as 0), events
missed (not arrived --grace after the window), sessions reset or lost, the upload answers'
own latency, and CPU (this process; PostgreSQL) and memory. Without --readers-process the
process is server, uploaders and stream readers together; with it the readers run in a child
process of their own (their CPU in its own column) and this process is the server and the
uploaders. "per upload" is this process's CPU divided by the uploads accepted; "per
delivery" is its CPU divided by the events delivered to sessions — or, after a round of 0
sessions (put 0 first in --sessions) accepted within 10% of the same rate, marked "+", the
CPU above that round's per-upload cost divided by the deliveries: what a delivery adds. A round passes when p99 ≤
--target, no event is missed and at least 95% of the offered uploads were accepted.

--coalesce sets how long a stream may hold tile updates to write them together (the
server's StreamCoalesce: 0 its default, 50 ms; negative: never held), to compare.`,
		Example: `  VIGIL_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres vigil-bench streams --rate 2000 --sessions 100,250,500,750,1000`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, v := range strings.Split(sessions, ",") {
				n, err := strconv.Atoi(strings.TrimSpace(v))
				if err != nil || n < 0 {
					return fmt.Errorf("--sessions %q: want a list of counts ≥ 0", sessions)
				}
				o.sessions = append(o.sessions, n)
			}
			sort.Ints(o.sessions)
			if o.sessions[0] < 0 {
				return fmt.Errorf("--sessions %q: want counts ≥ 0", sessions)
			}
			return runBenchStreams(cmd.Context(), cmd.OutOrStdout(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&sessions, "sessions", "100,250,500", "session counts, one round each (ascending; sessions stay open between rounds)")
	f.IntVar(&o.wards, "wards", 20, "wards (patients and sessions are spread evenly over them)")
	f.IntVar(&o.devices, "devices", 1000, "devices, each with its own patient")
	f.IntVar(&o.samples, "samples", 5, "samples per upload (one of each vital a tile shows)")
	f.Float64Var(&o.rate, "rate", 2000, "target uploads per second")
	f.DurationVar(&o.duration, "duration", 20*time.Second, "measured duration of each round")
	f.DurationVar(&o.warmup, "warmup", 3*time.Second, "unmeasured warm-up before each round")
	f.DurationVar(&o.grace, "grace", 3*time.Second, "wait after a round before counting an event missed")
	f.DurationVar(&o.target, "target", time.Second, "the p99 upload → stream latency a round must meet")
	f.IntVar(&o.workers, "workers", 128, "concurrent uploading HTTP clients")
	f.IntVar(&o.poolSize, "pool", 16, "database connections")
	f.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of the last round's measured window to this file")
	f.BoolVar(&o.keep, "keep", false, "keep the benchmark database")
	f.BoolVar(&o.readersProcess, "readers-process", false, "read the streams in a child process (this tool again), not in the server's")
	f.DurationVar(&o.coalesce, "coalesce", 0, "the server's StreamCoalesce (0: its default; negative: tile updates never held)")
	cmd.AddCommand(newStreamReadersCmd())
	return cmd
}

type streamOpts struct {
	sessions                                   []int
	wards, devices, samples, workers, poolSize int
	rate                                       float64
	duration, warmup, grace, target            time.Duration
	cpuprofile                                 string
	keep, readersProcess                       bool
	coalesce                                   time.Duration
}

const streamBenchPassword = "vigil bench correct horse"

// streamSession is one signed-in clinician's ward overview stream.
type streamSession struct {
	ward   int
	cookie *http.Cookie
	url    string // the stream URL the page opens

	mu       sync.Mutex
	arrivals map[uuid.UUID]time.Time // upload id → when its observations event arrived
	lastID   uint64
	disorder int   // events whose id was not above the previous one's
	resets   int   // "reset" events (the server dropped a slow stream, or a resume gap)
	ended    error // the stream ended (nil while open)
	open     atomic.Bool
}

// acceptedUpload is an upload accepted in a round's measured window.
type acceptedUpload struct {
	id           uuid.UUID // its audit event: the upload_id of its observations event
	ward         int
	sent, answer time.Time
}

func runBenchStreams(ctx context.Context, out io.Writer, o streamOpts) error {
	if len(o.sessions) == 0 || o.wards < 1 || o.devices < o.wards || o.samples < 1 || o.rate <= 0 || o.duration <= 0 || o.workers < 1 {
		return errors.New("--sessions, --wards, --samples, --rate, --duration and --workers must be positive, --devices at least --wards")
	}
	o.workers = min(o.workers, o.devices)
	maxSessions := o.sessions[len(o.sessions)-1]
	pool, drop, err := benchPool(ctx, o.poolSize, o.keep)
	if err != nil {
		return err
	}
	defer drop()
	ring, closeRing, err := benchRing(ctx)
	if err != nil {
		return err
	}
	defer closeRing()
	signer, err := ring.Signer(ctx, keys.ReceiptSigning)
	if err != nil {
		return err
	}

	// The stack of vigil serve (cmd/vigil/wire.go) minus the audit chain's shipper to the
	// transparency log, which is not on the path of an upload or a stream.
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	rec, err := audit.NewOutbox(audit.Config{Pool: pool})
	if err != nil {
		return err
	}
	defer rec.Close()
	// One LISTEN connection for the device cache and the policy, as `vigil serve` does.
	listen := pglisten.New(pool, quiet)
	handoff := obs.NewHandoff(obs.HandoffConfig{Logger: quiet})
	cs, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: ring.PHI(), Handoff: handoff, Logger: quiet})
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
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		_ = eng.Close(cctx)
	}()
	ds, err := devices.New(devices.Config{Pool: pool, Recorder: rec, Ingester: cs, ReceiptSigner: signer, Logger: quiet, Listener: listen})
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = ds.Close(cctx)
	}()
	// Sessions outlive the run (the idle timeout would end them between rounds; a stream is
	// not activity). Passwords are hashed cheaply: sign-in is not what is measured.
	as2, err := auth.New(ctx, auth.Config{Pool: pool, Sealer: ring.PHI(), Audit: rec, Logger: quiet,
		Password: auth.PasswordConfig{Time: 1, MemoryKiB: 8 * 1024, Threads: 1},
		Session:  auth.SessionConfig{Insecure: true, IdleTimeout: 2 * time.Hour},
		Lockout:  auth.LockoutConfig{SourceThreshold: 1 << 20}, Listener: listen})
	if err != nil {
		return err
	}
	listenCtx, stopListen := context.WithCancel(ctx)
	listened := make(chan struct{})
	go func() { defer close(listened); _ = listen.Run(listenCtx) }()
	defer func() { stopListen(); <-listened }()
	ps, err := portal.New(portal.Config{Auth: as2, Core: cs, Recorder: rec, Alarms: as, Rules: eng, Devices: ds, Logger: quiet})
	if err != nil {
		return err
	}
	srv, err := server.New(server.Config{Pool: pool, Recorder: rec, Core: cs, Devices: ds, Alarms: as, Rules: eng,
		Portal: ps, Auth: as2, Logger: quiet, MaxStreams: maxSessions + 100, StreamCoalesce: o.coalesce})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	sctx, stopServer := context.WithCancel(ctx)
	defer stopServer()
	go func() { _ = srv.Serve(sctx, ln, 5*time.Second) }()
	base := "http://" + ln.Addr().String()

	// Wards, patients and devices.
	admin := audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "bench", AuthMethod: "internal"}, RequestID: "bench"}
	site, err := cs.CreateSite(ctx, admin, "Bench hospital")
	if err != nil {
		return err
	}
	wards := make([]uuid.UUID, o.wards)
	for i := range wards {
		w, err := cs.CreateWard(ctx, admin, site.ID, fmt.Sprintf("Ward %d", i+1))
		if err != nil {
			return err
		}
		wards[i] = w.ID
	}
	fmt.Fprintf(out, "provisioning %d devices and patients in %d wards…\n", o.devices, o.wards)
	fleet, err := provisionFleet(ctx, cs, ds, o.devices, func(i int) *uuid.UUID { return &wards[i%o.wards] })
	if err != nil {
		return err
	}
	wardOf := make(map[uuid.UUID]int, len(fleet)) // device → ward index
	for i, d := range fleet {
		wardOf[d.id] = i % o.wards
	}

	// Clinicians, signed in through the portal.
	fmt.Fprintf(out, "enrolling and signing in %d clinicians through the portal…\n", maxSessions)
	sessions, err := signInClinicians(ctx, as2, base, wards, maxSessions)
	if err != nil {
		return err
	}
	var readers streamReaders = newLocalReaders(ctx)
	if o.readersProcess {
		if readers, err = startChildReaders(ctx); err != nil {
			return err
		}
	}
	defer readers.close()

	// Uploads, pre-signed before each round (device-side work is not the server's; signed
	// just before it, so that their send times are within the server's clock skew).
	perWorker := (int(o.rate*(o.duration+o.warmup).Seconds()) + o.workers - 1) / o.workers
	seqs := make([]uint64, len(fleet))
	upTransport := &http.Transport{MaxIdleConns: o.workers * 2, MaxIdleConnsPerHost: o.workers * 2, IdleConnTimeout: time.Minute}
	upClient := &http.Client{Transport: upTransport, Timeout: 30 * time.Second}
	defer upTransport.CloseIdleConnections()

	fmt.Fprintf(out, "\nstreams: %d devices in %d wards, %d samples per upload, target %.0f uploads/s, %d upload workers, %d CPUs (GOMAXPROCS %d)\n",
		o.devices, o.wards, o.samples, o.rate, o.workers, runtime.NumCPU(), runtime.GOMAXPROCS(0))
	where := "in this process"
	if o.readersProcess {
		where = "in a child process"
	}
	fmt.Fprintf(out, "stream readers %s; load average %s\n", where, loadAverage())
	fmt.Fprintln(out, "| sessions | uploads/s accepted | upload answer p50 / p99 | answer → stream p50 / p99 / max | sent → stream p99 | deliveries | missed | resets / lost | CPU process / PostgreSQL / readers | process CPU per upload / per delivery | heap / RSS / goroutines | meets |")
	fmt.Fprintln(out, "|---|---|---|---|---|---|---|---|---|---|---|---|")
	opened := 0
	var base0 roundBase // the round of 0 sessions
	for ri, n := range o.sessions {
		// Open the sessions' streams up to n, each once its header has arrived.
		if n > opened {
			if err := readers.open(ctx, base, sessions[opened:n]); err != nil {
				return err
			}
			opened = n
		}
		if err := readers.reset(); err != nil {
			return err
		}
		last := ri == len(o.sessions)-1
		uploads := presign(fleet, benchOpts{workers: o.workers, samples: o.samples}, perWorker, seqs)
		res, err := streamRound(ctx, o, pool, base, upClient, uploads, wardOf, last, readers)
		if err != nil {
			return err
		}
		time.Sleep(o.grace)
		st, err := readers.collect(o.wards, res.accepted)
		if err != nil {
			return err
		}
		if b := writeStreamRound(out, o, n, res, st, base0); n == 0 {
			base0 = b
		}
	}
	fmt.Fprintf(out, "load average %s\n", loadAverage())
	return nil
}

// loadAverage is the machine's load average (1, 5, 15 minutes), "?" where /proc is not
// available.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

type roundResult struct {
	accepted       []acceptedUpload
	sent           int
	answers        []time.Duration
	cpu            cpuacct.Report
	cpuOK          bool
	elapsed        time.Duration
	heap, rss      uint64
	goroutines     int
	statusFailures map[int]int
	readersCPU     time.Duration // the readers' process over the measured window, when a child's
	readersCPUOK   bool
}

// streamRound sends uploads for warm-up + duration at o.rate and returns those accepted in
// the measured window.
func streamRound(ctx context.Context, o streamOpts, pool *pgxpool.Pool, base string, client *http.Client,
	uploads [][][]byte, wardOf map[uuid.UUID]int, profile bool, readers streamReaders) (*roundResult, error) {
	started := time.Now()
	measureAt := started.Add(o.warmup)
	endAt := measureAt.Add(o.duration)
	interval := time.Duration(float64(time.Second) * float64(o.workers) / o.rate)
	type workerOut struct {
		acc     []acceptedUpload
		answers []time.Duration
		sent    int
		fails   map[int]int
	}
	outs := make([]workerOut, o.workers)
	res := &roundResult{statusFailures: map[int]int{}}
	cpuDone := make(chan struct{})
	go func() {
		defer close(cpuDone)
		time.Sleep(time.Until(measureAt))
		a := cpuacct.Take(ctx, pool)
		child, _ := readers.(*childReaders)
		var r0 time.Duration
		if child != nil {
			if _, err := child.call(readerRequest{Op: "cpu"}); err == nil { // answered with the child's CPU
				r0 = child.cpu
			}
		}
		var prof *os.File
		if profile && o.cpuprofile != "" {
			if f, err := os.Create(o.cpuprofile); err == nil && pprof.StartCPUProfile(f) == nil {
				prof = f
			}
		}
		time.Sleep(time.Until(endAt))
		if prof != nil {
			pprof.StopCPUProfile()
			prof.Close()
		}
		res.cpu, res.cpuOK = cpuacct.Between(a, cpuacct.Take(ctx, pool)), true
		if child != nil && r0 > 0 {
			if _, err := child.call(readerRequest{Op: "cpu"}); err == nil {
				res.readersCPU, res.readersCPUOK = child.cpu-r0, true
			}
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		res.heap, res.rss, res.goroutines = ms.HeapInuse, selfRSS(), runtime.NumGoroutine()
	}()
	var wg sync.WaitGroup
	for w := 0; w < o.workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			me := &outs[w]
			me.fails = map[int]int{}
			at := started.Add(time.Duration(int64(interval) * int64(w) / int64(o.workers)))
			for _, raw := range uploads[w] {
				now := time.Now()
				if now.After(endAt) || ctx.Err() != nil {
					return
				}
				if d := at.Sub(now); d > 0 {
					time.Sleep(d)
				}
				at = at.Add(interval)
				t0 := time.Now()
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/v1/uploads", bytes.NewReader(raw))
				req.Header.Set("Content-Type", server.MIMECBOR)
				req.Header.Set("Accept", server.MIMECBOR) // the receipt as a device takes it
				resp, err := client.Do(req)
				code, body := -1, []byte(nil)
				if err == nil {
					body, _ = io.ReadAll(io.LimitReader(resp.Body, 1<<16))
					resp.Body.Close()
					code = resp.StatusCode
				}
				t1 := time.Now()
				if !t0.After(measureAt) || !t1.Before(endAt) {
					continue
				}
				me.sent++
				me.answers = append(me.answers, t1.Sub(t0))
				if code != http.StatusCreated {
					me.fails[code]++
					continue
				}
				_, r, err := envelope.ParseSignedReceipt(body)
				if err != nil {
					me.fails[-2]++
					continue
				}
				id, err := uuid.Parse(r.AuditEvent)
				dev, err2 := uuid.Parse(r.Device)
				if err != nil || err2 != nil {
					me.fails[-2]++
					continue
				}
				me.acc = append(me.acc, acceptedUpload{id: id, ward: wardOf[dev], sent: t0, answer: t1})
			}
		}(w)
	}
	wg.Wait()
	<-cpuDone
	res.elapsed = min(time.Since(measureAt), o.duration)
	for _, w := range outs {
		res.accepted = append(res.accepted, w.acc...)
		res.answers = append(res.answers, w.answers...)
		res.sent += w.sent
		for k, v := range w.fails {
			res.statusFailures[k] += v
		}
	}
	return res, nil
}

// writeStreamRound writes a round's row; it returns the process's CPU per accepted upload.
func writeStreamRound(out io.Writer, o streamOpts, n int, res *roundResult, st streamStats, base0 roundBase) roundBase {
	p := func(d time.Duration) string {
		if d < 0 {
			return "—"
		}
		return fmtDur(d)
	}
	sortDur(res.answers)
	pa := func(q float64) string {
		if len(res.answers) == 0 {
			return "—"
		}
		return fmtDur(res.answers[min(len(res.answers)-1, int(q*float64(len(res.answers))))])
	}
	rate := float64(len(res.accepted)) / res.elapsed.Seconds()
	meets := st.Deliveries > 0 && st.FromAnswer[1] <= o.target && st.Missed == 0 && st.Lost == 0 && rate >= 0.95*o.rate
	cpu, perUp, perDelivery := "—", "—", "—"
	var perUpload time.Duration
	if res.cpuOK && len(res.accepted) > 0 {
		w := res.cpu.Window.Seconds()
		readers := "—"
		if res.readersCPUOK {
			readers = fmt.Sprintf("%.2f", res.readersCPU.Seconds()/w)
		}
		cpu = fmt.Sprintf("%.2f / %.2f / %s cores", res.cpu.Self.Seconds()/w, res.cpu.PG.Seconds()/w, readers)
		perUpload = res.cpu.Self / time.Duration(len(res.accepted))
		perUp = fmtDur(perUpload)
		if st.Deliveries > 0 {
			self := res.cpu.Self
			// What the deliveries add to the round of 0 sessions, when that round was accepted
			// at about the same rate (the per-upload cost falls as the rate grows).
			if base0.perUpload > 0 && rate > 0 && math.Abs(base0.rate-rate)/rate <= 0.1 {
				self -= base0.perUpload * time.Duration(len(res.accepted))
				perDelivery = "+"
			}
			perDelivery += fmtDur(self / time.Duration(st.Deliveries))
		}
	}
	yes := "no"
	if meets {
		yes = "**yes**"
	}
	fmt.Fprintf(out, "| %d | %.0f | %s / %s | %s / %s / %s | %s | %d | %d | %d / %d | %s | %s / %s | %d MiB / %d MiB / %d | %s |\n",
		n, rate, pa(0.5), pa(0.99), p(st.FromAnswer[0]), p(st.FromAnswer[1]), p(st.FromAnswer[2]),
		p(st.FromSent99), st.Deliveries, st.Missed, st.Resets, st.Lost, cpu, perUp, perDelivery, res.heap>>20, res.rss>>20, res.goroutines, yes)
	if len(res.statusFailures) > 0 || st.Disorder > 0 {
		fmt.Fprintf(out, "  (round of %d sessions: %d of %d uploads not accepted, by status %v (-1 transport error, -2 unreadable receipt); %d events out of order)\n",
			n, res.sent-len(res.accepted), res.sent, res.statusFailures, st.Disorder)
	}
	return roundBase{perUpload: perUpload, rate: rate}
}

// roundBase is a round of 0 sessions: the process's CPU per upload at its accepted rate.
type roundBase struct {
	perUpload time.Duration
	rate      float64
}

func sortDur(d []time.Duration) { sort.Slice(d, func(i, j int) bool { return d[i] < d[j] }) }

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}

// selfRSS is this process's resident set (VmRSS), 0 where /proc is not available.
func selfRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// signInClinicians enrolls n clinicians, clinician i holding the clinician role on ward
// i % len(wards) with a password and TOTP (as through their enrollment link), and signs each
// in through the portal's form with the next TOTP code. It returns their sessions, each with
// the stream its ward overview opens.
func signInClinicians(ctx context.Context, svc *auth.Service, base string, wards []uuid.UUID, n int) ([]*streamSession, error) {
	o := auth.Origin{Actor: audit.Actor{Kind: audit.ActorService, ID: "bench", AuthMethod: "internal"}, RequestID: "bench"}
	cookieName := svc.Config().Session.CookieName
	run := uuid.NewString()[:8]
	out := make([]*streamSession, n)
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		mu    sync.Mutex
		first error
	)
	code := func(secret string, at time.Time) (string, error) {
		return totp.GenerateCodeCustom(secret, at, totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	}
	one := func(i int) error {
		email := fmt.Sprintf("clinician-%s-%d@bench.example", run, i)
		u, err := svc.CreateUser(ctx, o, auth.Profile{Email: email, DisplayName: fmt.Sprintf("Clinician %d", i)})
		if err != nil {
			return err
		}
		ward := i % len(wards)
		if err := svc.GrantRole(ctx, o, auth.UserSubject(u.ID), auth.RoleClinician, auth.WardDomain(wards[ward])); err != nil {
			return err
		}
		en, err := svc.IssueEnrollment(ctx, o, u.ID)
		if err != nil {
			return err
		}
		offer, err := svc.StartEnrollment(ctx, auth.Origin{}, en.Token)
		if err != nil {
			return err
		}
		c, err := code(offer.Secret, time.Now())
		if err != nil {
			return err
		}
		if _, err := svc.CompleteEnrollment(ctx, auth.Origin{}, en.Token, streamBenchPassword, c); err != nil {
			return err
		}
		// The enrollment used this step's code; sign-in takes the next step's (accepted
		// within one step of the clock, and each step only once).
		if c, err = code(offer.Secret, time.Now().Add(30*time.Second)); err != nil {
			return err
		}
		form := url.Values{"email": {email}, "password": {streamBenchPassword}, "totp": {c}}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/signin", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", base)
		res, err := noRedirect.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		var cookie *http.Cookie
		for _, ck := range res.Cookies() {
			if ck.Name == cookieName {
				cookie = ck
			}
		}
		if res.StatusCode != http.StatusSeeOther || cookie == nil {
			return fmt.Errorf("POST /signin = %d (cookie %v), want 303 with the session cookie", res.StatusCode, cookie != nil)
		}
		// The ward overview, as the browser then shows it: its stream URL and patients.
		req, _ = http.NewRequestWithContext(ctx, http.MethodGet, base+"/", nil)
		req.AddCookie(cookie)
		res, err = noRedirect.Do(req)
		if err != nil {
			return err
		}
		page, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("GET / = %d, want 200", res.StatusCode)
		}
		streamURL, err := wardStreamURL(page)
		if err != nil {
			return err
		}
		out[i] = &streamSession{ward: ward, cookie: cookie, url: streamURL}
		return nil
	}
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := one(i); err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("clinician %d: %w", i, err)
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return out, first
}

var (
	wardDivRE  = regexp.MustCompile(`<div id="ward"[^>]*>`)
	wardAttrRE = regexp.MustCompile(`data-(stream|patients)="([^"]*)"`)
)

// wardStreamURL is the stream URL portal/web/static/ward.js opens for the ward overview page:
// the page's data-stream with its patients and the event types a tile shows.
func wardStreamURL(page []byte) (string, error) {
	div := wardDivRE.Find(page)
	if div == nil {
		return "", errors.New("the ward overview has no #ward element")
	}
	var stream string
	var ids []string
	for _, m := range wardAttrRE.FindAllSubmatch(div, -1) {
		switch string(m[1]) {
		case "stream":
			stream = string(m[2])
		case "patients":
			ids = strings.Fields(string(m[2]))
		}
	}
	if stream == "" || len(ids) == 0 {
		return "", errors.New("the ward overview names no stream or no patients")
	}
	q := url.Values{}
	for _, id := range ids {
		q.Add("patient_id", id)
	}
	q.Add("type", core.TypeObservations)
	for _, k := range []string{"opened", "retriggered", "severity_escalated", "severity_deescalated", "acknowledged",
		"silenced", "silence_expired", "escalated", "reminder", "resolved"} {
		q.Add("type", "alarm."+k)
	}
	return stream + "?" + q.Encode(), nil
}

// openStream opens s's stream and reads it until ctx ends, recording each observations event's
// arrival. It returns once the stream's header has arrived.
func openStream(ctx context.Context, client *http.Client, base string, s *streamSession, readers *sync.WaitGroup) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+s.url, nil)
	if err != nil {
		return err
	}
	req.AddCookie(s.cookie)
	req.Header.Set("Accept", "text/event-stream")
	res, err := client.Do(req)
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 512))
		res.Body.Close()
		return fmt.Errorf("GET /api/v1/stream = %d: %s", res.StatusCode, b)
	}
	s.open.Store(true)
	readers.Add(1)
	go func() {
		defer readers.Done()
		defer res.Body.Close()
		err := readSSE(res.Body, s)
		s.open.Store(false)
		if ctx.Err() == nil {
			s.mu.Lock()
			s.ended = fmt.Errorf("stream ended: %v", err)
			s.mu.Unlock()
		}
	}()
	return nil
}

var uploadIDKey = []byte(`"upload_id":"`)

// readSSE reads server-sent events from r into s until r ends.
func readSSE(r io.Reader, s *streamSession) error {
	br := bufio.NewReaderSize(r, 8<<10)
	var typ string
	var id uint64
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A longer line than the buffer: keep reading it (only data lines are this long).
			rest := append([]byte(nil), line...)
			for err == bufio.ErrBufferFull {
				line, err = br.ReadSlice('\n')
				rest = append(rest, line...)
			}
			line = rest
		}
		if err != nil {
			return err
		}
		line = bytes.TrimRight(line, "\r\n")
		switch {
		case len(line) == 0:
			typ, id = "", 0
		case bytes.HasPrefix(line, []byte("id: ")):
			id, _ = strconv.ParseUint(string(line[4:]), 10, 64)
		case bytes.HasPrefix(line, []byte("event: ")):
			typ = string(line[7:])
			if typ == "reset" {
				s.mu.Lock()
				s.resets++
				s.mu.Unlock()
			}
		case bytes.HasPrefix(line, []byte("data: ")) && typ == core.TypeObservations:
			at := time.Now()
			data := line[6:]
			k := bytes.Index(data, uploadIDKey)
			if k < 0 || len(data) < k+len(uploadIDKey)+36 {
				continue
			}
			up, err := uuid.ParseBytes(data[k+len(uploadIDKey) : k+len(uploadIDKey)+36])
			if err != nil {
				continue
			}
			s.mu.Lock()
			if id <= s.lastID {
				s.disorder++
			}
			s.lastID = id
			if s.arrivals != nil {
				s.arrivals[up] = at
			}
			s.mu.Unlock()
		}
	}
}
