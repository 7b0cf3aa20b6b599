package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/internal/schema"
	"github.com/vigilhealth/vigil/interop/fhir/subscription"
	"github.com/vigilhealth/vigil/portal"
)

// Config is everything the server needs. Zero values take the documented defaults.
type Config struct {
	// Pool is the PostgreSQL pool of the installation. Required.
	Pool *pgxpool.Pool
	// Recorder records the server's own audit events: rejected, abandoned, failed and
	// completed requests (the process's audit.Outbox). Required.
	Recorder audit.Recorder
	// Logger receives access logs and server errors. Default: slog.Default().
	Logger *slog.Logger
	// Version is reported by /healthz. Default: "dev".
	Version string
	// Schema is the set of migrations the readiness check compares the database with; nil is
	// the embedded one (schema.Embedded).
	Schema *schema.Set
	// BodyLimit is the largest request body accepted, e.g. "1M". Default "1M"; larger bodies
	// get 413 payload_too_large.
	BodyLimit string
	// RequestTimeout bounds each request's context, except the live stream's (streams.go).
	// Default 30s.
	RequestTimeout time.Duration
	// TrustProxyHeaders makes the source address come from X-Forwarded-For / X-Real-IP.
	// Default false: the TCP peer address, which a client cannot forge.
	TrustProxyHeaders bool
	// ReadinessChecks are extra checks /readyz runs after the database and schema checks
	// (the audit shipper's lag, say). Each runs with the request's context.
	ReadinessChecks []ReadinessCheck
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Devices is the device registry and upload ingestion (routes in devices.go). Optional.
	Devices *devices.Service
	// Alarms is the clinical alarm lifecycle (routes in alarms.go). Optional.
	Alarms *alarms.Service
	// Rules is the clinical rules engine (routes in alarms.go). Optional.
	Rules *rules.Engine
	// Audit is the audit chain (routes and the state-change audit middleware in audit.go).
	// Optional.
	Audit *chain.Service
	// Core is the clinical core: patients, observations, the notification stream and webhooks
	// (routes in core.go). Optional.
	Core *core.Service
	// Auth authenticates and authorizes every request but the devices' and the probes'
	// (access.go, permissions.go) and serves sign-in (authroutes.go). Without it, every such
	// request is refused with 401 unauthenticated: only devices and probes are served.
	Auth *auth.Service
	// OIDC is the OpenID Connect relying party of single sign-on (routes /auth/oidc/…).
	// Optional: without it only local accounts sign in.
	OIDC *auth.RelyingParty
	// Passkeys are the WebAuthn ceremonies (routes /auth/passkeys/…). Optional: without them
	// no passkey is registered or signs in.
	Passkeys *auth.Passkeys
	// PolicyRefreshInterval is how often Serve checks the policy's version and reloads it when
	// another process changed it (auth.Enforcer.Refresh): the fallback for a missed change
	// notification, which Serve otherwise applies as soon as the change commits
	// (auth.Enforcer.Follow). Default 5s.
	PolicyRefreshInterval time.Duration
	// Portal is the web portal for people (package portal), mounted at "/" with its own
	// routes. Optional.
	Portal *portal.Portal
	// SubscriptionWebhooks creates and feeds the core webhooks of FHIR Subscriptions
	// (fhir_subscriptions.go). Default: Core.
	SubscriptionWebhooks subscription.Webhooks

	// ReadTimeout bounds the time a request's body may take to arrive (its headers are bounded
	// by a fixed 10 s); a body that is late gets 408 request_timeout. Default 30s.
	ReadTimeout time.Duration
	// RejectedPerSource bounds the rejected requests (4xx) of one source address (an IPv6
	// /64): past it, the source's requests are refused at once with 429 rate_limited and
	// counted in http.request.throttled events rather than audited one by one; its
	// device-signed uploads still go through when they verify (rejectlimit.go). Default
	// DefaultRejectedPerSource (a burst of 60, then 1 per second); a negative Rate turns it
	// off.
	RejectedPerSource Limit
	// RejectedPerDevice is the same per device named by rejected uploads. Default
	// DefaultRejectedPerDevice (30, then 1 every 2 s); a negative Rate turns it off.
	RejectedPerDevice Limit
	// LimiterKeys is the most source addresses and devices each limiter tracks at once.
	// Default DefaultLimiterKeys (100,000).
	LimiterKeys int
	// ThrottleFlushInterval is how often Serve records the http.request.throttled events of
	// the requests the limiters refused. Default 1 minute.
	ThrottleFlushInterval time.Duration
	// MaxStreams is the most live streams (SSE) open at once; past it a stream gets 503
	// too_many_streams with Retry-After. Default DefaultMaxStreams (1,000).
	MaxStreams int
	// MaxStreamsPerCaller is the most live streams of one caller: the signed-in person or
	// service account (without a principal, the source address, an IPv6 /64). Default
	// DefaultMaxStreamsPerCaller (20).
	MaxStreamsPerCaller int
	// DrainDelay is how long a draining server keeps its listener open, answering 503 draining,
	// before it closes it and waits for the requests in flight (shutdown.go): long enough for
	// the load balancer's health checks to take it out of rotation. Zero closes at once.
	DrainDelay time.Duration
	// Replicas is the number of replicas behind the load balancer sharing the rejected-request
	// limits (rejectlimit.go): each enforces 1/Replicas of RejectedPerSource and
	// RejectedPerDevice, so that together they hold the configured limit. 0 or 1: one replica.
	Replicas int
	// StreamRecheckInterval is how often a live stream's session is checked again; the
	// stream ends once the session has ended. Default DefaultStreamRecheckInterval (30 s).
	StreamRecheckInterval time.Duration
	// StreamCoalesce is how long at most a live stream holds a tile update (an observations
	// event) to write it together with those that follow, in one write and one flush: a
	// stream flushes tile updates at most once per StreamCoalesce, and one that comes after a
	// quieter stretch is written at once. Other events (alarms) are never held. Default
	// DefaultStreamCoalesce (50 ms); negative: never held (only what is already queued is
	// written together).
	StreamCoalesce time.Duration
}

// ReadinessCheck is one named check of /readyz. Check MUST return quickly (it runs on every
// probe) and MUST return a non-nil error when the component cannot serve; Detail is shown as
// is in the JSON answer and MUST NOT contain secrets or PHI.
type ReadinessCheck struct {
	Name  string
	Check func(ctx context.Context) (detail any, err error)
}

// Server is Vigil's HTTP server.
type Server struct {
	cfg     Config
	echo    *echo.Echo
	log     *slog.Logger
	rejects *rejectLimits
	streams *streamSlots
	drain   *drainState
	// extraAccess: access lines of routes tests add (permit); production routes are in
	// routeAccess.
	extraAccess map[string]access
	// benchNoReadAudit turns the read audit off, for the benchmark that measures its cost
	// only (never set outside that test).
	benchNoReadAudit bool
	// streamPing is how often a live stream writes a ping (streamPingEvery; a test that must
	// tell a held event from one written by the next ping sets it longer, before serving).
	streamPing time.Duration
	// benchSerialReadAudit commits the read audit before the handler runs instead of beside
	// it (the benchmark's comparison; never set outside that test).
	benchSerialReadAudit bool
	// fhirSubs is the FHIR Subscriptions service (fhir_subscriptions.go); nil without Core
	// and Auth.
	fhirSubs *subscription.Service
}

// New builds the server and its routes. It does not listen: use Serve, or Handler in tests.
func New(cfg Config) (*Server, error) {
	if cfg.Pool == nil || cfg.Recorder == nil {
		return nil, errors.New("server: Config.Pool and Config.Recorder are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	if cfg.BodyLimit == "" {
		cfg.BodyLimit = "1M"
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.StreamRecheckInterval <= 0 {
		cfg.StreamRecheckInterval = DefaultStreamRecheckInterval
	}
	if cfg.PolicyRefreshInterval <= 0 {
		cfg.PolicyRefreshInterval = 5 * time.Second
	}
	cfg = withLimitDefaults(cfg)
	s := &Server{cfg: cfg, log: cfg.Logger, rejects: newRejectLimits(cfg),
		streams: newStreamSlots(cfg.MaxStreams, cfg.MaxStreamsPerCaller), drain: newDrainState(),
		streamPing: streamPingEvery}
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.Logger.SetOutput(discard{})
	if cfg.TrustProxyHeaders {
		e.IPExtractor = echo.ExtractIPFromXFFHeader()
	} else {
		e.IPExtractor = echo.ExtractIPDirect()
	}
	e.HTTPErrorHandler = s.handleError
	e.Use(s.requestIDs)
	e.Use(s.accessLog())
	e.Use(securityHeaders)
	e.Use(s.refuseWhileDraining)
	e.Use(s.throttle)
	e.Use(middleware.RecoverWithConfig(middleware.RecoverConfig{
		DisableStackAll:   true,
		DisablePrintStack: true,
		LogErrorFunc: func(c echo.Context, err error, stack []byte) error {
			s.log.ErrorContext(c.Request().Context(), "panic in handler",
				slog.String("request_id", RequestID(c)), slog.String("error", err.Error()),
				slog.String("stack", string(stack)))
			return fmt.Errorf("panic: %w", err)
		},
	}))
	e.Use(s.readDeadline)
	e.Use(middleware.BodyLimitWithConfig(middleware.BodyLimitConfig{Limit: cfg.BodyLimit,
		// The upload route bounds its body itself, so that an oversized upload is refused and
		// audited as one (upload_too_large), like any other.
		Skipper: func(c echo.Context) bool { return c.Path() == "/api/v1/uploads" }}))
	// The live stream is exempt: it lives as long as its client and session (streams.go).
	e.Use(middleware.ContextTimeoutWithConfig(middleware.ContextTimeoutConfig{Timeout: cfg.RequestTimeout, Skipper: isStream}))
	// Authentication and authorization of every route (access.go): before any handler and
	// before the state-change audit middleware mountAudit adds, so that its events name the
	// principal.
	e.Use(s.guard)
	s.echo = e
	s.routes()
	return s, nil
}

// Handler returns the server as an http.Handler (for httptest).
func (s *Server) Handler() http.Handler { return s.echo }

// Serve answers requests on ln until ctx is cancelled, then drains and shuts down gracefully
// (shutdown.go): readiness fails and new requests get 503 draining for Config.DrainDelay, then
// it stops accepting, lets requests in flight finish (up to grace), and returns.
func (s *Server) Serve(ctx context.Context, ln net.Listener, grace time.Duration) error {
	srv := &http.Server{
		Handler:           s.echo,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	fctx, stopFlush := context.WithCancel(ctx)
	flushed := make(chan struct{})
	go func() { defer close(flushed); s.flushThrottledEvery(fctx, s.cfg.ThrottleFlushInterval) }()
	defer func() { stopFlush(); <-flushed }()
	if s.cfg.Auth != nil {
		refreshed := make(chan struct{})
		go func() { defer close(refreshed); s.refreshPolicyEvery(fctx, s.cfg.PolicyRefreshInterval) }()
		defer func() { stopFlush(); <-refreshed }()
	}
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	s.Drain()
	if s.cfg.DrainDelay > 0 {
		select {
		case <-time.After(s.cfg.DrainDelay):
		case err := <-errc:
			return fmt.Errorf("serve: %w", err)
		}
	}
	srv.SetKeepAlivesEnabled(false)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("graceful shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// handleError writes the JSON error envelope, and audits every rejected request (4xx) as an
// `http.request.rejected` event. Domain code may already have recorded a richer event of its
// own (e.g. `upload.rejected` with its reason); this one guarantees that no rejection is
// missing from the trail, whatever the handler did.
func (s *Server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	status, code, msg := classify(err)
	ctx := c.Request().Context()
	if status == StatusClientClosedRequest {
		// The client is gone: nobody reads an answer, and it is not the server's failure.
		s.log.InfoContext(ctx, "request abandoned by the client", slog.String("request_id", RequestID(c)),
			slog.String("route", c.Path()), slog.String("error", err.Error()))
		s.auditRejection(c, status, code)
		_ = c.NoContent(status)
		return
	}
	switch {
	case status == http.StatusServiceUnavailable:
		// Load shedding and unavailable dependencies are expected operating states, told to
		// the client with Retry-After; readiness reports the cause.
		s.log.WarnContext(ctx, "request refused: unavailable", slog.String("request_id", RequestID(c)),
			slog.String("route", c.Path()), slog.String("code", code), slog.String("error", err.Error()))
	case status >= 500:
		s.log.ErrorContext(ctx, "request failed", slog.String("request_id", RequestID(c)),
			slog.String("route", c.Path()), slog.String("error", err.Error()))
	}
	var ra RetryAfter
	if errors.As(err, &ra) && ra.RetryAfterSeconds() > 0 {
		c.Response().Header().Set("Retry-After", strconv.Itoa(ra.RetryAfterSeconds()))
	}
	if status >= 400 && status < 500 {
		s.rejection(c, err, status, code)
	}
	body := errorBody{Error: errorDetail{Code: code, Message: msg, RequestID: RequestID(c)}}
	var werr error
	if c.Request().Method == http.MethodHead {
		werr = c.NoContent(status)
	} else {
		werr = c.JSON(status, body)
	}
	if werr != nil {
		s.log.WarnContext(ctx, "write error response", slog.String("error", werr.Error()))
	}
}

// auditRejection records the rejection (the rejected action has no transaction: nothing was
// changed), or, for a 499, that the client abandoned the request, group-committed with
// concurrent events (a flood of bad requests costs the database one commit per group, not
// one per request). It returns once the event is committed. A failure to audit is logged loudly; the client still gets its
// answer.
func (s *Server) auditRejection(c echo.Context, status int, code string) {
	ev := EventFor(c)
	ev.Action = "http.request.rejected"
	ev.Object = audit.Object{Type: "http_route", ID: c.Request().Method + " " + routeOf(c)}
	ev.Outcome = audit.OutcomeRejected
	if status == StatusClientClosedRequest {
		// Not refused by the server: abandoned by its client before the answer. What the
		// request did before that is recorded by its own events (an upload still commits).
		ev.Action, ev.Outcome = "http.request.abandoned", audit.OutcomeFailure
	}
	ev.Reason = code
	ev.Time = s.cfg.Now()
	ev.Payload = requestPayload(c, status) // the route is the object; never the raw path
	ctx := context.WithoutCancel(c.Request().Context())
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := s.cfg.Recorder.RecordNow(ctx, ev); err != nil {
		s.log.ErrorContext(ctx, "audit of rejected request failed", slog.String("request_id", ev.RequestID),
			slog.String("code", code), slog.String("error", err.Error()))
	}
}

// routeOf is the matched route pattern (e.g. /api/v1/patients/:id), never the raw path with
// identifiers in it; unmatched requests report "(unmatched)".
func routeOf(c echo.Context) string {
	if p := c.Path(); p != "" {
		return p
	}
	return "(unmatched)"
}

func (s *Server) accessLog() echo.MiddlewareFunc {
	return middleware.RequestLoggerWithConfig(middleware.RequestLoggerConfig{
		LogStatus: true, LogLatency: true, LogMethod: true, LogRoutePath: true,
		LogRemoteIP: true, LogError: true, HandleError: true,
		LogValuesFunc: func(c echo.Context, v middleware.RequestLoggerValues) error {
			// The route pattern, not the URI: paths and queries may carry identifiers.
			attrs := []slog.Attr{
				slog.String("method", v.Method), slog.String("route", v.RoutePath),
				slog.Int("status", v.Status), slog.Duration("latency", v.Latency),
				slog.String("request_id", RequestID(c)), slog.String("remote_ip", v.RemoteIP),
			}
			if cid := CorrelationID(c); cid != "" {
				attrs = append(attrs, slog.String("correlation_id", cid))
			}
			s.log.LogAttrs(c.Request().Context(), slog.LevelInfo, "http request", attrs...)
			return nil
		},
	})
}

// discard swallows echo's own logger output; the server logs through slog only.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// checkSchema is the readiness check that the database schema is within this binary's
// compatibility window (schema.Status.Check).
func (s *Server) checkSchema(ctx context.Context) (any, error) {
	set := s.cfg.Schema
	if set == nil {
		set = schema.Embedded()
	}
	st, err := set.Inspect(ctx, s.cfg.Pool)
	if err != nil {
		return nil, err
	}
	detail := map[string]any{"current": st.Current, "latest": st.Latest, "pending": st.Pending}
	if len(st.PendingContract) > 0 {
		detail["pending_contract"] = len(st.PendingContract)
	}
	if len(st.Unknown) > 0 {
		detail["newer_applied"] = len(st.Unknown) // by a newer binary, within this one's window
	}
	return detail, st.Check()
}
