package server

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/auth"
)

// Live streams (SSE) hold a connection, a goroutine and a subscription each for as long as
// the client stays, so their number is bounded: at most MaxStreams at once in the process and
// MaxStreamsPerCaller per caller — the signed-in person or service account (so that the
// people of one ward behind one NAT address do not share a cap, and one person does not get
// more by changing address); a stream without a principal counts by its source address (an
// IPv6 /64). A stream past either cap is refused with 503 too_many_streams and Retry-After;
// the client retries later, like any SSE client that lost its stream.
//
// A stream is not bounded by the request timeout (Config.RequestTimeout): it lives as long as
// its client reads, its session lasts and the server runs. What stops slow or dead clients is
// the server's read-header and idle timeouts, a write deadline per write
// (streamWriteTimeout) and the pings every 15 s that find a dead connection. The stream's
// session and access are checked again (as a background request: the stream is not activity
// of the person) at once when auth signals a change of the principal's access on any replica
// (its sessions ended, the user disabled, a grant revoked: auth.Enforcer.WatchAccess), and
// every StreamRecheckInterval as the fallback; when the session has ended — signed out, idle,
// past its lifetime, the user disabled — or the principal may no longer subscribe to what the
// stream carries, the stream ends (audited as access.stream.ended).

// Defaults of the stream caps (see Config).
const (
	DefaultMaxStreams          = 1000
	DefaultMaxStreamsPerCaller = 20
	// DefaultStreamCoalesce is the longest a stream holds a tile update to write it with
	// those that follow (Config.StreamCoalesce): far under the 1 s a tile may lag (issue #15).
	DefaultStreamCoalesce = 50 * time.Millisecond
)

// CodeTooManyStreams is the refusal of a stream past a cap (503, with Retry-After).
const CodeTooManyStreams = "too_many_streams"

// streamRetryAfter is the Retry-After of a refused stream.
const streamRetryAfter = 5 * time.Second

type streamSlots struct {
	max, perCaller int
	mu             sync.Mutex
	total          int
	byCaller       map[string]int
}

func newStreamSlots(max, perCaller int) *streamSlots {
	return &streamSlots{max: max, perCaller: perCaller, byCaller: map[string]int{}}
}

// acquire takes a stream slot for caller, or returns the 503 refusal. release gives it back.
func (s *streamSlots) acquire(caller string) (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.total >= s.max:
		return nil, &retryLater{api: APIError{Status: http.StatusServiceUnavailable, Code: CodeTooManyStreams,
			Message: "the server has as many live streams as it allows; retry later"}, after: streamRetryAfter}
	case s.byCaller[caller] >= s.perCaller:
		return nil, &retryLater{api: APIError{Status: http.StatusServiceUnavailable, Code: CodeTooManyStreams,
			Message: "this caller has as many live streams as it may; close one or retry later"}, after: streamRetryAfter}
	}
	s.total++
	s.byCaller[caller]++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.total--
			if s.byCaller[caller]--; s.byCaller[caller] <= 0 {
				delete(s.byCaller, caller)
			}
		})
	}, nil
}

// retryLater is an APIError the client may retry after a while (the Retry-After header).
type retryLater struct {
	api   APIError
	after time.Duration
}

func (e *retryLater) Error() string { return e.api.Error() }

func (e *retryLater) Unwrap() error { return &e.api }

// RetryAfterSeconds is the wait in whole seconds, at least 1 (RetryAfter).
func (e *retryLater) RetryAfterSeconds() int { return max(1, int((e.after+time.Second-1)/time.Second)) }

// streamWriteTimeout bounds each write of a live stream: a client that stops reading is cut
// off instead of holding the stream's goroutine.
const streamWriteTimeout = 30 * time.Second

// streamPingEvery is how often a live stream writes a ping: a dead connection is found by
// the write failing.
const streamPingEvery = 15 * time.Second

// streamPath is the route of the live stream.
const streamPath = "/api/v1/stream"

// isStream reports whether the request is to the live stream (exempt from the request
// timeout; a background request for the session).
func isStream(c echo.Context) bool { return c.Path() == streamPath }

// streamCaller is whom a stream counts against: the signed-in person or service account,
// else the source address.
func streamCaller(c echo.Context) string {
	if p := PrincipalOf(c); p != nil && p.ID != uuid.Nil {
		return "principal:" + p.ID.String()
	}
	return "source:" + sourceKey(c.RealIP())
}

// DefaultStreamRecheckInterval is how often a live stream's session is checked again.
const DefaultStreamRecheckInterval = 30 * time.Second

// untilSessionEnds returns a context for a stream of the request's principal that is
// cancelled when its credentials stop authenticating or stillAllowed (if not nil) refuses
// the principal (auth.ErrForbidden), and the function that stops the watch. It checks both
// again (as a background request) at once when auth signals that the principal's access may
// have changed in any replica — its session ended, the user disabled, a grant revoked, a
// policy line removed (auth.Enforcer.WatchAccess, fed by PostgreSQL NOTIFY); and the
// credentials every Config.StreamRecheckInterval as the fallback for a missed notification
// (a missed policy change needs none here: the enforcer's own periodic refresh reloads and
// signals every stream). A check that fails for another reason (the database briefly away)
// keeps the stream. A stream so ended is audited as access.stream.ended with the reason.
func (s *Server) untilSessionEnds(c echo.Context, stillAllowed func(context.Context, *auth.Principal) error) (context.Context, func()) {
	ctx, cancel := context.WithCancel(c.Request().Context())
	creds, ok := c.Get(credentialsKey).(auth.Credentials)
	p := PrincipalOf(c)
	if !ok || s.cfg.Auth == nil || p == nil {
		return ctx, cancel
	}
	creds.Background = true
	changed, unwatch := s.cfg.Auth.Enforcer().WatchAccess(p.Subject)
	end := func(reason string) {
		s.log.InfoContext(ctx, "stream ended: "+reason, slog.String("request_id", creds.RequestID))
		cancel()
		ev := s.readEvent(c, "access.stream.ended", audit.Object{Type: "stream"}, map[string]any{"reason": reason})
		if _, err := s.cfg.Recorder.RecordNow(context.WithoutCancel(ctx), ev); err != nil {
			s.log.ErrorContext(ctx, "audit of a stream's end failed", slog.String("request_id", creds.RequestID),
				slog.String("error", err.Error()))
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer unwatch()
		t := time.NewTicker(s.cfg.StreamRecheckInterval)
		defer t.Stop()
		for {
			signalled := false
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-changed:
				signalled = true
			}
			q, err := s.cfg.Auth.Authenticate(ctx, creds)
			if err == nil && signalled && stillAllowed != nil {
				if err = stillAllowed(ctx, q); errors.Is(err, auth.ErrForbidden) {
					end("access_revoked")
					return
				}
			}
			switch {
			case err == nil:
			case errors.Is(err, auth.ErrUnauthenticated), errors.Is(err, auth.ErrSessionExpired):
				end("session_ended")
				return
			case ctx.Err() == nil:
				s.log.WarnContext(ctx, "stream: session check failed", slog.String("request_id", creds.RequestID),
					slog.String("error", err.Error()))
			}
		}
	}()
	return ctx, func() { cancel(); <-done }
}
