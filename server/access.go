package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/visibility"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/auditmark"
)

// Access control. Every request but the devices' and the public ones (probes, sign-in) is
// authenticated (a session cookie, with its CSRF token on state-changing methods; or a service
// account's bearer token) and authorized by the one Casbin policy (auth.Enforcer) before its
// handler runs. What a route needs is declared in routeAccess (permissions.go), one line per
// route; a route without a line is refused (deny by default) and fails TestEveryRouteHasAccess.
//
// For patient data the middleware states the target to the enforcer: the patient's ward and
// care team, read from the clinical core (a route's :id is a patient, or an alarm whose
// patient it is). Every granted read of patient data is recorded as an audit event
// (access.phi.read, …) before its answer is sent, group-committed with concurrent events: the
// commit runs while the handler reads and the answer is held until it succeeded
// (access_held.go); if it cannot be recorded the read is refused (503) and nothing of the
// answer is sent. A refusal by the policy is recorded as access.denied naming the patient.

// accessKind says how a route is protected.
type accessKind int

const (
	// accessPolicy: an authenticated principal the policy allows (object, action) on the target.
	accessPolicy accessKind = iota + 1
	// accessPublic: no authentication (probes, sign-in, the receipt key).
	accessPublic
	// accessDevice: the device's signature (or the upload hash) is the authentication; the
	// device routes are unchanged by access control.
	accessDevice
	// accessSelf: any authenticated principal, acting on itself (its session, its identity) or
	// reading reference data that is not personal (the code list). No policy question.
	accessSelf
)

// targetKind says where the middleware finds the target of a policy question.
type targetKind int

const (
	targetNone         targetKind = iota // the object type alone (global and list permissions)
	targetPatient                        // :id is a patient
	targetAlarm                          // :id is an alarm; its patient is the target
	targetPatientQuery                   // ?patient_id= when given (else targetNone)
	targetBodyWard                       // the JSON body's ward_id (creating a patient)
	targetPatientMove                    // :id is a patient, and the body's ward_id its new ward
	targetWard                           // :id is a ward
)

// access is what one route needs.
type access struct {
	kind   accessKind
	obj    string
	act    string
	target targetKind
	// phi, when set, names what a granted read shows of a patient ("record", "observations",
	// …): it is recorded as access.phi.read before the handler runs.
	phi string
}

func public() access { return access{kind: accessPublic} }
func device() access { return access{kind: accessDevice} }
func self() access   { return access{kind: accessSelf} }
func allow(obj, act string) access {
	return access{kind: accessPolicy, obj: obj, act: act}
}
func (a access) on(t targetKind) access { a.target = t; return a }
func (a access) reads(what string) access {
	a.phi = what
	return a
}

// Keys of the request context.
const (
	principalKey   = "vigil.principal"
	decisionKey    = "vigil.decision"
	credentialsKey = "vigil.credentials"
	// pendingAuditKey: the *pendingAudit of a granted read whose event is being committed.
	pendingAuditKey = "vigil.pending_audit"
)

// PrincipalOf returns the authenticated principal of the request, or nil (public and device
// routes).
func PrincipalOf(c echo.Context) *auth.Principal {
	p, _ := c.Get(principalKey).(*auth.Principal)
	return p
}

// routeKey is how routeAccess names a route: "METHOD /path/:param".
func routeKey(method, path string) string { return method + " " + path }

// registered reports whether method and path are a route of the server (not a 404 or 405).
func (s *Server) registered(method, path string) bool {
	for _, r := range s.echo.Routes() {
		if r.Method == method && r.Path == path {
			return true
		}
	}
	return false
}

// accessOf returns what the request's route needs; ok is false for a route with no line in the
// table.
func (s *Server) accessOf(c echo.Context) (access, bool) {
	key := routeKey(c.Request().Method, c.Path())
	if a, ok := routeAccess[key]; ok {
		return a, true
	}
	if a, ok := s.extraAccess[key]; ok {
		return a, true
	}
	return access{}, false
}

// errNoAccessRule refuses a route that declares no permission (deny by default).
var errNoAccessRule = &APIError{Status: http.StatusForbidden, Code: CodeForbidden, Message: "not allowed"}

// guard is the access-control middleware.
func (s *Server) guard(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		a, ok := s.accessOf(c)
		if !ok {
			if !s.registered(c.Request().Method, c.Path()) {
				return next(c) // no such route: echo answers 404 or 405
			}
			s.log.ErrorContext(c.Request().Context(), "route without an access rule refused",
				slog.String("route", routeKey(c.Request().Method, c.Path())))
			return errNoAccessRule
		}
		switch a.kind {
		case accessPublic, accessDevice:
			return next(c)
		}
		p, err := s.authenticate(c)
		if err != nil {
			return s.guardFailed(c, err)
		}
		if a.kind == accessSelf {
			return next(c)
		}
		if err := s.authorize(c, p, a); err != nil {
			return s.guardFailed(c, err)
		}
		pa, _ := c.Get(pendingAuditKey).(*pendingAudit)
		if pa == nil {
			return next(c)
		}
		return s.holdUntilAudited(c, pa, next)
	}
}

// authenticate establishes the request's principal (cookie + CSRF, or bearer token) and makes
// it the actor of the request's audit events.
func (s *Server) authenticate(c echo.Context) (*auth.Principal, error) {
	if s.cfg.Auth == nil {
		return nil, auth.ErrUnauthenticated // no identity service: nobody can sign in
	}
	req := c.Request()
	ctx := req.Context()
	creds := s.cfg.Auth.CredentialsFrom(req, c.RealIP(), RequestID(c))
	if isStream(c) {
		// A stream (re)connects by itself (EventSource cannot send the background header):
		// never activity of the person, so it does not postpone their automatic logoff.
		creds.Background = true
	}
	p, err := s.cfg.Auth.Authenticate(ctx, creds)
	if err != nil {
		if auth.CodeOf(err) != "" && (creds.SessionToken != "" || creds.BearerToken != "") {
			// Refused and recorded by auth (auth.session.rejected or auth.token.rejected,
			// committed: a failed record is an internal error): that event is the request's
			// one record. A request without credentials is refused unrecorded by auth: the
			// error handler records it (http.request.rejected).
			refusalAudited(c)
		}
		return nil, err
	}
	SetActor(c, p.Actor())
	c.Set(principalKey, p)
	c.Set(credentialsKey, creds)
	if err := s.cfg.Auth.CheckCSRF(ctx, req, p, creds); err != nil {
		if auth.CodeOf(err) != "" {
			// Refused and recorded by auth (auth.csrf.rejected, committed: a failed record is
			// an internal error): that event is the request's one record.
			refusalAudited(c)
		}
		return nil, err
	}
	return p, nil
}

// authorize asks the enforcer whether p may use the route, on the route's target, and records
// a granted read of patient data.
func (s *Server) authorize(c echo.Context, p *auth.Principal, a access) error {
	ctx := c.Request().Context()
	targets, err := s.targetsOf(c, a)
	if err != nil {
		return err
	}
	var d auth.Decision
	for _, t := range targets {
		act := a.act
		if a.target == targetPatientQuery && t.Patient != uuid.Nil {
			act = "read" // a list narrowed to one patient is a read of that patient's data
		}
		if d, err = s.cfg.Auth.Enforcer().Allow(p, act, t); err != nil {
			if errors.Is(err, auth.ErrForbidden) {
				if aerr := s.auditDenied(c, a, t); aerr != nil {
					return aerr // an unrecorded refusal is an internal error, not a clean 403
				}
				refusalAudited(c) // access.denied is the request's one record
			}
			return err
		}
	}
	c.Set(decisionKey, d)
	if a.phi != "" && len(targets) > 0 && targets[0].Patient != uuid.Nil && !s.benchNoReadAudit {
		if s.benchSerialReadAudit { // the benchmark's baseline: commit, then run the handler
			return s.auditRead(ctx, c, "access.phi.read", audit.Object{Type: "patient", ID: targets[0].Patient.String()},
				map[string]any{"what": a.phi, "basis": d.Basis, "break_glass": nullGrant(d.BreakGlass)})
		}
		// The access event's commit starts now and runs while the handler reads; the answer is
		// held until it is committed (holdUntilAudited).
		ev := s.readEvent(c, "access.phi.read", audit.Object{Type: "patient", ID: targets[0].Patient.String()},
			map[string]any{"what": a.phi, "basis": d.Basis, "break_glass": nullGrant(d.BreakGlass)})
		c.Set(pendingAuditKey, s.startAudit(ctx, ev))
	}
	return nil
}

func nullGrant(id uuid.UUID) any {
	if id == uuid.Nil {
		return nil
	}
	return id
}

// targetsOf builds the policy question's target(s) for the route.
func (s *Server) targetsOf(c echo.Context, a access) ([]auth.Target, error) {
	t := auth.Target{Object: a.obj}
	ctx := c.Request().Context()
	switch a.target {
	case targetNone:
		return []auth.Target{t}, nil
	case targetPatient, targetPatientMove:
		id, err := uuid.Parse(c.Param("id"))
		if err != nil {
			return nil, BadRequest("invalid_patient_id", "patient id must be a UUID")
		}
		if err := s.patientTarget(ctx, id, &t); err != nil {
			return nil, err
		}
		if a.target == targetPatient {
			return []auth.Target{t}, nil
		}
		ward, err := bodyWard(c)
		if err != nil || ward == uuid.Nil {
			return []auth.Target{t}, err // the handler refuses a move without a ward
		}
		return []auth.Target{t, {Object: a.obj, Ward: ward}}, nil
	case targetAlarm:
		id, err := uuid.Parse(c.Param("id"))
		if err != nil {
			return nil, BadRequest("invalid_alarm_id", "alarm id must be a UUID")
		}
		if s.cfg.Alarms == nil {
			return nil, errNoAccessRule
		}
		al, err := s.cfg.Alarms.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		if err := s.patientTarget(ctx, al.PatientID, &t); err != nil {
			return nil, err
		}
		return []auth.Target{t}, nil
	case targetPatientQuery:
		v := c.Request().URL.Query().Get("patient_id")
		if v == "" {
			return []auth.Target{t}, nil
		}
		id, err := uuid.Parse(v)
		if err != nil {
			return nil, BadRequest("invalid_patient_id", "patient_id must be a UUID")
		}
		t.Object = a.obj
		if err := s.patientTarget(ctx, id, &t); err != nil {
			return nil, err
		}
		return []auth.Target{t}, nil
	case targetWard:
		ward, err := uuid.Parse(c.Param("id"))
		if err != nil {
			return nil, BadRequest("invalid_ward_id", "ward id must be a UUID")
		}
		t.Ward = ward
		return []auth.Target{t}, nil
	case targetBodyWard:
		ward, err := bodyWard(c)
		if err != nil {
			return nil, err
		}
		t.Ward = ward
		return []auth.Target{t}, nil
	}
	return nil, fmt.Errorf("server: unknown target kind %d", a.target)
}

// patientTarget fills t with the patient's ward and care team, read from the clinical core.
// Without them (no clinical core, an unknown patient) the target has no ward and no care team:
// only roles held for every ward (and a break-glass grant) allow; a ward's clinician gets 403
// whether or not the patient exists.
func (s *Server) patientTarget(ctx context.Context, id uuid.UUID, t *auth.Target) error {
	t.Patient = id
	if s.cfg.Core == nil {
		return nil // no facts: only roles held for every ward decide
	}
	facts, err := s.cfg.Core.AccessFactsOf(ctx, id) // one query, no PHI opened
	if errors.Is(err, core.ErrNotFound) {
		return nil // the same: an unknown patient is nobody's ward's (the handler answers 404)
	}
	if err != nil {
		return err
	}
	if facts.WardID != nil {
		t.Ward = *facts.WardID
	}
	t.CareTeam = facts.CareTeam
	return nil
}

// bodyWard reads the JSON body's ward_id (and puts the body back for the handler). A body that
// is not JSON, or names no ward, gives uuid.Nil: the handler refuses it with its own code.
func bodyWard(c echo.Context) (uuid.UUID, error) {
	req := c.Request()
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return uuid.Nil, bodyReadError(err)
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	var v struct {
		WardID *uuid.UUID `json:"ward_id"`
	}
	if json.Unmarshal(body, &v) != nil || v.WardID == nil {
		return uuid.Nil, nil
	}
	return *v.WardID, nil
}

// auditDenied records a policy refusal naming what was asked for, and returns once it is
// committed; the caller marks the request audited (refusalAudited), so access.denied is the
// request's one record. If it cannot be recorded it returns an internal error (500): the
// refusal is not answered as a clean 403 without its record.
func (s *Server) auditDenied(c echo.Context, a access, t auth.Target) error {
	ev := EventFor(c)
	ev.Action, ev.Outcome, ev.Reason = "access.denied", audit.OutcomeRejected, "policy"
	ev.Object = audit.Object{Type: a.obj}
	if t.Patient != uuid.Nil {
		ev.Object = audit.Object{Type: "patient", ID: t.Patient.String()}
	}
	ev.Time = s.cfg.Now()
	ev.Payload = map[string]any{"object": a.obj, "action": a.act, "route": routeKey(c.Request().Method, routeOf(c))}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request().Context()), 5*time.Second)
	defer cancel()
	if _, err := s.cfg.Recorder.RecordNow(ctx, ev); err != nil {
		s.log.ErrorContext(ctx, "audit of access denial failed", slog.String("request_id", ev.RequestID),
			slog.String("error", err.Error()))
		return fmt.Errorf("server: audit of access denial: %w", err)
	}
	return nil
}

// refusalAudited marks a request the guard refused audited: the refusal's own event (from
// auth, or access.denied) is committed and is the request's one record, so the error handler
// adds no http.request.rejected. The guard runs before the state-change middleware tracks the
// request, so the mark is put on here (internal/auditmark).
func refusalAudited(c echo.Context) {
	ctx := c.Request().Context()
	if !auditmark.Tracked(ctx) {
		ctx = auditmark.Track(ctx)
		c.SetRequest(c.Request().WithContext(ctx))
	}
	auditmark.Set(ctx)
}

// guardFailed returns the guard's error, after recording http.request.failed when it is a
// server error (5xx): a refusal whose own event (access.denied, auth.session.rejected, …)
// could not be recorded, or credentials auth could not check. The guard runs before the
// state-change middleware, and the error handler records only rejections (4xx), so without
// this such a request — on any method — would leave no audit event at all. The answer stays
// the server error: never a clean 401/403 without the refusal's own record.
func (s *Server) guardFailed(c echo.Context, err error) error {
	if status, code, _ := classify(err); status >= 500 {
		s.auditFailed(c, status, code)
	}
	return err
}

// errReadNotAudited refuses a read of patient data whose audit event could not be recorded.
var errReadNotAudited = &APIError{Status: http.StatusServiceUnavailable, Code: CodeUnavailable,
	Message: "the access could not be audited; try again"}

// auditRead records a granted access to patient data (or to the audit trail) before it
// happens. The event names the principal (actor), the session or token, the route and what
// was read; the recorder group-commits it with concurrent events. On failure the read is
// refused.
func (s *Server) auditRead(ctx context.Context, c echo.Context, action string, obj audit.Object, payload map[string]any) error {
	ev := s.readEvent(c, action, obj, payload)
	if _, err := s.cfg.Recorder.RecordNow(ctx, ev); err != nil {
		s.log.ErrorContext(ctx, "audit of a read failed: refused", slog.String("request_id", ev.RequestID),
			slog.String("action", action), slog.String("error", err.Error()))
		return errReadNotAudited
	}
	return nil
}

// readEvent is the audit event of a granted read by the request's principal.
func (s *Server) readEvent(c echo.Context, action string, obj audit.Object, payload map[string]any) audit.Event {
	ev := EventFor(c)
	ev.Action, ev.Outcome, ev.Object, ev.Time = action, audit.OutcomeSuccess, obj, s.cfg.Now()
	if payload == nil {
		payload = map[string]any{}
	}
	payload["route"] = routeKey(c.Request().Method, routeOf(c))
	if p := PrincipalOf(c); p != nil {
		if p.SessionID != uuid.Nil {
			payload["session_id"] = p.SessionID
		}
		if p.TokenID != uuid.Nil {
			payload["token_id"] = p.TokenID
		}
	}
	ev.Payload = payload
	return ev
}

// visibleTo returns the patients the request's principal may read, for list endpoints: the
// enforcer's filter, which the clinical core applies in SQL (core.VisiblePatients).
func (s *Server) visibleTo(c echo.Context) (visibility.Filter, error) {
	return s.cfg.Auth.Enforcer().Visibility(PrincipalOf(c))
}

// refreshPolicyEvery keeps the policy current with the changes other processes make, until
// ctx ends: each is applied as soon as it commits (auth.Enforcer.Follow: PostgreSQL LISTEN),
// and the version is checked every interval as the fallback for a missed notification.
func (s *Server) refreshPolicyEvery(ctx context.Context, every time.Duration) {
	s.cfg.Auth.Enforcer().Follow(ctx, every, s.log)
}

// permit declares the access of a route added after New (tests' own routes).
func (s *Server) permit(method, path string, a access) {
	if s.extraAccess == nil {
		s.extraAccess = map[string]access{}
	}
	s.extraAccess[routeKey(method, path)] = a
}
