package server

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
)

// List endpoints narrowed to what the caller may see. The enforcer's visibility filter (every
// patient; or their wards, their care-team patients, their break-glass patients) is applied in
// the clinical core's one SQL query (core.VisiblePatients, core.VisiblePatientIDs): no row of
// another care unit is ever read. Every list that returns patients is recorded as
// access.phi.list with the patients' ids.

func patientIDs(ps []core.Patient) []uuid.UUID {
	out := make([]uuid.UUID, len(ps))
	for i, p := range ps {
		out[i] = p.ID
	}
	return out
}

// listPatients answers GET /patients (?ward_id, clinician, discharged, limit, mrn) with the
// patients the caller may see.
func (s *Server) listPatients(c echo.Context) error {
	q := c.QueryParams()
	var f core.PatientFilter
	if err := queryUUID(c, "ward_id", &f.WardID); err != nil {
		return err
	}
	f.Clinician = q.Get("clinician")
	f.Discharged = q.Get("discharged") == "true"
	if err := queryLimit(c, 1000, "invalid_limit", &f.Limit); err != nil {
		return err
	}
	ctx := c.Request().Context()
	var list []core.Patient
	if mrn := q.Get("mrn"); mrn != "" {
		// One patient by MRN: shown only if the caller may read it (else the answer is the
		// same empty list as for an unknown MRN).
		p, err := s.cfg.Core.PatientByMRN(ctx, mrn)
		switch {
		case errors.Is(err, core.ErrNotFound):
		case err != nil:
			return err
		default:
			t := auth.Target{Object: auth.ObjPatient}
			if err := s.patientTarget(ctx, p.ID, &t); err != nil {
				return err
			}
			if _, err := s.cfg.Auth.Enforcer().Allow(PrincipalOf(c), "read", t); err == nil {
				list = []core.Patient{p}
			}
		}
	} else {
		vis, err := s.visibleTo(c)
		if err != nil {
			return err
		}
		if list, err = s.cfg.Core.VisiblePatients(ctx, vis, f); err != nil {
			return err
		}
	}
	if list == nil {
		list = []core.Patient{}
	}
	if len(list) > 0 {
		if err := s.auditRead(ctx, c, "access.phi.list", audit.Object{Type: "patient_list"},
			map[string]any{"what": "patients", "patients": patientIDs(list)}); err != nil {
			return err
		}
	}
	return c.JSON(http.StatusOK, map[string]any{"patients": list})
}

// listAlarms answers GET /alarms (?patient_id, rule_id, state, limit) with the alarms of the
// patients the caller may see. With patient_id the middleware has already decided (alarm read
// on that patient).
func (s *Server) listAlarmsVisible(c echo.Context) error {
	if c.QueryParam("patient_id") != "" {
		return s.listAlarmsOf(c, nil)
	}
	vis, err := s.visibleTo(c)
	if err != nil {
		return err
	}
	if vis.All {
		return s.listAlarmsOf(c, nil)
	}
	ids, err := s.cfg.Core.VisiblePatientIDs(c.Request().Context(), vis, core.PatientFilter{Limit: 1000})
	if err != nil {
		return err
	}
	return s.listAlarmsOf(c, &ids)
}

// listAlarmsOf lists alarms by the query's filter; patients, when not nil, restricts them to
// those patients (one SQL-filtered query each: the alarm store takes one patient per query).
func (s *Server) listAlarmsOf(c echo.Context, patients *[]uuid.UUID) error {
	q := c.QueryParams()
	var f alarms.Filter
	if err := queryUUID(c, "patient_id", &f.PatientID); err != nil {
		return err
	}
	f.RuleID = q.Get("rule_id")
	if v := q.Get("state"); v != "" {
		for _, st := range strings.Split(v, ",") {
			f.States = append(f.States, alarms.State(strings.TrimSpace(st)))
		}
	}
	if err := queryLimit(c, 1000, "invalid_limit", &f.Limit); err != nil {
		return err
	}
	ctx := c.Request().Context()
	var list []alarms.Alarm
	if patients == nil {
		var err error
		if list, err = s.cfg.Alarms.List(ctx, f); err != nil {
			return err
		}
	} else {
		limit := f.Limit
		if limit <= 0 {
			limit = 100
		}
		for _, id := range *patients {
			pf := f
			pf.PatientID = id
			part, err := s.cfg.Alarms.List(ctx, pf)
			if err != nil {
				return err
			}
			list = append(list, part...)
		}
		slices.SortFunc(list, func(a, b alarms.Alarm) int {
			if c := b.OpenedAt.Compare(a.OpenedAt); c != 0 {
				return c
			}
			return strings.Compare(a.ID.String(), b.ID.String())
		})
		if len(list) > limit {
			list = list[:limit]
		}
	}
	// Each alarm as a clinician reads it, with who it is about when the caller may see that
	// (alarms_view.go); the identities shown are named in the list's audit event.
	out, identified, err := s.renderAlarms(c, list)
	if err != nil {
		return err
	}
	if len(list) > 0 {
		seen := map[uuid.UUID]bool{}
		var ids []uuid.UUID
		for _, a := range list {
			if !seen[a.PatientID] {
				seen[a.PatientID] = true
				ids = append(ids, a.PatientID)
			}
		}
		payload := map[string]any{"what": "alarms", "patients": ids}
		if len(identified.patients) > 0 {
			identified.audit(payload)
		}
		if err := s.auditRead(ctx, c, "access.phi.list", audit.Object{Type: "alarm_list"}, payload); err != nil {
			return err
		}
	}
	return c.JSON(http.StatusOK, map[string]any{"alarms": out})
}

// streamVisible narrows GET /stream to the caller's patients before the stream handler runs:
// each ?patient_id= asked for must be readable (alarm read), and without one a caller who may
// not see every patient is subscribed to the patients visible now (a patient admitted later
// needs a new subscription). The subscription is recorded as access.stream.subscribed.
func (s *Server) streamVisible(c echo.Context) error {
	req := c.Request()
	ctx := req.Context()
	q := req.URL.Query()
	p := PrincipalOf(c)
	var patients []uuid.UUID
	subscribedAll := false
	if asked := q["patient_id"]; len(asked) > 0 {
		for _, v := range asked {
			id, err := uuid.Parse(v)
			if err != nil {
				return BadRequest("invalid_patient_id", "patient_id must be a UUID")
			}
			t := auth.Target{Object: auth.ObjAlarm}
			if err := s.patientTarget(ctx, id, &t); err != nil {
				return err
			}
			if _, err := s.cfg.Auth.Enforcer().Allow(p, "read", t); err != nil {
				if aerr := s.auditDenied(c, access{obj: auth.ObjAlarm, act: "read"}, t); aerr != nil {
					return aerr // an unrecorded refusal is an internal error, not a clean 403
				}
				refusalAudited(c) // access.denied is the request's one record
				return err
			}
			patients = append(patients, id)
		}
	} else {
		vis, err := s.visibleTo(c)
		if err != nil {
			return err
		}
		if !vis.All {
			patients, err = s.cfg.Core.VisiblePatientIDs(ctx, vis, core.PatientFilter{Limit: 1000})
			if err != nil {
				return err
			}
			if len(patients) == 0 {
				// Nobody visible: a filter that matches no patient (never "every patient").
				q.Set("patient_id", uuid.Must(uuid.NewV7()).String())
			}
			for _, id := range patients {
				q.Add("patient_id", id.String())
			}
			u := *req.URL
			u.RawQuery = q.Encode()
			r2 := req.Clone(ctx)
			r2.URL = &u
			c.SetRequest(r2)
		} else {
			patients, subscribedAll = nil, true
		}
	}
	payload := map[string]any{"what": "stream"}
	if patients != nil {
		payload["patients"] = patients
	} else {
		payload["patients"] = "all"
	}
	if err := s.auditRead(ctx, c, "access.stream.subscribed", audit.Object{Type: "stream"}, payload); err != nil {
		return err
	}
	// Still allowed: the stream itself, every patient subscribed (or still every patient).
	stillAllowed := func(ctx context.Context, q *auth.Principal) error {
		enf := s.cfg.Auth.Enforcer()
		if _, err := enf.Allow(q, "subscribe", auth.Target{Object: auth.ObjStream}); err != nil {
			return err
		}
		if subscribedAll {
			vis, err := enf.Visibility(q)
			if err == nil && !vis.All {
				return auth.ErrForbidden
			}
			return err
		}
		for _, id := range patients {
			t := auth.Target{Object: auth.ObjAlarm}
			if err := s.patientTarget(ctx, id, &t); err != nil {
				return err
			}
			if _, err := enf.Allow(q, "read", t); err != nil {
				return err
			}
		}
		return nil
	}
	sctx, stop := s.untilSessionEnds(c, stillAllowed)
	defer stop()
	c.SetRequest(c.Request().WithContext(sctx))
	return s.coreStream(c)
}

// auditEventsRead records a read of the audit trail (its payloads may hold personal data), then
// answers it.
func (s *Server) auditTrailRead(h echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		q := url.Values{}
		for k, v := range c.Request().URL.Query() {
			if k != "cursor" {
				q[k] = v
			}
		}
		obj := audit.Object{Type: "audit_trail", ID: c.Param("id")}
		if err := s.auditRead(c.Request().Context(), c, "access.audit.read", obj, map[string]any{"query": q.Encode()}); err != nil {
			return err
		}
		return h(c)
	}
}
