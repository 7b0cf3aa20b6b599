package sim

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/vigilhealth/vigil/devices/envelope"
	"github.com/vigilhealth/vigil/devices/sdk"
)

// Config configures a simulation run. Zero values take the documented defaults.
type Config struct {
	// Patients is the size of the fleet, one bedside monitor per patient. Default 10.
	Patients int
	// Rate is how many uploads per second each monitor sends (each upload carries one set
	// of the eight readings). Default 1.
	Rate float64
	// Duration is how long the fleet sends; 0 means until ctx ends (or Uploads are sent).
	Duration time.Duration
	// Uploads, when set, stops each monitor after it has measured this many uploads, however
	// long that takes: a run of a fixed size whatever the machine's speed (the scenarios'
	// timeline — Ramp, OfflineAfter, OfflineFor — counts measurement periods, not wall time).
	Uploads int
	// Scenario is what the patients go through; Mixed (the default) gives each patient one
	// of the scenarios in a fixed pattern (ScenarioFor).
	Scenario Scenario
	// Seed makes the run reproducible: the same seed gives the same readings. Default 1.
	Seed uint64
	// Ramp is how long a scenario takes to develop fully. Default 2 min.
	Ramp time.Duration
	// OfflineAfter and OfflineFor place the network outage of the offline scenario.
	// Defaults: after 1 min, for 12 min (longer than the default no-data rule's 10 min of
	// silence, so that it fires).
	OfflineAfter, OfflineFor time.Duration

	// Provisioner registers each patient's monitor and issues its enrollment token. Required.
	Provisioner Provisioner
	// Enroller carries enrollment requests (an *sdk.HTTPTransport, or InProcess). Required.
	Enroller sdk.Enroller
	// Transport returns the transport a device delivers its uploads with (one shared
	// *sdk.HTTPTransport, or one MQTT connection per device). Required.
	Transport func(ctx context.Context, id sdk.Identity) (sdk.Transport, error)
	// ReceiptKey is Vigil's receipt-signing public key; receipts are verified under it
	// unless SkipReceiptVerification.
	ReceiptKey              crypto.PublicKey
	SkipReceiptVerification bool
	// StateDir, when set, gives each monitor an on-disk buffer in StateDir/<index>;
	// otherwise buffers are in memory.
	StateDir string
	// SendTimeout bounds each delivery attempt loop. Default 10 s.
	SendTimeout time.Duration
	// Now is the device clock: uploads and enrollment are signed at Now (Vigil refuses a
	// sent_at far from its own clock), and samples are dated Now unless SampleTime is set.
	// Default time.Now.
	Now func() time.Time
	// SampleTime, when set, dates each monitor's tick-th measurement (0-based) instead of
	// Now: sample time then advances by measurement periods, not with the wall clock, so a
	// time-lapse run (a test's minutes of patient time in seconds) develops the same way
	// however slowly a loaded machine gets through its ticks. Combine it with Uploads for a
	// run whose readings and sample times are fixed. The times it returns must stay within
	// what Vigil accepts (not ahead of its clock by more than its allowed future skew).
	SampleTime func(tick int) time.Time
	// Logger receives progress messages. Default slog.Default().
	Logger *slog.Logger
}

// Result sums up a run.
type Result struct {
	Patients  int
	Uploads   int            // uploads measured and buffered
	Accepted  int            // uploads with a verified receipt
	Rejected  map[string]int // uploads refused for good, by code
	Failed    int            // delivery attempts that failed for now (the upload stayed buffered)
	Pending   int            // uploads still buffered at the end
	Backlog   int            // the most uploads one monitor held while offline
	Elapsed   time.Duration  // from the first upload to the end of the final flush
	P50, P99  time.Duration  // delivery latency of one upload (sign, send, verify receipt)
	Scenarios map[Scenario]int
}

// UploadsPerSecond is the accepted uploads per second of the run.
func (r Result) UploadsPerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Accepted) / r.Elapsed.Seconds()
}

func (c *Config) setDefaults() error {
	if c.Provisioner == nil || c.Enroller == nil || c.Transport == nil {
		return errors.New("sim: Config.Provisioner, Enroller and Transport are required")
	}
	if c.ReceiptKey == nil && !c.SkipReceiptVerification {
		return errors.New("sim: Config.ReceiptKey is required")
	}
	if c.Patients <= 0 {
		c.Patients = 10
	}
	if c.Rate <= 0 {
		c.Rate = 1
	}
	if c.Scenario == "" {
		c.Scenario = Mixed
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.Ramp <= 0 {
		c.Ramp = 2 * time.Minute
	}
	if c.OfflineAfter <= 0 {
		c.OfflineAfter = time.Minute
	}
	if c.OfflineFor <= 0 {
		c.OfflineFor = 12 * time.Minute
	}
	if c.SendTimeout <= 0 {
		c.SendTimeout = 10 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// monitor is one simulated bedside monitor.
type monitor struct {
	patient *Patient
	client  *sdk.Client
	closer  func() error

	lat      []time.Duration
	backlog  int
	uploads  int
	accepted int
	failed   int
	rejected map[string]int
}

// Run provisions and enrolls the fleet, then has every monitor measure and upload at the
// configured rate until Duration has passed or ctx ends, and finally delivers what each
// monitor still has buffered. It returns when every monitor has stopped.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.setDefaults(); err != nil {
		return Result{}, err
	}
	res := Result{Patients: cfg.Patients, Rejected: map[string]int{}, Scenarios: map[Scenario]int{}}
	mons, err := setup(ctx, &cfg)
	defer func() {
		for _, m := range mons {
			if m.closer != nil {
				_ = m.closer()
			}
		}
	}()
	if err != nil {
		return res, err
	}
	runCtx := ctx
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	start := time.Now()
	cfg.Logger.InfoContext(ctx, "sim: fleet running", slog.Int("patients", cfg.Patients),
		slog.Float64("rate_hz", cfg.Rate), slog.String("scenario", string(cfg.Scenario)), slog.Uint64("seed", cfg.Seed))
	var wg sync.WaitGroup
	for _, m := range mons {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.run(runCtx, ctx, &cfg, start)
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	var lat []time.Duration
	for _, m := range mons {
		res.Scenarios[m.patient.Scenario]++
		res.Uploads += m.uploads
		res.Accepted += m.accepted
		res.Failed += m.failed
		res.Pending += m.client.Pending()
		res.Backlog = max(res.Backlog, m.backlog)
		for k, v := range m.rejected {
			res.Rejected[k] += v
		}
		lat = append(lat, m.lat...)
	}
	slices.Sort(lat)
	if n := len(lat); n > 0 {
		res.P50 = lat[n/2]
		res.P99 = lat[min(n-1, n*99/100)]
	}
	return res, nil
}

// setup provisions and enrolls every monitor (a few at a time).
func setup(ctx context.Context, cfg *Config) ([]*monitor, error) {
	mons := make([]*monitor, cfg.Patients)
	errs := make([]error, cfg.Patients)
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i := range mons {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			mons[i], errs[i] = setupOne(ctx, cfg, i)
		}()
	}
	wg.Wait()
	out := mons[:0]
	for _, m := range mons {
		if m != nil {
			out = append(out, m)
		}
	}
	return out, errors.Join(errs...)
}

func setupOne(ctx context.Context, cfg *Config, i int) (*monitor, error) {
	p := NewPatient(cfg.Seed, i, ScenarioFor(cfg.Scenario, i))
	tok, err := cfg.Provisioner.Provision(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("sim: patient %d: %w", i, err)
	}
	id, err := sdk.Enroll(ctx, cfg.Enroller, tok, sdk.EnrollOptions{Now: cfg.Now})
	if err != nil {
		return nil, fmt.Errorf("sim: patient %d: %w", i, err)
	}
	tr, err := cfg.Transport(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("sim: patient %d: transport: %w", i, err)
	}
	dir := ""
	if cfg.StateDir != "" {
		dir = filepath.Join(cfg.StateDir, strconv.Itoa(i))
		if err := sdk.SaveIdentity(filepath.Join(dir, "identity.json"), id); err != nil {
			return nil, fmt.Errorf("sim: patient %d: %w", i, err)
		}
	}
	cl, err := sdk.New(sdk.Config{Identity: id, Transport: tr, ReceiptKey: cfg.ReceiptKey,
		SkipReceiptVerification: cfg.SkipReceiptVerification, Dir: dir, Now: cfg.Now,
		MaxAttempts: 3, MinBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("sim: patient %d: %w", i, err)
	}
	m := &monitor{patient: p, client: cl, rejected: map[string]int{}}
	m.closer = func() error {
		err := cl.Close()
		if c, ok := tr.(interface{ Close(context.Context) error }); ok {
			err = errors.Join(err, c.Close(context.Background()))
		}
		return err
	}
	return m, nil
}

// run measures and uploads at the configured rate until runCtx ends, then flushes what is
// buffered (bounded by ctx and SendTimeout).
func (m *monitor) run(runCtx, ctx context.Context, cfg *Config, start time.Time) {
	period := time.Duration(float64(time.Second) / cfg.Rate)
	// Spread the monitors over one period, deterministically, so they do not all send at once.
	phase := time.Duration(uint64(m.patient.Index) * 2654435761 % uint64(max(period, 1)))
	t := time.NewTimer(phase)
	defer t.Stop()
	for tick := 0; ; tick++ {
		select {
		case <-runCtx.Done():
			fctx, cancel := context.WithTimeout(ctx, cfg.SendTimeout)
			m.flush(fctx)
			cancel()
			return
		case <-t.C:
		}
		if cfg.Uploads > 0 && tick >= cfg.Uploads {
			fctx, cancel := context.WithTimeout(ctx, cfg.SendTimeout)
			m.flush(fctx)
			cancel()
			return
		}
		t.Reset(period)
		offset := time.Duration(tick) * period
		v := m.patient.Next(progress(offset, cfg.Ramp))
		now := cfg.Now()
		if cfg.SampleTime != nil {
			now = cfg.SampleTime(tick)
		}
		ss := v.Samples()
		samples := make([]envelope.Sample, len(ss))
		for i, s := range ss {
			samples[i] = envelope.Sample{Code: s.Code, Value: s.Value, Unit: s.Unit, T: now.UnixMilli()}
		}
		if err := m.client.Enqueue(samples); err != nil {
			m.failed++
			continue
		}
		m.uploads++
		if m.patient.Scenario == Offline && offset >= cfg.OfflineAfter && offset < cfg.OfflineAfter+cfg.OfflineFor {
			m.backlog = max(m.backlog, m.client.Pending())
			continue // no network: the upload waits in the buffer
		}
		// The delivery in progress when the run ends is let finish (bounded by SendTimeout).
		fctx, cancel := context.WithTimeout(ctx, cfg.SendTimeout)
		m.flush(fctx)
		cancel()
	}
}

func (m *monitor) flush(ctx context.Context) {
	t0 := time.Now()
	rcs, err := m.client.Flush(ctx)
	if n := len(rcs); n > 0 {
		per := time.Since(t0) / time.Duration(n)
		for range n {
			m.lat = append(m.lat, per)
		}
		m.accepted += n
	}
	if err == nil {
		return
	}
	counted := false
	for _, e := range unwrapAll(err) {
		if re, ok := e.(*sdk.RejectedError); ok && !re.Temporary() {
			m.rejected[re.Code]++
			counted = true
		}
	}
	if !counted {
		m.failed++
	}
}

// unwrapAll flattens joined and wrapped errors.
func unwrapAll(err error) []error {
	var out []error
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		out = append(out, e)
		switch x := e.(type) {
		case interface{ Unwrap() []error }:
			for _, c := range x.Unwrap() {
				walk(c)
			}
		case interface{ Unwrap() error }:
			walk(x.Unwrap())
		}
	}
	walk(err)
	return out
}

// Summary renders a result as a few lines of text for the CLI.
func (r Result) Summary() string {
	codes := make([]string, 0, len(r.Rejected))
	for k := range r.Rejected {
		codes = append(codes, k)
	}
	sort.Strings(codes)
	rej := ""
	for _, k := range codes {
		rej += fmt.Sprintf(" %s=%d", k, r.Rejected[k])
	}
	if rej == "" {
		rej = " none"
	}
	return fmt.Sprintf("patients %d  uploads %d  accepted %d (%.0f/s)  pending %d  offline backlog %d  failed attempts %d\nlatency p50 %s  p99 %s  elapsed %s\nrejected:%s\n",
		r.Patients, r.Uploads, r.Accepted, r.UploadsPerSecond(), r.Pending, r.Backlog, r.Failed,
		r.P50.Round(10*time.Microsecond), r.P99.Round(10*time.Microsecond), r.Elapsed.Round(time.Millisecond), rej)
}
