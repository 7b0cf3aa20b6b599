package server

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
)

// Read auditing without a serial wait. A granted read of one patient's data is recorded as
// access.phi.read before any of the data leaves the server, and the read is refused (503) if
// the event cannot be recorded: an access is never unrecorded. The event is durable only once
// its group commit has flushed the WAL (one fdatasync), the floor of the added latency.
//
// So that the handler's own work does not wait behind that flush, the commit starts as soon
// as the decision is made (startAudit) and runs while the handler reads the data; the
// handler's answer is written into a held buffer (heldWriter) and released to the client only
// when the commit has succeeded (holdUntilAudited). If it failed, the held answer is thrown
// away and the client gets 503 unavailable instead: nothing of the data went out. The added
// latency is max(0, commit − handler) instead of commit + handler.
//
// When every database connection is in use at that moment, the handler would only compete
// with the commit for one: the commit then goes first and the handler runs after it
// (poolBusy).
//
// docs/access.md "Read auditing: the cost and the choice" explains why the events are not
// committed asynchronously (synchronous_commit = off) or after the answer.

// auditCommitTimeout bounds the wait for an access event's commit. Past it the read is
// refused; the event may still commit later (it then names a read whose answer was a 503,
// which over-reports, never under-reports).
const auditCommitTimeout = 10 * time.Second

// pendingAudit is an access event being committed.
type pendingAudit struct {
	done   chan struct{}
	err    error
	action string
	reqID  string
}

// startAudit starts committing ev (group-committed by the recorder) and returns at once. The
// commit does not end with the request's context: once a read is decided, its event is
// recorded even if the client goes away.
func (s *Server) startAudit(ctx context.Context, ev audit.Event) *pendingAudit {
	pa := &pendingAudit{done: make(chan struct{}), action: ev.Action, reqID: ev.RequestID}
	go func() {
		defer close(pa.done)
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditCommitTimeout)
		defer cancel()
		_, pa.err = s.cfg.Recorder.RecordNow(cctx, ev)
	}()
	return pa
}

// wait returns nil once the event is committed, errReadNotAudited if it could not be.
func (s *Server) waitAudit(ctx context.Context, pa *pendingAudit) error {
	<-pa.done
	if pa.err != nil {
		s.log.ErrorContext(ctx, "audit of a read failed: refused", slog.String("request_id", pa.reqID),
			slog.String("action", pa.action), slog.String("error", pa.err.Error()))
		return errReadNotAudited
	}
	return nil
}

// holdUntilAudited runs next with its answer held, waits for pa, then releases the answer —
// or, if the event could not be recorded, discards it and refuses the read.
func (s *Server) holdUntilAudited(c echo.Context, pa *pendingAudit, next echo.HandlerFunc) error {
	if s.poolBusy() {
		// Every connection is in use: the handler's queries would compete with the event's
		// commit for one. Let the commit go first (the handler then runs unheld).
		if err := s.waitAudit(c.Request().Context(), pa); err != nil {
			return err
		}
		return next(c)
	}
	res := c.Response()
	orig := res.Writer
	header := res.Header().Clone()
	hw := &heldWriter{w: orig}
	forget := func() { // nothing was sent: forget what the handler wrote
		res.Writer = orig
		h := res.Header()
		clear(h)
		for k, v := range header {
			h[k] = v
		}
		res.Committed, res.Status, res.Size = false, http.StatusOK, 0
	}
	defer func() {
		if r := recover(); r != nil {
			forget() // the recover middleware's 500 goes to the client, not into the buffer
			panic(r)
		}
	}()
	res.Writer = hw
	herr := next(c)
	res.Writer = orig
	if err := s.waitAudit(c.Request().Context(), pa); err != nil {
		forget()
		return err
	}
	if hw.status != 0 {
		orig.WriteHeader(hw.status)
		if hw.buf.Len() > 0 {
			if _, err := orig.Write(hw.buf.Bytes()); err != nil {
				return err
			}
		}
	}
	return herr
}

// heldWriter keeps a handler's answer (status and body) until it may be sent. Its headers are
// the real writer's (nothing is sent before WriteHeader reaches it). Flush is a no-op: a held
// answer is not streamed.
type heldWriter struct {
	w      http.ResponseWriter
	status int
	buf    bytes.Buffer
}

func (h *heldWriter) Header() http.Header { return h.w.Header() }

func (h *heldWriter) WriteHeader(status int) {
	if h.status == 0 {
		h.status = status
	}
}

func (h *heldWriter) Write(b []byte) (int, error) {
	if h.status == 0 {
		h.status = http.StatusOK
	}
	return h.buf.Write(b)
}

func (h *heldWriter) Flush() {}

// poolBusy reports whether every connection of the pool is in use (or being opened) right
// now: a held answer would then make the handler's queries and the audit's commit wait for
// each other.
func (s *Server) poolBusy() bool {
	st := s.cfg.Pool.Stat()
	return st.AcquiredConns()+st.ConstructingConns() >= st.MaxConns()
}
