package server

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/internal/auditmark"
)

// Audit routes: the latest signed checkpoint, the verification report, and the audit trail
// with proofs. Plus the middleware that audits every state-changing request. The logic lives
// in package audit; this file only translates HTTP.
func (s *Server) mountAudit(api *echo.Group) {
	if s.cfg.Audit == nil {
		return
	}
	s.echo.Use(s.auditStateChanges)
	api.GET("/audit/checkpoint", s.auditCheckpoint)
	api.GET("/audit/verifier-key", s.auditVerifierKey)
	api.POST("/audit/checkpoint", s.auditCheckpointNow)
	api.GET("/audit/verify", s.auditVerify)
	api.POST("/audit/verify", s.auditVerifyFull)
	api.GET("/audit/consistency", s.auditConsistency)         // audit_consistency.go
	api.GET("/audit/events", s.auditTrailRead(s.auditEvents)) // access.audit.read (access_lists.go)
	api.GET("/audit/events/:id", s.auditTrailRead(s.auditEvent))
}

// Audited tells the state-change audit middleware that domain code already recorded this
// request's event in the action's own transaction (e.g. upload.accepted for each upload), so
// no second, generic event is added. Call it only after that transaction committed, and only
// on a path where the domain really recorded an event: a path on which it records nothing
// (an upload re-sent exactly, say) is left to the middleware. The domain event must carry the
// request's actor, request id and source address, so hand the domain EventFor(c) (or the
// same three fields in the domain's own type). It sets the one mark of internal/auditmark,
// which the portal's handlers set too.
func Audited(c echo.Context) { auditmark.Set(c.Request().Context()) }

// auditStateChanges makes every state-changing request (any method but GET, HEAD, OPTIONS)
// audited exactly once, and never answers before its event is committed. When the handler
// marked the request audited (Audited, or the portal's own mark: internal/auditmark), the
// event its domain recorded is that record; otherwise this middleware records
// `http.request.completed` — or, for a refusal the handler wrote itself without returning an
// error (a portal form's errors), `http.request.rejected` — after the handler ran but before
// its answer leaves: the answer of an unmarked request is held (auditHold) and sent once the
// event is committed. If a success's event cannot be recorded, the held answer is thrown away
// and the client gets 503 unavailable instead (nothing that says it succeeded went out). A
// server error (5xx) is always recorded here as `http.request.failed`, whether or not the
// request was marked. Rejections returned as errors (4xx) are audited by the error handler,
// unless the handler marked them (its own refusal event is then the record).
func (s *Server) auditStateChanges(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		switch c.Request().Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			return next(c)
		}
		ctx := auditmark.Track(c.Request().Context())
		c.SetRequest(c.Request().WithContext(ctx))
		h := newAuditHold(ctx, c)
		err := h.run(c, next)
		marked := auditmark.IsSet(ctx)
		status := c.Response().Status
		code := ""
		if err != nil {
			status, code, _ = classify(err)
		}
		switch {
		case status >= 400 && status < 500:
			if err == nil && !marked {
				// The handler answered the refusal itself (a portal form's errors, a portal
				// page's 403): handleError never sees it, so it is audited here, before the
				// answer leaves. Not counted against the source's budget of rejected
				// requests: people on a shared address correcting a form must not throttle
				// each other. A refusal whose audit failed is still sent (nothing was done).
				s.auditRejection(c, status, "")
			}
			return h.release(err) // a returned error: audited by handleError unless marked
		case marked && status < 500:
			return h.release(err) // the domain event is the record of this request
		}
		ev := EventFor(c)
		ev.Action, ev.Outcome = "http.request.completed", audit.OutcomeSuccess
		if status >= 500 {
			ev.Action, ev.Outcome, ev.Reason = "http.request.failed", audit.OutcomeFailure, code
		}
		ev.Object = audit.Object{Type: "http_route", ID: c.Request().Method + " " + routeOf(c)}
		ev.Time = s.cfg.Now()
		ev.Payload = requestPayload(c, status)
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, aerr := s.cfg.Recorder.RecordNow(actx, ev); aerr != nil {
			s.log.ErrorContext(actx, "audit of state-changing request failed", slog.String("request_id", ev.RequestID),
				slog.String("route", ev.Object.ID), slog.String("error", aerr.Error()))
			if status < 500 {
				h.discard() // the success is not told: its record is missing
				return errNotAudited
			}
		}
		return h.release(err)
	}
}

// auditFailed records http.request.failed (outcome failure, reason the error's code) for a
// request that failed with a server error where the state-change middleware does not record
// it: in the access layer, before the middleware (guardFailed), or on a GET that changes
// state (the OIDC callback). It returns once the event is committed; a failure to record it is
// logged loudly (the answer is a server error either way, never a success or a clean refusal).
func (s *Server) auditFailed(c echo.Context, status int, code string) {
	ev := EventFor(c)
	ev.Action, ev.Outcome, ev.Reason = "http.request.failed", audit.OutcomeFailure, code
	ev.Object = audit.Object{Type: "http_route", ID: c.Request().Method + " " + routeOf(c)}
	ev.Time = s.cfg.Now()
	ev.Payload = requestPayload(c, status)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request().Context()), 5*time.Second)
	defer cancel()
	if _, err := s.cfg.Recorder.RecordNow(ctx, ev); err != nil {
		s.log.ErrorContext(ctx, "audit of failed request failed", slog.String("request_id", ev.RequestID),
			slog.String("route", ev.Object.ID), slog.String("error", err.Error()))
	}
}

// errNotAudited refuses to report a state change whose audit event could not be recorded.
var errNotAudited = &APIError{Status: http.StatusServiceUnavailable, Code: CodeUnavailable,
	Message: "the request could not be audited; its outcome is not confirmed: check before trying again"}

// auditHold holds a state-changing request's answer until its audit event is committed. An
// answer whose request is already marked audited when its first byte or status is written
// (the domain's event committed before the handler answered) goes straight through; any
// other is buffered until release (sent) or discard (thrown away).
type auditHold struct {
	res    *echo.Response
	orig   http.ResponseWriter
	header http.Header
	hw     *markedWriter
}

func newAuditHold(ctx context.Context, c echo.Context) *auditHold {
	res := c.Response()
	return &auditHold{res: res, orig: res.Writer, header: res.Header().Clone(), hw: &markedWriter{heldWriter: heldWriter{w: res.Writer}, ctx: ctx, w: res.Writer}}
}

// run runs next with the answer held. If it panics, the answer is forgotten and the panic
// goes on to the recover middleware (whose 500 is audited as http.request.failed).
func (h *auditHold) run(c echo.Context, next echo.HandlerFunc) error {
	defer func() {
		if r := recover(); r != nil {
			h.discard()
			panic(r)
		}
	}()
	h.res.Writer = h.hw
	return next(c)
}

// release sends what was held and restores the real writer.
func (h *auditHold) release(err error) error {
	h.res.Writer = h.orig
	if h.hw.passed || h.hw.status == 0 {
		return err
	}
	h.orig.WriteHeader(h.hw.status)
	if h.hw.buf.Len() > 0 {
		if _, werr := h.orig.Write(h.hw.buf.Bytes()); werr != nil {
			return werr
		}
	}
	return err
}

// discard forgets what the handler wrote (nothing of it was sent) and restores the writer.
func (h *auditHold) discard() {
	h.res.Writer = h.orig
	if h.hw.passed {
		return // already sent: it was marked audited
	}
	hd := h.res.Header()
	clear(hd)
	for k, v := range h.header {
		hd[k] = v
	}
	h.res.Committed, h.res.Status, h.res.Size = false, http.StatusOK, 0
}

// markedWriter is heldWriter that lets the answer straight through when its request is
// already marked audited at the first write.
type markedWriter struct {
	heldWriter
	ctx    context.Context
	w      http.ResponseWriter
	passed bool
}

func (m *markedWriter) Header() http.Header { return m.w.Header() }

func (m *markedWriter) WriteHeader(status int) {
	if m.passed || (m.heldWriter.status == 0 && auditmark.IsSet(m.ctx)) {
		m.passed = true
		m.w.WriteHeader(status)
		return
	}
	m.heldWriter.WriteHeader(status)
}

func (m *markedWriter) Write(b []byte) (int, error) {
	if !m.passed && m.heldWriter.status == 0 && auditmark.IsSet(m.ctx) {
		m.passed = true
	}
	if m.passed {
		return m.w.Write(b)
	}
	return m.heldWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's writer (deadlines); its Flush
// is this writer's own.
func (m *markedWriter) Unwrap() http.ResponseWriter { return m.w }

func (m *markedWriter) Flush() {
	if f, ok := m.w.(http.Flusher); ok && m.passed {
		f.Flush()
	}
}

// auditVerifierKey is GET /api/v1/audit/verifier-key: the note verifier key the log's
// checkpoints are signed under (C2SP signed-note), served from the start — before the first
// checkpoint exists — so that clients can pin it before they need it. text/plain: the key
// alone.
func (s *Server) auditVerifierKey(c echo.Context) error {
	vk := s.cfg.Audit.VerifierKey()
	if strings.Contains(c.Request().Header.Get(echo.HeaderAccept), "text/plain") {
		return c.String(http.StatusOK, vk+"\n")
	}
	return c.JSON(http.StatusOK, map[string]string{"origin": s.cfg.Audit.Origin(), "verifier_key": vk})
}

func (s *Server) auditCheckpoint(c echo.Context) error {
	cp, err := s.cfg.Audit.LatestCheckpoint(c.Request().Context())
	if err != nil {
		return err
	}
	if strings.Contains(c.Request().Header.Get(echo.HeaderAccept), "text/plain") {
		return c.String(http.StatusOK, cp.Note)
	}
	return c.JSON(http.StatusOK, map[string]any{
		"origin": s.cfg.Audit.Origin(), "size": cp.Size, "root_hash": cp.Root[:], "note": cp.Note,
		"key_id": cp.KeyID, "created_at": cp.CreatedAt, "verifier_key": s.cfg.Audit.VerifierKey(),
	})
}

// auditCheckpointNow issues a checkpoint at once (if the log grew) and returns it. The audit
// package records no event for it, so the middleware's http.request.completed is its record.
func (s *Server) auditCheckpointNow(c echo.Context) error {
	cp, err := s.cfg.Audit.CheckpointNow(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{
		"origin": s.cfg.Audit.Origin(), "size": cp.Size, "root_hash": cp.Root[:], "note": cp.Note,
		"key_id": cp.KeyID, "created_at": cp.CreatedAt, "verifier_key": s.cfg.Audit.VerifierKey(),
	})
}

// auditVerify is GET /api/v1/audit/verify: the latest result of the server's verification
// runs (the background incremental pass, or a full run an auditor started), and the run going
// on, if any. It runs nothing itself.
func (s *Server) auditVerify(c echo.Context) error {
	r, err := s.cfg.Audit.LatestVerification(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, r)
}

// auditVerifyFull is POST /api/v1/audit/verify (auditors only): start a full re-verification
// in the background. 202 with the run as started (GET shows its result when it ends); 409
// audit_verify_running when a run is going on. The audit package records who started it
// (audit.verify.started) and its result (audit.verify.completed).
func (s *Server) auditVerifyFull(c echo.Context) error {
	run, err := s.cfg.Audit.StartFullVerify(c.Request().Context(), EventFor(c))
	if err != nil {
		return err
	}
	Audited(c)
	return c.JSON(http.StatusAccepted, run)
}

func (s *Server) auditEvents(c echo.Context) error {
	q := c.QueryParams()
	f := chain.EventFilter{ActorKind: q.Get("actor_kind"), ActorID: q.Get("actor_id"), Action: q.Get("action"),
		ObjectType: q.Get("object_type"), ObjectID: q.Get("object_id"), Cursor: q.Get("cursor")}
	for name, dst := range map[string]*time.Time{"from": &f.From, "to": &f.To} {
		if v := q.Get(name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return BadRequest("invalid_audit_query", name+" must be an RFC 3339 time")
			}
			*dst = t
		}
	}
	if err := queryLimit(c, 1000, "invalid_audit_query", &f.Limit); err != nil {
		return err
	}
	page, err := s.cfg.Audit.Events(c.Request().Context(), f)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, page)
}

func (s *Server) auditEvent(c echo.Context) error {
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return BadRequest("invalid_audit_query", "event id must be a UUID")
	}
	p, err := s.cfg.Audit.Event(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, p)
}
