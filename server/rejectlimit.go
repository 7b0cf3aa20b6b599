package server

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"golang.org/x/time/rate"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/devices/envelope"
	"github.com/vigilhealth/vigil/internal/auditmark"
)

// Rejected requests are rate-limited per source address and per device, so that a flood of
// bad requests can neither bloat the audit trail nor load the database: each rejected
// request (4xx) spends one token of its source's bucket (and, for an upload that names a
// device, of that device's). A source with an empty bucket has every request refused at once
// with 429 rate_limited and Retry-After, before any handler runs; those refusals are not
// audited one by one but counted, and recorded as one http.request.throttled event per source
// (or device) each time the counts are flushed. A device-signed upload is never refused this
// way: while its source or device is throttled it is verified first, and goes through when
// its signature and checks pass (the devices behind one hospital NAT share an address, and a
// flood naming a device must not silence it).
//
// With several replicas behind one load balancer the limits hold across them as a per-replica
// share (Config.Replicas, Limit.share): each replica enforces 1/N of the rate and of the burst,
// so that the replicas together allow the configured limit. The buckets stay in memory, off
// the database, on purpose: the limiter exists to keep floods away from PostgreSQL.

// Limit is a token bucket: Burst events at once, then Rate events per second.
type Limit struct {
	// Rate is the refill, in events per second. Zero takes the field's default; a negative
	// Rate turns the limit off.
	Rate float64
	// Burst is the bucket's size. Zero takes the field's default.
	Burst int
}

func (l Limit) withDefault(def Limit) Limit {
	if l.Rate == 0 {
		l.Rate = def.Rate
	}
	if l.Burst <= 0 {
		l.Burst = def.Burst
	}
	return l
}

// Defaults of the rejected-request limits (see Config).
var (
	DefaultRejectedPerSource = Limit{Rate: 1, Burst: 60}
	DefaultRejectedPerDevice = Limit{Rate: 0.5, Burst: 30}
)

// DefaultLimiterKeys is the default of Config.LimiterKeys.
const DefaultLimiterKeys = 100_000

// keyedLimiter is a token bucket per key (a source address or a device id) with the count of
// requests it refused since the last drain. It tracks at most max keys: past that it forgets
// the keys whose bucket is full, then arbitrary ones (their unrecorded refusals are kept in an
// aggregate, so none goes unrecorded).
type keyedLimiter struct {
	lim  Limit
	max  int
	kind string // "source_address" or "device": the object type of the summary events
	// emptyUntil is the latest time (UnixNano) at which some key's bucket is still empty: a
	// cheap "is anything throttled?" for the hot path.
	emptyUntil atomic.Int64

	mu      sync.Mutex
	keys    map[string]*limEntry
	evicted throttleRecord // refusals of keys forgotten before a drain
}

type limEntry struct {
	bucket *rate.Limiter
	rec    throttleRecord
}

// throttleRecord is the refusals of one key not yet recorded in the audit trail.
type throttleRecord struct {
	kind, key   string
	n           int
	first, last time.Time
	firstReq    string // the request id of the first refusal
	keys        int    // for the aggregate of forgotten keys: how many
}

func newKeyedLimiter(kind string, lim Limit, max int) *keyedLimiter {
	return &keyedLimiter{lim: lim, max: max, kind: kind, keys: map[string]*limEntry{},
		evicted: throttleRecord{kind: kind, key: "*"}}
}

func (k *keyedLimiter) off() bool { return k == nil || k.lim.Rate < 0 }

// spend takes one token of key's bucket for a rejected request at now.
func (k *keyedLimiter) spend(key string, now time.Time) {
	if k.off() || key == "" {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	e := k.entry(key, now)
	e.bucket.AllowN(now, 1)
	if tokens := e.bucket.TokensAt(now); tokens < 1 {
		until := now.Add(time.Duration((1 - tokens) / k.lim.Rate * float64(time.Second))).UnixNano()
		for {
			cur := k.emptyUntil.Load()
			if until <= cur || k.emptyUntil.CompareAndSwap(cur, until) {
				break
			}
		}
	}
}

// anyEmpty reports whether some key's bucket may be empty at now.
func (k *keyedLimiter) anyEmpty(now time.Time) bool {
	return !k.off() && now.UnixNano() < k.emptyUntil.Load()
}

// empty reports whether key's bucket is empty at now, and if so how long until it holds a
// token again.
func (k *keyedLimiter) empty(key string, now time.Time) (bool, time.Duration) {
	if k.off() || key == "" || !k.anyEmpty(now) {
		return false, 0
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	e := k.keys[key]
	if e == nil {
		return false, 0
	}
	tokens := e.bucket.TokensAt(now)
	if tokens >= 1 {
		return false, 0
	}
	return true, time.Duration((1 - tokens) / k.lim.Rate * float64(time.Second))
}

// refused counts a request of key refused at now (request id req) for the next drain.
func (k *keyedLimiter) refused(key string, now time.Time, req string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.entry(key, now).rec.add(now, req)
}

func (r *throttleRecord) add(now time.Time, req string) {
	if r.n == 0 {
		r.first, r.firstReq = now, req
	}
	r.n++
	r.last = now
}

// entry returns key's entry, making room for it when the limiter tracks max keys; k.mu held.
func (k *keyedLimiter) entry(key string, now time.Time) *limEntry {
	if e := k.keys[key]; e != nil {
		return e
	}
	if len(k.keys) >= k.max {
		for key, e := range k.keys { // first the keys that are as good as new
			if e.rec.n == 0 && e.bucket.TokensAt(now) >= float64(k.lim.Burst) {
				delete(k.keys, key)
			}
		}
		for key, e := range k.keys { // then any, down to 90 %
			if len(k.keys) < k.max*9/10 {
				break
			}
			if e.rec.n > 0 {
				k.evicted.merge(e.rec)
			}
			delete(k.keys, key)
		}
	}
	e := &limEntry{bucket: rate.NewLimiter(rate.Limit(k.lim.Rate), k.lim.Burst), rec: throttleRecord{kind: k.kind, key: key}}
	e.bucket.AllowN(now, 0) // start full at now, not at the zero time
	k.keys[key] = e
	return e
}

func (r *throttleRecord) merge(o throttleRecord) {
	if r.n == 0 || o.first.Before(r.first) {
		r.first, r.firstReq = o.first, o.firstReq
	}
	if o.last.After(r.last) {
		r.last = o.last
	}
	r.n += o.n
	r.keys++
}

// drain returns the unrecorded refusals and resets them.
func (k *keyedLimiter) drain() []throttleRecord {
	if k.off() {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []throttleRecord
	for _, e := range k.keys {
		if e.rec.n > 0 {
			out = append(out, e.rec)
			e.rec = throttleRecord{kind: e.rec.kind, key: e.rec.key}
		}
	}
	if k.evicted.n > 0 {
		out = append(out, k.evicted)
		k.evicted = throttleRecord{kind: k.kind, key: "*"}
	}
	return out
}

// rejectLimits is the server's pair of limiters.
type rejectLimits struct {
	source, device *keyedLimiter
}

func newRejectLimits(cfg Config) *rejectLimits {
	return &rejectLimits{
		source: newKeyedLimiter("source_address", cfg.RejectedPerSource, cfg.LimiterKeys),
		device: newKeyedLimiter("device", cfg.RejectedPerDevice, cfg.LimiterKeys),
	}
}

// sourceKey is the limiter's key of a source address: the address itself for IPv4, its /64
// for IPv6 (one host commonly holds a whole /64).
func sourceKey(ip string) string {
	a := net.ParseIP(ip)
	if a == nil {
		return ip
	}
	if a.To4() != nil {
		return a.String()
	}
	return (&net.IPNet{IP: a.Mask(net.CIDRMask(64, 128)), Mask: net.CIDRMask(64, 128)}).String()
}

// throttledError refuses a request of a source (or for a device) that spent its budget of
// rejected requests: 429 rate_limited with Retry-After. It is counted, not audited one by one.
type throttledError struct{ retry time.Duration }

func (e *throttledError) Error() string { return "too many rejected requests" }

func (e *throttledError) Unwrap() error {
	return &APIError{Status: http.StatusTooManyRequests, Code: CodeRateLimited,
		Message: "too many rejected requests from this source; retry later"}
}

// RetryAfterSeconds is the wait in whole seconds, at least 1 (RetryAfter).
func (e *throttledError) RetryAfterSeconds() int {
	return max(1, int(math.Ceil(e.retry.Seconds())))
}

// throttleDeviceKey is where the request's claimed device is kept for the per-device budget.
const throttleDeviceKey = "vigil.claimed_device"

// unthrottled lists the routes never refused by the limiter: the probes, and the upload,
// whose handler applies the limits itself (a signed upload always goes through).
var unthrottled = map[string]bool{"/healthz": true, "/readyz": true, "/api/v1/uploads": true}

// throttle refuses at once the requests of a source that has spent its budget of rejected
// requests.
func (s *Server) throttle(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if unthrottled[c.Path()] || s.rejects.source.off() {
			return next(c)
		}
		now := s.cfg.Now()
		key := sourceKey(c.RealIP())
		if empty, retry := s.rejects.source.empty(key, now); empty {
			s.rejects.source.refused(key, now, RequestID(c))
			return &throttledError{retry: retry}
		}
		return next(c)
	}
}

// admitUpload applies the rejected-request limits to an upload (raw is its body, nil when it
// could not be read): while the source or the device it names is throttled, only an upload
// that passes verification goes on. srcEmpty and srcRetry are the source's state as checked
// before the body was read.
func (s *Server) admitUpload(c echo.Context, raw []byte, srcEmpty bool, srcRetry time.Duration) error {
	now := s.cfg.Now()
	device := ""
	if s.rejects.device.anyEmpty(now) && raw != nil {
		device = claimedDevice(raw)
	}
	devEmpty, devRetry := s.rejects.device.empty(device, now)
	if !srcEmpty && !devEmpty {
		return nil
	}
	if raw != nil {
		if _, err := s.cfg.Devices.Verify(c.Request().Context(), raw); err == nil {
			return nil // a genuine upload of the device: never throttled
		}
	}
	if devEmpty {
		s.rejects.device.refused(device, now, RequestID(c))
		return &throttledError{retry: devRetry}
	}
	s.rejects.source.refused(sourceKey(c.RealIP()), now, RequestID(c))
	return &throttledError{retry: srcRetry}
}

// claimedDevice is the device an upload names (unverified), or "" when the body is not a
// well-formed upload.
func claimedDevice(raw []byte) string {
	env, err := envelope.ParseEnvelope(raw, envelope.Limits{MaxEnvelopeBytes: len(raw)})
	if err != nil {
		return ""
	}
	u, err := envelope.ParseUpload(env.Body, envelope.Limits{MaxEnvelopeBytes: len(raw)})
	if err != nil {
		return ""
	}
	return u.Device
}

// rejection is the error handler's step for a rejected request (4xx): a refusal of the
// limiter is only counted; any other spends the budgets of its source (and device) and is
// audited.
func (s *Server) rejection(c echo.Context, err error, status int, code string) {
	var te *throttledError
	if errors.As(err, &te) {
		return
	}
	now := s.cfg.Now()
	s.rejects.source.spend(sourceKey(c.RealIP()), now)
	if d, _ := c.Get(throttleDeviceKey).(string); d != "" {
		s.rejects.device.spend(d, now)
	}
	if auditmark.IsSet(c.Request().Context()) {
		return // the handler recorded its own refusal event (internal/auditmark): the one record
	}
	s.auditRejection(c, status, code)
}

// FlushThrottled records the requests the limiter refused since the last flush: one
// http.request.throttled event per source address or device, with the number of requests,
// the first and last refusal's time and the first one's request id. Serve calls it every
// ThrottleFlushInterval and when it stops.
func (s *Server) FlushThrottled(ctx context.Context) error {
	var errs []error
	for _, k := range []*keyedLimiter{s.rejects.source, s.rejects.device} {
		for _, r := range k.drain() {
			ev := audit.Event{
				Actor:     audit.Unauthenticated,
				Action:    "http.request.throttled",
				Object:    audit.Object{Type: r.kind, ID: r.key},
				Outcome:   audit.OutcomeRejected,
				Reason:    CodeRateLimited,
				RequestID: r.firstReq,
				Time:      r.last,
			}
			payload := map[string]any{"requests": r.n, "first": r.first, "last": r.last}
			if r.key == "*" {
				payload["keys"] = r.keys // refusals of keys forgotten before this flush
			}
			switch {
			case r.kind == "source_address" && r.key != "*":
				ev.SourceAddr = r.key
			case r.kind == "device" && r.key != "*":
				ev.Actor = audit.Actor{Kind: audit.ActorDevice, ID: r.key, AuthMethod: "none"} // as claimed
			}
			ev.Payload = payload
			if err := s.recordNow(ctx, ev); err != nil {
				s.log.ErrorContext(ctx, "audit of throttled requests failed", slog.String("kind", r.kind),
					slog.Int("requests", r.n), slog.String("error", err.Error()))
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// flushThrottledEvery runs FlushThrottled every interval until ctx ends, then once more.
func (s *Server) flushThrottledEvery(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			_ = s.FlushThrottled(fctx)
			cancel()
			return
		case <-t.C:
			_ = s.FlushThrottled(ctx)
		}
	}
}

// recordNow records an event that has no transaction of its own, group-committed by the
// server's audit recorder.
func (s *Server) recordNow(ctx context.Context, ev audit.Event) error {
	_, err := s.cfg.Recorder.RecordNow(ctx, ev)
	return err
}

// share is this replica's share of a limit that holds across replicas replicas behind one
// load balancer: the rate divided by replicas, the burst too (rounded down, at least 1). The
// shares sum to the limit (the bursts to at most it, unless the burst is below replicas), so
// a source whose requests the balancer spreads over the replicas gets the limit in all; one
// whose requests all reach one replica (affinity, or replicas out of rotation) gets less,
// never more.
func (l Limit) share(replicas int) Limit {
	if replicas <= 1 || l.Rate < 0 {
		return l
	}
	return Limit{Rate: l.Rate / float64(replicas), Burst: max(1, l.Burst/replicas)}
}

// withLimitDefaults fills the defaults of the resource limits of cfg, and takes this
// replica's share of the limits that hold across replicas (Config.Replicas).
func withLimitDefaults(cfg Config) Config {
	cfg.RejectedPerSource = cfg.RejectedPerSource.withDefault(DefaultRejectedPerSource).share(cfg.Replicas)
	cfg.RejectedPerDevice = cfg.RejectedPerDevice.withDefault(DefaultRejectedPerDevice).share(cfg.Replicas)
	if cfg.LimiterKeys <= 0 {
		cfg.LimiterKeys = DefaultLimiterKeys
	}
	if cfg.ThrottleFlushInterval <= 0 {
		cfg.ThrottleFlushInterval = time.Minute
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = DefaultReadTimeout
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = DefaultMaxStreams
	}
	if cfg.MaxStreamsPerCaller <= 0 {
		cfg.MaxStreamsPerCaller = DefaultMaxStreamsPerCaller
	}
	if cfg.StreamCoalesce == 0 {
		cfg.StreamCoalesce = DefaultStreamCoalesce
	}
	return cfg
}
