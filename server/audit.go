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

const auditedKey = "vigil.audited"

// Audited tells the state-change audit middleware that domain code already recorded this
// request's event in the action's own transaction (e.g. upload.accepted for each upload), so
// no second, generic event is added. Call it only after that transaction committed, and only
// on a path where the domain really recorded an event: a path on which it records nothing
// (an upload re-sent exactly, say) is left to the middleware. The domain event must carry the
// request's actor, request id and source address, so hand the domain EventFor(c) (or the
// same three fields in the domain's own type).
func Audited(c echo.Context) { c.Set(auditedKey, true) }

// auditStateChanges makes every state-changing request (any method but GET, HEAD, OPTIONS)
// that was not rejected audited exactly once. When the handler called Audited, the domain
// event recorded in the action's transaction is that record; otherwise this middleware
// records `http.request.completed` after the handler ran. A server error (5xx) is always
// recorded here as `http.request.failed`, whether or not Audited was called.
// Rejections (4xx) are audited by the error handler, or here when the handler wrote the
// refusal itself without returning an error (the portal's pages).
func (s *Server) auditStateChanges(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		err := next(c)
		switch c.Request().Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			return err
		}
		status := c.Response().Status
		code := ""
		if err != nil {
			status, code, _ = classify(err)
		}
		if status >= 400 && status < 500 {
			if err == nil {
				// The handler answered the refusal itself (a portal form's errors, a portal
				// page's 403): handleError never saw it, so it is audited here. Not counted
				// against the source's budget of rejected requests: people on a shared
				// address correcting a form must not throttle each other.
				s.auditRejection(c, status, "")
			}
			return err // otherwise audited as http.request.rejected by handleError
		}
		if done, _ := c.Get(auditedKey).(bool); done && status < 500 {
			return err // the domain event is the record of this request
		}
		ev := EventFor(c)
		ev.Action, ev.Outcome = "http.request.completed", audit.OutcomeSuccess
		if status >= 500 {
			ev.Action, ev.Outcome, ev.Reason = "http.request.failed", audit.OutcomeFailure, code
		}
		ev.Object = audit.Object{Type: "http_route", ID: c.Request().Method + " " + routeOf(c)}
		ev.Time = s.cfg.Now()
		ev.Payload = requestPayload(c, status)
		ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request().Context()), 5*time.Second)
		defer cancel()
		if _, aerr := s.cfg.Recorder.RecordNow(ctx, ev); aerr != nil {
			s.log.ErrorContext(ctx, "audit of state-changing request failed", slog.String("request_id", ev.RequestID),
				slog.String("route", ev.Object.ID), slog.String("error", aerr.Error()))
		}
		return err
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
