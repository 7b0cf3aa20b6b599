package server

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
)

// Alarm answers as a clinician reads them. Every alarm the API returns is the stored alarm
// (its machine fields, snake_case) plus:
//
//   - "readable": the rule's name, the priority, the limit and the measured values in words and
//     human units (rules.Readable), never a UCUM code or an enum name;
//   - "patient": who the alarm is about (display name, MRN, ward), only for a caller the
//     policy allows to read that patient's record (auth.ObjPatient "read" on the patient's
//     ward and care team: a clinician of the ward, the care team, a break-glass grant). A
//     caller who may see the alarm but not the patient (a device technician given alarm read)
//     gets the patient's id only. Showing identity is a read of PHI: it is recorded with the
//     answer's audit event (access.phi.list "identified", or access.phi.read "identity").
type alarmAnswer struct {
	alarms.Alarm
	Patient  *patientIdentity `json:"patient,omitempty"`
	Readable *rules.Readable  `json:"readable,omitempty"`
}

// patientIdentity is the part of a patient's record an alarm shows.
type patientIdentity struct {
	ID          uuid.UUID  `json:"id"`
	DisplayName string     `json:"display_name"` // "Family, Given"
	MRN         string     `json:"mrn"`
	WardID      *uuid.UUID `json:"ward_id,omitempty"`
	Ward        string     `json:"ward,omitempty"` // the ward's name
}

func displayName(phi core.PatientPHI) string {
	switch {
	case phi.FamilyName == "":
		return phi.GivenName
	case phi.GivenName == "":
		return strings.ToUpper(phi.FamilyName)
	}
	return strings.ToUpper(phi.FamilyName) + ", " + phi.GivenName
}

// renderAlarms makes the answers of list, deciding for each patient once whether the caller
// may see who it is. It returns the patients whose identity is shown.
func (s *Server) renderAlarms(c echo.Context, list []alarms.Alarm) ([]alarmAnswer, identities, error) {
	ctx := c.Request().Context()
	out := make([]alarmAnswer, len(list))
	ids := map[uuid.UUID]*patientIdentity{}
	var identified identities
	var wards map[uuid.UUID]string
	for i, a := range list {
		out[i].Alarm = a
		if s.cfg.Rules != nil {
			r := s.cfg.Rules.Explain(a)
			out[i].Readable = &r
		}
		who, done := ids[a.PatientID]
		if !done {
			var err error
			var d auth.Decision
			who, d, err = s.identity(ctx, c, a.PatientID, &wards)
			if err != nil {
				return nil, identities{}, err
			}
			ids[a.PatientID] = who
			if who != nil {
				identified.patients = append(identified.patients, a.PatientID)
				if d.BreakGlass != uuid.Nil {
					identified.breakGlass = append(identified.breakGlass, d.BreakGlass)
				}
				identified.basis = append(identified.basis, d.Basis)
			}
		}
		out[i].Patient = who
	}
	return out, identified, nil
}

// identities are the patients whose identity an answer shows, with the basis of each decision
// and the break-glass grants that allowed some, for the answer's audit event.
type identities struct {
	patients   []uuid.UUID
	basis      []string
	breakGlass []uuid.UUID
}

func (ids identities) audit(payload map[string]any) {
	payload["identified"] = ids.patients
	payload["identity_basis"] = ids.basis
	if len(ids.breakGlass) > 0 {
		payload["break_glass"] = ids.breakGlass
	}
}

// identity returns the patient's identity if the request's principal may read the patient's
// record (and the decision), nil otherwise (no principal, no clinical core, an unknown
// patient, a refusal).
func (s *Server) identity(ctx context.Context, c echo.Context, pid uuid.UUID, wards *map[uuid.UUID]string) (*patientIdentity, auth.Decision, error) {
	var d auth.Decision
	p := PrincipalOf(c)
	if p == nil || s.cfg.Core == nil || s.cfg.Auth == nil {
		return nil, d, nil
	}
	pt, err := s.cfg.Core.Patient(ctx, pid)
	if errors.Is(err, core.ErrNotFound) {
		return nil, d, nil
	}
	if err != nil {
		return nil, d, err
	}
	// The question patientTarget asks for a patient read, from the patient just read.
	team, err := s.cfg.Core.CareTeam(ctx, pid)
	if err != nil {
		return nil, d, err
	}
	t := auth.Target{Object: auth.ObjPatient, Patient: pid}
	if pt.WardID != nil {
		t.Ward = *pt.WardID
	}
	for _, m := range team {
		t.CareTeam = append(t.CareTeam, m.ClinicianID)
	}
	if d, err = s.cfg.Auth.Enforcer().Allow(p, "read", t); err != nil {
		if errors.Is(err, auth.ErrForbidden) {
			return nil, auth.Decision{}, nil // may see the alarm, not who it is about
		}
		return nil, d, err
	}
	who := &patientIdentity{ID: pid, DisplayName: displayName(pt.PHI), MRN: pt.PHI.MRN, WardID: pt.WardID}
	if pt.WardID != nil {
		if *wards == nil {
			ws, err := s.cfg.Core.Wards(ctx, uuid.Nil)
			if err != nil {
				return nil, d, err
			}
			*wards = make(map[uuid.UUID]string, len(ws))
			for _, w := range ws {
				(*wards)[w.ID] = w.Name
			}
		}
		who.Ward = (*wards)[*pt.WardID]
	}
	return who, d, nil
}

// answerAlarm answers one alarm (GET /alarms/{id} and the actions). When the patient's
// identity is shown, that read is recorded first as access.phi.read (what "identity"); if it
// cannot be recorded the identity is left out (an action has already taken effect: its
// answer is not refused, but no PHI is shown unaudited).
func (s *Server) answerAlarm(c echo.Context, status int, a alarms.Alarm) error {
	out, identified, err := s.renderAlarms(c, []alarms.Alarm{a})
	if err != nil {
		return err
	}
	if len(identified.patients) > 0 {
		payload := map[string]any{"what": "identity", "via": "alarm", "alarm_id": a.ID, "basis": identified.basis[0]}
		if len(identified.breakGlass) > 0 {
			payload["break_glass"] = identified.breakGlass[0]
		}
		if err := s.auditRead(c.Request().Context(), c, "access.phi.read", audit.Object{Type: "patient", ID: a.PatientID.String()}, payload); err != nil {
			out[0].Patient = nil
		}
	}
	return c.JSON(status, out[0])
}

// streamIdentityTTL is how long a stream keeps its decision to name a patient (or not) before
// asking the policy again: a break-glass grant that expires, a move to another ward.
const streamIdentityTTL = time.Minute

// streamIdentities returns, for one stream (GET /stream), what names the patient of an alarm
// event: the patient's identity when the stream's principal may read that patient's record,
// nil otherwise (and for events that are not alarm transitions). Each patient is decided once
// per streamIdentityTTL; each decision to name a patient is recorded as access.phi.read
// (what "identity", via "stream") before the first event that shows it, and a patient whose
// identity cannot be audited is not named. It runs on the stream's own goroutine.
func (s *Server) streamIdentities(c echo.Context) func(core.Event) *patientIdentity {
	type entry struct {
		who     *patientIdentity
		decided time.Time
	}
	cache := map[uuid.UUID]entry{}
	var wards map[uuid.UUID]string // ward names, read again every streamIdentityTTL
	var wardsAt time.Time
	return func(ev core.Event) *patientIdentity {
		if !strings.HasPrefix(ev.Type, "alarm.") || ev.PatientID == uuid.Nil {
			return nil
		}
		now := s.cfg.Now()
		if e, ok := cache[ev.PatientID]; ok && now.Sub(e.decided) < streamIdentityTTL {
			return e.who
		}
		if now.Sub(wardsAt) >= streamIdentityTTL {
			wards, wardsAt = nil, now
		}
		ctx := context.WithoutCancel(c.Request().Context())
		who, d, err := s.identity(ctx, c, ev.PatientID, &wards)
		if err != nil {
			s.log.WarnContext(ctx, "stream: patient identity not decided", slog.String("request_id", RequestID(c)),
				slog.String("error", err.Error()))
			return nil
		}
		if who != nil {
			payload := map[string]any{"what": "identity", "via": "stream", "basis": d.Basis}
			if d.BreakGlass != uuid.Nil {
				payload["break_glass"] = d.BreakGlass
			}
			if err := s.auditRead(ctx, c, "access.phi.read", audit.Object{Type: "patient", ID: ev.PatientID.String()}, payload); err != nil {
				return nil // not audited: not shown (decided again at the next event)
			}
		}
		cache[ev.PatientID] = entry{who: who, decided: now}
		return who
	}
}
