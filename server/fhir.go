package server

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"
	fhirmodel "github.com/samply/golang-fhir-models/fhir-models/fhir"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/interop/fhir"
	"github.com/vigilhealth/vigil/interop/fhir/api"
	"github.com/vigilhealth/vigil/interop/fhir/subscription"
)

// FHIR R4 at /fhir/R4 (docs/interop.md#fhir-r4): read and search of the resource types of
// interop/fhir/api, the CapabilityStatement at /metadata. Authentication and the route's
// permission are the guard's (permissions.go); this file gives the API the caller's view of
// the policy (which patients it may read: another ward's resource is not found, 404, so that
// existence does not leak), audits the patient data each answer shows (access.phi.read, as
// the JSON API), and answers errors as OperationOutcome with the JSON envelope's codes.

// FHIRBase is the path of the FHIR API.
const FHIRBase = "/fhir/R4"

// FHIRContentType is the media type of every FHIR answer.
const FHIRContentType = "application/fhir+json; charset=utf-8"

// fhirTypes are the resource types served.
var fhirTypes = []string{"Patient", "Encounter", "Observation", "Flag", "Provenance", "Device", "AuditEvent"}

func (s *Server) mountFHIR() {
	var src api.AuditSource
	if s.cfg.Audit != nil {
		src = chainAudit{s.cfg.Audit}
	}
	svc, err := api.New(api.Config{Pool: s.cfg.Pool, Core: s.cfg.Core, Alarms: s.cfg.Alarms, Rules: s.cfg.Rules,
		Devices: s.cfg.Devices, Audit: src, Recorder: s.cfg.Recorder, Version: s.cfg.Version, Now: s.cfg.Now})
	if err != nil {
		return
	}
	// Errors of /fhir/R4 requests are OperationOutcomes: the error handler of every other
	// route (the JSON envelope) is wrapped, not replaced.
	envelope := s.echo.HTTPErrorHandler
	s.echo.HTTPErrorHandler = func(err error, c echo.Context) {
		if p := c.Request().URL.Path; p == FHIRBase || strings.HasPrefix(p, FHIRBase+"/") {
			s.fhirError(err, c)
			return
		}
		envelope(err, c)
	}
	g := s.echo.Group(FHIRBase)
	g.GET("/metadata", func(c echo.Context) error {
		cs := svc.Capability()
		if s.fhirSubs != nil {
			if st, ok := cs.(fhirmodel.CapabilityStatement); ok {
				subscription.Describe(&st)
				cs = st
			}
		}
		return writeFHIR(c, http.StatusOK, cs)
	})
	s.mountFHIRSubscriptions(g, svc)
	for _, t := range fhirTypes {
		g.GET("/"+t, s.fhirSearch(svc, t))
		g.GET("/"+t+"/:id", s.fhirRead(svc, t))
	}
	s.mountSMART(svc)
	// Any other type: 400 unknown_resource_type (not a bare 404).
	g.GET("/:type", s.fhirUnknownType)
	g.GET("/:type/:id", s.fhirUnknownType)
}

func (s *Server) fhirUnknownType(echo.Context) error {
	return &fhir.SearchError{Problems: []fhir.Problem{{Code: fhir.CodeUnknownResource, Type: "not-supported",
		Message: "resource type not supported"}}}
}

func (s *Server) fhirRead(svc *api.Service, typ string) echo.HandlerFunc {
	return func(c echo.Context) error {
		fc := s.fhirCaller(c)
		if err := s.smartScope(c, svc, fc, typ); err != nil {
			return err
		}
		res, err := svc.Read(c.Request().Context(), fc, typ, c.Param("id"))
		if errors.Is(err, api.ErrNotFound) && fc.denied != uuid.Nil {
			// Another care unit's resource: recorded as a denial, answered as not found.
			if aerr := s.auditDenied(c, access{obj: api.Types[typ], act: "read"}, auth.Target{Patient: fc.denied}); aerr != nil {
				return aerr // an unrecorded refusal is an internal error, not a clean 404
			}
			refusalAudited(c) // access.denied is the request's one record
		}
		if err != nil {
			return err
		}
		if err := s.auditFHIRReads(c, fc, res.Patients); err != nil {
			return err
		}
		return writeFHIR(c, http.StatusOK, res.Resource)
	}
}

func (s *Server) fhirSearch(svc *api.Service, typ string) echo.HandlerFunc {
	return func(c echo.Context) error {
		fc := s.fhirCaller(c)
		if err := s.smartScope(c, svc, fc, typ); err != nil {
			return err
		}
		req := c.Request()
		base := c.Scheme() + "://" + req.Host + FHIRBase
		res, err := svc.Search(req.Context(), fc, base, typ, req.URL.Query(), fhir.ParsePrefer(req.Header.Get("Prefer")))
		if err != nil {
			return err
		}
		if err := s.auditFHIRReads(c, fc, res.Patients); err != nil {
			return err
		}
		return writeFHIR(c, http.StatusOK, res.Resource)
	}
}

func writeFHIR(c echo.Context, status int, r any) error {
	var b []byte
	var err error
	if bundle, ok := r.(fhirmodel.Bundle); ok {
		b, err = fhir.MarshalBundle(bundle)
	} else {
		b, err = fhir.MarshalResource(r)
	}
	if err != nil {
		return err
	}
	return c.Blob(status, FHIRContentType, b)
}

// fhirCaller is the policy's view of one request's principal, for the API.
type fhirCaller struct {
	s *Server
	c echo.Context
	p *auth.Principal
	// decisions are the granted reads, by patient (their basis is audited); denied is the
	// last patient a read was refused for.
	mu        sync.Mutex
	decisions map[uuid.UUID]auth.Decision
	denied    uuid.UUID
	// only, when set, is the one patient the token's patient/ SMART scopes allow.
	only uuid.UUID
}

func (s *Server) fhirCaller(c echo.Context) *fhirCaller {
	return &fhirCaller{s: s, c: c, p: PrincipalOf(c), decisions: map[uuid.UUID]auth.Decision{}}
}

// MayRead asks the enforcer whether the caller may read obj of the patient, on the
// patient's ward and care team.
func (fc *fhirCaller) MayRead(ctx context.Context, obj string, pid uuid.UUID) (bool, error) {
	if fc.p == nil || fc.s.cfg.Auth == nil {
		return false, nil
	}
	if fc.only != uuid.Nil && pid != fc.only {
		fc.mu.Lock()
		fc.denied = pid
		fc.mu.Unlock()
		return false, nil
	}
	t := auth.Target{Object: obj}
	if err := fc.s.patientTarget(ctx, pid, &t); err != nil {
		return false, err
	}
	d, err := fc.s.cfg.Auth.Enforcer().Allow(fc.p, "read", t)
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if errors.Is(err, auth.ErrForbidden) {
		fc.denied = pid
		return false, nil
	}
	if err != nil {
		return false, err
	}
	fc.decisions[pid] = d
	return true, nil
}

// Visible returns the patients the caller may see (the list endpoints' filter).
func (fc *fhirCaller) Visible(ctx context.Context) (bool, []uuid.UUID, error) {
	if fc.p == nil || fc.s.cfg.Auth == nil || fc.s.cfg.Core == nil {
		return false, nil, nil
	}
	if fc.only != uuid.Nil {
		return false, []uuid.UUID{fc.only}, nil
	}
	vis, err := fc.s.visibleTo(fc.c)
	if err != nil || vis.All {
		return vis.All, nil, err
	}
	ids, err := fc.s.cfg.Core.VisiblePatientIDs(ctx, vis, core.PatientFilter{Discharged: true, Limit: 1000})
	if err != nil {
		return false, nil, err
	}
	return false, ids, nil
}

// auditFHIRReads records one access.phi.read per patient whose data the answer shows,
// before it is sent (group-committed, concurrently); if one cannot be recorded the answer is
// refused (503), as for the JSON API.
func (s *Server) auditFHIRReads(c echo.Context, fc *fhirCaller, reads []api.Read) error {
	if len(reads) == 0 || s.benchNoReadAudit {
		return nil
	}
	ctx := c.Request().Context()
	errs := make([]error, len(reads))
	var wg sync.WaitGroup
	for i, r := range reads {
		fc.mu.Lock()
		d := fc.decisions[r.Patient]
		fc.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.auditRead(ctx, c, "access.phi.read", audit.Object{Type: "patient", ID: r.Patient.String()},
				map[string]any{"what": r.What, "object": r.Object, "basis": d.Basis, "break_glass": nullGrant(d.BreakGlass)})
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// fhirError answers an error of a /fhir/R4 request — the guard's (401, 403, 429), the
// router's (404, 405) or a handler's — as an OperationOutcome, with the status and code the
// JSON envelope would have, and audits a rejection as the envelope's handler does.
func (s *Server) fhirError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	status, code, msg, problems := fhirClassify(err)
	ctx := c.Request().Context()
	if status == StatusClientClosedRequest {
		s.auditRejection(c, status, code)
		_ = c.NoContent(status)
		return
	}
	if status >= 500 {
		s.log.ErrorContext(ctx, "FHIR request failed", slog.String("request_id", RequestID(c)),
			slog.String("route", c.Path()), slog.String("code", code), slog.String("error", err.Error()))
	}
	var ra RetryAfter
	if errors.As(err, &ra) && ra.RetryAfterSeconds() > 0 {
		c.Response().Header().Set("Retry-After", strconv.Itoa(ra.RetryAfterSeconds()))
	}
	if status >= 400 && status < 500 {
		s.rejection(c, err, status, code)
	}
	if problems == nil {
		problems = []fhir.Problem{{Code: code, Type: issueType(status), Message: msg}}
	}
	var werr error
	if c.Request().Method == http.MethodHead {
		werr = c.NoContent(status)
	} else {
		werr = writeFHIR(c, status, fhir.RenderOperationOutcome("", problems...))
	}
	if werr != nil {
		s.log.WarnContext(ctx, "write FHIR error response", slog.String("error", werr.Error()))
	}
}

// fhirClassify is classify for the FHIR API's own errors too: a refused search (400, its
// problems), a resource not found or not readable (404 not_found).
func fhirClassify(err error) (status int, code, msg string, problems []fhir.Problem) {
	if st, problems, ok := subscriptionClassify(err); ok {
		return st, problems[0].Code, problems[0].Message, problems
	}
	var se *fhir.SearchError
	if errors.As(err, &se) && len(se.Problems) > 0 {
		return http.StatusBadRequest, se.Problems[0].Code, se.Problems[0].Message, se.Problems
	}
	if errors.Is(err, api.ErrNotFound) {
		return http.StatusNotFound, CodeNotFound, "no such resource", nil
	}
	status, code, msg = classify(err)
	if status == http.StatusForbidden && code == CodeForbidden {
		msg = "not allowed"
	}
	return status, code, msg, nil
}

// issueType is the FHIR issue type of an HTTP status.
func issueType(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "invalid"
	case http.StatusUnauthorized:
		return "login"
	case http.StatusForbidden:
		return "forbidden"
	case http.StatusNotFound:
		return "not-found"
	case http.StatusMethodNotAllowed:
		return "not-supported"
	case http.StatusRequestEntityTooLarge:
		return "too-costly"
	case http.StatusTooManyRequests:
		return "throttled"
	case http.StatusServiceUnavailable:
		return "transient"
	}
	if status >= 500 {
		return "exception"
	}
	return "processing"
}

// chainAudit reads the audit trail for the FHIR API (only the shell reads the chain).
type chainAudit struct{ c *chain.Service }

func (a chainAudit) AuditEvents(ctx context.Context, objectType, objectID string, from, to time.Time, cursor string, limit int) ([]fhir.AuditEvent, string, error) {
	f := chain.EventFilter{ObjectType: objectType, ObjectID: objectID, Cursor: cursor, Limit: limit}
	if from.After(time.Unix(0, 0)) {
		f.From = from
	}
	if to.Year() < 9999 {
		f.To = to
	}
	page, err := a.c.Events(ctx, f)
	if err != nil {
		return nil, "", err
	}
	out := make([]fhir.AuditEvent, len(page.Events))
	for i, e := range page.Events {
		out[i] = fhirAuditEvent(e, nil)
	}
	return out, page.NextCursor, nil
}

func (a chainAudit) AuditEvent(ctx context.Context, id uuid.UUID) (fhir.AuditEvent, error) {
	p, err := a.c.Event(ctx, id)
	if errors.Is(err, chain.ErrEventNotFound) {
		return fhir.AuditEvent{}, errors.Join(api.ErrNotFound, err)
	}
	if err != nil {
		return fhir.AuditEvent{}, err
	}
	var leaf *int64
	if p.Batch != nil {
		leaf = p.Batch.LeafIndex
	}
	return fhirAuditEvent(p.Event, leaf), nil
}

func fhirAuditEvent(e chain.StoredEvent, leaf *int64) fhir.AuditEvent {
	str := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	out := fhir.AuditEvent{ID: e.ID.String(), Time: e.Time, Action: e.Action, Outcome: e.Outcome, Reason: e.Reason,
		ActorKind: e.ActorKind, ActorID: str(e.ActorID), AuthMethod: e.ActorAuth, ObjectType: e.ObjectType,
		ObjectID: str(e.ObjectID), SourceAddr: str(e.SourceAddr), RequestID: str(e.RequestID), LeafIndex: leaf}
	if e.ObjectType == "patient" {
		out.PatientID = out.ObjectID
	}
	return out
}
