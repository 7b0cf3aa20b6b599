package server

import (
	"net/http"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
)

// Graceful drain (docs/operations.md#rolling-upgrades). When Serve's context ends (SIGTERM),
// the server drains before it stops:
//
//  1. /readyz answers 503 "draining", so the load balancer takes the replica out of rotation;
//  2. every new request but the probes is refused at once with 503 draining, Retry-After and
//     Connection: close (a device retries, through the load balancer, on another replica), and
//     live streams end (their clients reconnect elsewhere with Last-Event-ID);
//  3. requests already in flight (an upload being stored) go on;
//  4. after Config.DrainDelay (long enough for the load balancer's health checks to notice),
//     the listener closes and Serve waits for the requests in flight, up to its grace.
//
// The refusals are 503s, not 4xx: they are logged, not audited as rejections.

// CodeDraining is the error code of a request refused because the replica is shutting down.
const CodeDraining = "draining"

// DrainRetryAfter is the Retry-After of a request refused while draining.
const DrainRetryAfter = time.Second

type drainState struct {
	once sync.Once
	ch   chan struct{}
}

func newDrainState() *drainState { return &drainState{ch: make(chan struct{})} }

// Drain begins draining (see above) without stopping the listener; Serve calls it when its
// context ends. It is idempotent.
func (s *Server) Drain() {
	s.drain.once.Do(func() {
		s.log.Info("draining: refusing new requests; requests in flight go on")
		close(s.drain.ch)
	})
}

// Draining reports whether the server has begun draining.
func (s *Server) Draining() bool {
	select {
	case <-s.drain.ch:
		return true
	default:
		return false
	}
}

// drained is closed when draining begins (live streams end on it).
func (s *Server) drained() <-chan struct{} { return s.drain.ch }

// drainingError refuses a request that arrived while draining.
type drainingError struct{}

func (drainingError) Error() string { return "server is draining" }

func (drainingError) Unwrap() error {
	return &APIError{Status: http.StatusServiceUnavailable, Code: CodeDraining,
		Message: "this server is shutting down; retry (another replica will answer)"}
}

func (drainingError) RetryAfterSeconds() int { return int(DrainRetryAfter / time.Second) }

// refuseWhileDraining refuses every new request but the probes once draining has begun, and
// closes the connection after the answer.
func (s *Server) refuseWhileDraining(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if !s.Draining() {
			return next(c)
		}
		c.Response().Header().Set(echo.HeaderConnection, "close")
		if p := c.Path(); p == "/healthz" || p == "/readyz" {
			return next(c)
		}
		return drainingError{}
	}
}
