package server

import (
	"net/http"
	"sync"
	"time"
)

// Live streams (SSE) hold a connection, a goroutine and a subscription each for as long as
// the client stays, so their number is bounded: at most MaxStreams at once in the process and
// MaxStreamsPerCaller per caller (its source address, an IPv6 /64, until sessions name the
// caller). A stream past either cap is refused with 503 too_many_streams and Retry-After; the
// client retries later, like any SSE client that lost its stream.

// Defaults of the stream caps (see Config).
const (
	DefaultMaxStreams          = 1000
	DefaultMaxStreamsPerCaller = 20
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
