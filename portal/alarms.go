package portal

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
)

// The alarm inbox (docs/portal.md): the viewer's open alarms, by priority then age, with
// acknowledge, silence (reason and bounded duration), resolve (reason), bulk acknowledge for
// one patient, who acted and when, the escalation state, and filters. Every form carries the
// session's CSRF token; the alarm lifecycle (and its audit) is core/alarms': the portal asks
// the enforcer whether the viewer may act and shows the answer.

// silenceChoices are the durations a silence form offers, in minutes (core/alarms bounds
// them again: Config.MaxSilence).
var silenceChoices = []int{5, 10, 15, 30}

// inboxFilter is the inbox's query string.
type inboxFilter struct {
	Priority string    // "", "high", "medium", "low"
	State    string    // "", "active", "acknowledged"
	Patient  uuid.UUID // zero: every patient
}

func (f inboxFilter) query() string {
	v := url.Values{}
	if f.Priority != "" {
		v.Set("priority", f.Priority)
	}
	if f.State != "" {
		v.Set("state", f.State)
	}
	if f.Patient != uuid.Nil {
		v.Set("patient", f.Patient.String())
	}
	return v.Encode()
}

// inboxAlarm is one alarm of the inbox.
type inboxAlarm struct {
	ID                       uuid.UUID
	Priority                 priority
	Message, RuleID          string
	PatientID                uuid.UUID
	PatientName, MRN, Ward   string
	Opened, Age, State       string
	Escalation               string
	AckedBy, AckedAt         string
	SilencedBy, SilenceUntil string
	SilenceReason            string
	CanAck, CanSilence       bool
	CanResolve               bool
	Errors                   map[string]*formError // a refused form of this alarm: by field
	Reason                   string                // the reason typed into the refused form
	opened                   time.Time
}

// inboxPatient is a patient with open alarms (the patient filter and bulk acknowledge).
type inboxPatient struct {
	ID       uuid.UUID
	Name     string
	Active   int // alarms not acknowledged yet
	CanAck   bool
	Selected bool
}

type inboxData struct {
	base
	Filter         inboxFilter
	FilterError    *formError
	Alarms         []inboxAlarm
	Patients       []inboxPatient
	Notice         string
	Conflict       *formError
	SilenceChoices []int
	StreamURL      string
	PatientIDs     []uuid.UUID
	Query          template.URL // the filters, kept in the forms' actions (already encoded)
}

// clock formats a time for a page (UTC, minutes).
func clock(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") }

// parseInboxFilter reads the query; a bad value is a coded error for the field.
func parseInboxFilter(c echo.Context) (inboxFilter, *formError) {
	var f inboxFilter
	q := c.QueryParams()
	switch v := q.Get("priority"); v {
	case "", "high", "medium", "low":
		f.Priority = v
	default:
		return f, &formError{Code: "invalid_priority", Field: "priority", Message: "Choose a priority from the list."}
	}
	switch v := q.Get("state"); v {
	case "", "active", "acknowledged":
		f.State = v
	default:
		return f, &formError{Code: "invalid_state", Field: "state", Message: "Choose a state from the list."}
	}
	if v := q.Get("patient"); v != "" {
		id, err := uuid.Parse(v)
		if err != nil {
			return f, &formError{Code: "invalid_patient", Field: "patient", Message: "Choose a patient from the list."}
		}
		f.Patient = id
	}
	return f, nil
}

// viewablePatients are the patients whose data the viewer may read (wards, care teams and
// break-glass grants), with their care teams: what the inbox and its actions work on.
func (p *Portal) viewablePatients(ctx context.Context, pr *auth.Principal) ([]core.Patient, map[uuid.UUID][]core.CareTeamMember, map[uuid.UUID]string, error) {
	groups, err := p.visiblePatients(ctx, pr)
	if err != nil {
		return nil, nil, nil, err
	}
	names := map[uuid.UUID]string{}
	var pts []core.Patient
	for _, g := range groups {
		for _, t := range g.Tiles {
			pts = append(pts, t.patient)
			names[t.PatientID] = g.Name
		}
	}
	f, err := p.cfg.Auth.Enforcer().Visibility(pr)
	if err != nil {
		return nil, nil, nil, err
	}
	for _, id := range f.Patients { // break-glass grants
		if slices.ContainsFunc(pts, func(x core.Patient) bool { return x.ID == id }) {
			continue
		}
		pt, err := p.cfg.Core.Patient(ctx, id)
		if errors.Is(err, core.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, nil, nil, err
		}
		pts = append(pts, pt)
		names[id] = "Break-glass access"
	}
	ids := make([]uuid.UUID, len(pts))
	for i, x := range pts {
		ids[i] = x.ID
	}
	teams, err := p.cfg.Core.CareTeams(ctx, ids)
	if err != nil {
		return nil, nil, nil, err
	}
	return pts, teams, names, nil
}

// actorNames turns actor ids (user ids) into display names, once per page.
type actorNames struct {
	p     *Portal
	ctx   context.Context
	cache map[string]string
}

func (n *actorNames) name(id string) string {
	if id == "" {
		return ""
	}
	if v, ok := n.cache[id]; ok {
		return v
	}
	v := id
	if uid, err := uuid.Parse(id); err == nil {
		if u, err := n.p.cfg.Auth.User(n.ctx, uid); err == nil && u.Profile.DisplayName != "" {
			v = u.Profile.DisplayName
		}
	} else if id == "vigil-alarms" {
		v = "Vigil (automatic)"
	}
	n.cache[id] = v
	return v
}

// alarmInbox is GET /alarms.
func (p *Portal) alarmInbox(c echo.Context) error {
	pr, creds, err := p.viewer(c)
	if err != nil {
		return err
	}
	if pr == nil {
		return toSignIn(c)
	}
	data := inboxData{base: p.base("Alarm inbox", pr, creds.SessionToken)}
	status := http.StatusOK
	f, ferr := parseInboxFilter(c)
	if ferr != nil {
		data.FilterError, status = ferr, http.StatusBadRequest
		f = inboxFilter{}
	}
	switch c.QueryParam("done") {
	case "acknowledged":
		data.Notice = "Alarm acknowledged."
	case "silenced":
		data.Notice = "Alarm silenced."
	case "resolved":
		data.Notice = "Alarm resolved."
	case "bulk":
		if n, err := strconv.Atoi(c.QueryParam("n")); err == nil && n >= 0 {
			data.Notice = fmt.Sprintf("%d alarm(s) of the patient acknowledged.", n)
		}
	}
	return p.renderInbox(c, pr, status, data, f, nil)
}

// renderInbox fills the inbox for filter f and renders it with status; refused, when set, is
// the alarm whose form came back with errors (its errors and typed reason are kept).
func (p *Portal) renderInbox(c echo.Context, pr *auth.Principal, status int, data inboxData, f inboxFilter, refused *inboxAlarm) error {
	ctx := c.Request().Context()
	if p.cfg.Alarms == nil {
		return echo.NewHTTPError(http.StatusNotFound, "alarms are not configured")
	}
	pts, teams, wards, err := p.viewablePatients(ctx, pr)
	if err != nil {
		return fmt.Errorf("portal: alarm inbox: %w", err)
	}
	byID := map[uuid.UUID]core.Patient{}
	var ids []uuid.UUID
	decisions := map[uuid.UUID]auth.Decision{}
	for _, pt := range pts {
		d, err := p.authorizeWithTeam(pr, auth.ObjAlarm, pt, teams[pt.ID])
		if errors.Is(err, auth.ErrForbidden) {
			continue
		}
		if err != nil {
			return fmt.Errorf("portal: alarm inbox: %w", err)
		}
		byID[pt.ID], decisions[pt.ID] = pt, d
		ids = append(ids, pt.ID)
	}
	if f.Patient != uuid.Nil {
		if _, ok := byID[f.Patient]; !ok && data.FilterError == nil {
			data.FilterError, status = &formError{Code: "invalid_patient", Field: "patient", Message: "Choose a patient from the list."}, http.StatusBadRequest
			f.Patient = uuid.Nil
		}
	}
	data.Filter, data.Query = f, template.URL(f.query()) // #nosec G203 -- url.Values.Encode output
	open, err := p.cfg.Alarms.OpenAlarmsOf(ctx, ids)
	if err != nil {
		return fmt.Errorf("portal: alarm inbox: %w", err)
	}
	now := p.cfg.Now()
	names := &actorNames{p: p, ctx: ctx, cache: map[string]string{}}
	may := func(pt core.Patient, act string) bool { // may the viewer act on this patient's alarms
		t := auth.Target{Object: auth.ObjAlarm, Patient: pt.ID}
		if pt.WardID != nil {
			t.Ward = *pt.WardID
		}
		for _, m := range teams[pt.ID] {
			t.CareTeam = append(t.CareTeam, m.ClinicianID)
		}
		_, err := p.cfg.Auth.Enforcer().Allow(pr, act, t)
		return err == nil
	}
	var reads []phiRead
	for _, id := range ids {
		as := open[id]
		if len(as) == 0 {
			continue
		}
		pt := byID[id]
		canAck := may(pt, "acknowledge")
		ip := inboxPatient{ID: id, Name: pt.PHI.GivenName + " " + pt.PHI.FamilyName, CanAck: canAck, Selected: id == f.Patient}
		canSilence, canResolve := may(pt, "silence"), may(pt, "resolve")
		shown := false
		for _, a := range as {
			if a.State == alarms.StateActive {
				ip.Active++
			}
			pri := priorityOf(a.Severity)
			if (f.Priority != "" && pri.Class != f.Priority) || (f.State != "" && string(a.State) != f.State) ||
				(f.Patient != uuid.Nil && f.Patient != id) {
				continue
			}
			shown = true
			v := inboxAlarm{ID: a.ID, Priority: pri, Message: a.Message, RuleID: a.RuleID,
				PatientID: id, PatientName: ip.Name, MRN: pt.PHI.MRN, Ward: wards[id], Opened: clock(a.OpenedAt),
				Age: age(now, a.OpenedAt), State: string(a.State), opened: a.OpenedAt,
				CanAck: canAck && a.State == alarms.StateActive, CanSilence: canSilence, CanResolve: canResolve}
			switch {
			case a.State == alarms.StateAcknowledged:
				v.Escalation = "Escalation stopped (acknowledged)"
			case a.NextEscalation != nil:
				v.Escalation = fmt.Sprintf("Escalation tier %d; next escalation %s", a.Tier, clock(*a.NextEscalation))
			default:
				v.Escalation = fmt.Sprintf("Escalation tier %d (highest)", a.Tier)
			}
			if a.AckedAt != nil {
				v.AckedBy, v.AckedAt = names.name(a.AckedBy), clock(*a.AckedAt)
			}
			if a.Silenced(now) {
				v.SilencedBy, v.SilenceUntil, v.SilenceReason = names.name(a.SilencedBy), clock(*a.SilencedUntil), a.SilenceReason
			}
			if refused != nil && refused.ID == a.ID {
				v.Errors, v.Reason = refused.Errors, refused.Reason
			}
			data.Alarms = append(data.Alarms, v)
		}
		data.Patients = append(data.Patients, ip)
		if shown {
			reads = append(reads, phiRead{patient: id.String(), what: "alarm_inbox", decision: decisions[id]})
		}
	}
	data.PatientIDs = ids // the stream follows every patient whose alarms may appear
	// Priority first (high to low), then age (the oldest first).
	sort.SliceStable(data.Alarms, func(i, j int) bool {
		a, b := data.Alarms[i], data.Alarms[j]
		if a.Priority.Rank != b.Priority.Rank {
			return a.Priority.Rank > b.Priority.Rank
		}
		return a.opened.Before(b.opened)
	})
	sort.Slice(data.Patients, func(i, j int) bool { return data.Patients[i].Name < data.Patients[j].Name })
	data.SilenceChoices, data.StreamURL = silenceChoices, p.cfg.StreamURL
	if err := p.auditReads(ctx, c, pr, reads); err != nil {
		return err
	}
	return p.render(c, status, "alarms.html", data)
}

// checkForm authenticates a form post and checks its CSRF token; it answers the refusal
// itself (ok false) when the caller must stop.
func (p *Portal) checkForm(c echo.Context) (*auth.Principal, auth.Credentials, bool, error) {
	pr, creds, err := p.viewer(c)
	if err != nil {
		return nil, creds, false, err
	}
	if pr == nil {
		return nil, creds, false, toSignIn(c)
	}
	if err := p.cfg.Auth.CheckCSRF(c.Request().Context(), c.Request(), pr, creds); err != nil {
		if auth.CodeOf(err) != "" { // refused and audited (auth.csrf.rejected): the one record
			audited(c)
			return nil, creds, false, p.errorPage(c, pr, creds, http.StatusForbidden, "Form refused", auth.ErrCSRFInvalid.Code,
				"The form was refused: its security token is missing or wrong. Reload the page and try again.")
		}
		return nil, creds, false, err
	}
	return pr, creds, true, nil
}

// alarmTarget loads an alarm and its patient's authorization target for action act; a
// refusal is audited (access.denied) and answered with the 403 page (ok false).
func (p *Portal) alarmTarget(c echo.Context, pr *auth.Principal, creds auth.Credentials, act string) (alarms.Alarm, bool, error) {
	ctx := c.Request().Context()
	if p.cfg.Alarms == nil {
		return alarms.Alarm{}, false, echo.NewHTTPError(http.StatusNotFound, "alarms are not configured")
	}
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return alarms.Alarm{}, false, p.errorPage(c, pr, creds, http.StatusBadRequest, "Bad request", "invalid_alarm_id", "The alarm id is not valid.")
	}
	a, err := p.cfg.Alarms.Get(ctx, id)
	if errors.Is(err, alarms.ErrNotFound) {
		return a, false, p.errorPage(c, pr, creds, http.StatusNotFound, "Not found", "alarm_not_found", "There is no such alarm.")
	}
	if err != nil {
		return a, false, fmt.Errorf("portal: alarm: %w", err)
	}
	if ok, err := p.authorizePatient(c, pr, creds, a.PatientID, auth.ObjAlarm, act); !ok || err != nil {
		return a, false, err
	}
	return a, true, nil
}

// alarmAction is POST /alarms/:id/{acknowledge,silence,resolve}.
func (p *Portal) alarmAction(kind alarms.TransitionKind) echo.HandlerFunc {
	verb := map[alarms.TransitionKind]string{alarms.Acknowledged: "acknowledge", alarms.Silenced: "silence", alarms.Resolved: "resolve"}[kind]
	return func(c echo.Context) error {
		pr, creds, ok, err := p.checkForm(c)
		if !ok {
			return err
		}
		a, ok, err := p.alarmTarget(c, pr, creds, verb)
		if !ok {
			return err
		}
		r := c.Request()
		ctx := r.Context()
		f, _ := parseInboxFilter(c) // the inbox's filters, kept in the form's action
		by := audit.Event{Actor: pr.Actor(), RequestID: requestID(c), SourceAddr: c.RealIP()}
		reason := strings.TrimSpace(r.PostFormValue("reason"))
		// The form's own checks (coded errors next to the fields); the lifecycle checks them
		// again and audits the refusal, so a refused form is recorded and nothing is stored.
		errs := map[string]*formError{}
		var d time.Duration
		switch kind {
		case alarms.Silenced:
			if reason == "" {
				errs["silence_reason"] = &formError{Code: "silence_reason_required", Field: "reason", Message: "State why the alarm is silenced."}
			}
			m, err := strconv.Atoi(r.PostFormValue("minutes"))
			if err != nil || !slices.Contains(silenceChoices, m) {
				errs["silence_minutes"] = &formError{Code: "silence_duration_invalid", Field: "minutes", Message: "Choose a duration from the list (at most 30 minutes)."}
			} else {
				d = time.Duration(m) * time.Minute
			}
		case alarms.Resolved:
			if reason == "" {
				errs["resolve_reason"] = &formError{Code: "resolve_reason_required", Field: "reason", Message: "State why the alarm is resolved by hand."}
			}
		}
		switch kind {
		case alarms.Acknowledged:
			_, err = p.cfg.Alarms.Acknowledge(ctx, a.ID, by, "")
		case alarms.Silenced:
			_, err = p.cfg.Alarms.Silence(ctx, a.ID, by, reason, d)
		case alarms.Resolved:
			_, err = p.cfg.Alarms.Resolve(ctx, a.ID, by, reason)
		}
		data := inboxData{base: p.base("Alarm inbox", pr, creds.SessionToken)}
		if alarms.RefusalRecorded(err) {
			// The lifecycle's rejection event (alarm.acknowledged, … rejected) is committed: the
			// one record. A refusal whose record failed stays unmarked (the server records it).
			audited(c)
		}
		switch {
		case err == nil:
			audited(c) // the lifecycle's event (alarm.acknowledged, …)
			q := f.query()
			if q != "" {
				q += "&"
			}
			return c.Redirect(http.StatusSeeOther, "/alarms?"+q+"done="+string(kind))
		case errors.Is(err, alarms.ErrConflict):
			data.Conflict = p.conflict(ctx, a.ID, verb)
			return p.renderInbox(c, pr, http.StatusConflict, data, f, nil)
		case errors.Is(err, alarms.ErrInvalidRequest):
			if len(errs) == 0 { // the lifecycle's bound (Config.MaxSilence) is narrower than the form's
				errs["silence_minutes"] = &formError{Code: "silence_duration_invalid", Field: "minutes", Message: "That duration is longer than allowed."}
			}
			return p.renderInbox(c, pr, http.StatusUnprocessableEntity, data, f, &inboxAlarm{ID: a.ID, Errors: errs, Reason: reason})
		}
		return fmt.Errorf("portal: %s alarm: %w", verb, err)
	}
}

// conflict explains why an action on an alarm was refused as stale: what the alarm is now,
// who made it so and when.
func (p *Portal) conflict(ctx context.Context, id uuid.UUID, verb string) *formError {
	a, err := p.cfg.Alarms.Get(ctx, id)
	if err != nil {
		return &formError{Code: "alarm_conflict", Message: "The alarm changed since this page was loaded; nothing was changed."}
	}
	names := &actorNames{p: p, ctx: ctx, cache: map[string]string{}}
	switch {
	case a.State == alarms.StateResolved && a.ResolvedAt != nil:
		who := names.name(a.ResolvedBy)
		if who == "" {
			who = "Vigil (the condition cleared)"
		}
		return &formError{Code: "alarm_resolved", Message: fmt.Sprintf("Could not %s: the alarm “%s” was already resolved by %s at %s. Nothing was changed.",
			verb, a.Message, who, clock(*a.ResolvedAt))}
	case a.State == alarms.StateAcknowledged && a.AckedAt != nil:
		return &formError{Code: "alarm_already_acknowledged", Message: fmt.Sprintf("Could not %s: the alarm “%s” was already acknowledged by %s at %s. Nothing was changed.",
			verb, a.Message, names.name(a.AckedBy), clock(*a.AckedAt))}
	}
	return &formError{Code: "alarm_conflict", Message: "The alarm changed since this page was loaded; nothing was changed."}
}

// bulkAcknowledge is POST /alarms/acknowledge-patient: every active alarm of one patient is
// acknowledged (each its own transition and audit event); alarms acknowledged meanwhile by
// someone else are left as they are (the lifecycle refuses each as stale and records its
// rejection). The request's records are the lifecycle's events, committed: it is marked
// audited as soon as one was recorded, so the server adds no http.request.completed. When
// nothing was acknowledged but refusals were recorded (every active alarm was taken by someone
// else meanwhile), the answer is 409 nothing_to_acknowledge, agreeing with those records, not
// the success redirect. With no active alarm at all it is a no-op: 303, recorded once by the
// server (http.request.completed).
func (p *Portal) bulkAcknowledge(c echo.Context) error {
	pr, creds, ok, err := p.checkForm(c)
	if !ok {
		return err
	}
	ctx := c.Request().Context()
	if p.cfg.Alarms == nil {
		return echo.NewHTTPError(http.StatusNotFound, "alarms are not configured")
	}
	id, err := uuid.Parse(c.Request().PostFormValue("patient_id"))
	if err != nil {
		return p.errorPage(c, pr, creds, http.StatusBadRequest, "Bad request", "invalid_patient_id", "The patient id is not valid.")
	}
	if ok, err := p.authorizePatient(c, pr, creds, id, auth.ObjAlarm, "acknowledge"); !ok || err != nil {
		return err
	}
	open, err := p.cfg.Alarms.OpenAlarmsOf(ctx, []uuid.UUID{id})
	if err != nil {
		return fmt.Errorf("portal: bulk acknowledge: %w", err)
	}
	by := audit.Event{Actor: pr.Actor(), RequestID: requestID(c), SourceAddr: c.RealIP()}
	n, refused := 0, 0
	for _, a := range open[id] {
		if a.State != alarms.StateActive {
			continue
		}
		_, err := p.cfg.Alarms.Acknowledge(ctx, a.ID, by, "bulk acknowledge (portal)")
		if alarms.RefusalRecorded(err) {
			refused++ // its alarm.acknowledged rejection is committed
		}
		switch {
		case err == nil:
			n++
		case errors.Is(err, alarms.ErrConflict): // acknowledged or resolved meanwhile
		default: // a server error: recorded by the server (http.request.failed)
			return fmt.Errorf("portal: bulk acknowledge: %w", err)
		}
	}
	if n+refused > 0 {
		// The lifecycle's alarm.acknowledged events (done or refused, each committed) are the
		// request's records. None at all: the server records the request (a no-op).
		audited(c)
	}
	f, _ := parseInboxFilter(c)
	if n == 0 && refused > 0 {
		data := inboxData{base: p.base("Alarm inbox", pr, creds.SessionToken)}
		data.Conflict = &formError{Code: "nothing_to_acknowledge",
			Message: "No alarm of the patient was acknowledged: each was acknowledged or resolved by someone else meanwhile. Nothing was changed."}
		return p.renderInbox(c, pr, http.StatusConflict, data, f, nil)
	}
	q := f.query()
	if q != "" {
		q += "&"
	}
	return c.Redirect(http.StatusSeeOther, fmt.Sprintf("/alarms?%sdone=bulk&n=%d", q, n))
}
