package portal

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
)

// The patient view (docs/portal.md): uPlot charts of each vital over 1 h / 24 h / 7 d
// (downsampled by core.Series), NEWS2 over time with its components, the alarm history, the
// device assignment history and the care team; the charts follow the live stream. A viewer
// who may not read the patient gets the 403 page (audited as access.denied) with the
// break-glass form when the policy allows them to open it.

// chartRange is a time range of the charts and the bucket it is downsampled to.
type chartRange struct {
	Name   string
	Label  string
	Span   time.Duration
	Bucket time.Duration
}

var chartRanges = []chartRange{
	{"1h", "1 hour", time.Hour, 30 * time.Second},
	{"24h", "24 hours", 24 * time.Hour, 5 * time.Minute},
	{"7d", "7 days", 7 * 24 * time.Hour, time.Hour},
}

func rangeOf(name string) (chartRange, bool) {
	if name == "" {
		name = "24h"
	}
	for _, r := range chartRanges {
		if r.Name == name {
			return r, true
		}
	}
	return chartRange{}, false
}

// chartVital is one chart of the patient view: one or two series (blood pressure).
type chartVital struct {
	ID    string   `json:"id"`
	Label string   `json:"label"`
	Unit  string   `json:"unit"`
	Codes []string `json:"codes"`
	Names []string `json:"names"`
}

var chartVitals = []chartVital{
	{"hr", "Heart rate", "/min", []string{core.LOINCHeartRate}, []string{"HR"}},
	{"spo2", "Oxygen saturation", "%", []string{core.LOINCSpO2}, []string{"SpO₂"}},
	{"rr", "Respiratory rate", "/min", []string{core.LOINCRespiratoryRate}, []string{"RR"}},
	{"bp", "Blood pressure", "mmHg", []string{core.LOINCSystolicBP, core.LOINCDiastolicBP}, []string{"Systolic", "Diastolic"}},
	{"temp", "Temperature", "°C", []string{core.LOINCBodyTemperature}, []string{"Temperature"}},
}

// seriesJSON is what the charts plot: per chart, the bucket times (Unix seconds) and one
// mean per series (null where a bucket has no value); NEWS2 totals and bands likewise.
type seriesJSON struct {
	Range  string        `json:"range"`
	From   int64         `json:"from"`
	To     int64         `json:"to"`
	Charts []chartSeries `json:"charts"`
	NEWS2  chartSeries   `json:"news2"`
}

type chartSeries struct {
	chartVital
	T []int64      `json:"t"`
	Y [][]*float64 `json:"y"`
	N []int64      `json:"n,omitempty"` // values per bucket (first series)
	X []string     `json:"x,omitempty"` // NEWS2 bands
}

type news2Row struct {
	At, Band, Label        string
	Total                  int
	RR, SpO2, Air, SBP     int
	Pulse, Conscious, Temp int
	Partial                bool
	Missing                string
}

type alarmRow struct {
	ID                      uuid.UUID
	Priority                priority
	Message, State          string
	Opened, Acked, Resolved string
	ResolveReason           string
}

type assignmentRow struct {
	Serial, Model, Started, Ended, By string
}

type teamRow struct{ Name, Role, Since string }

type latestRow struct{ Label, Value, Unit, Age string }

type patientData struct {
	base
	ID          uuid.UUID
	Name, MRN   string
	Ward        string
	Range       chartRange
	Ranges      []chartRange
	Charts      []chartVital
	Latest      []latestRow
	NEWS2       []news2Row
	Alarms      []alarmRow
	Assignments []assignmentRow
	Team        []teamRow
	StreamURL   string
	BreakGlass  bool // the page is open under a break-glass grant
	RangeError  *formError
}

// errorData is the model of the error page (403, 404, 400, CSRF refusals).
type errorData struct {
	base
	Status  int
	Heading string
	Code    string
	Message string
	// BreakGlass, when set, offers the break-glass form for this patient.
	BreakGlass *uuid.UUID
	Reason     string
	Minutes    int
	Choices    []int
	Errors     map[string]*formError
}

// breakGlassChoices are the grant durations the break-glass form offers, in minutes (auth
// bounds them again: BreakGlassConfig.Max).
var breakGlassChoices = []int{15, 30, 60}

// errorPage renders the error page with its coded message.
func (p *Portal) errorPage(c echo.Context, pr *auth.Principal, creds auth.Credentials, status int, heading, code, msg string) error {
	return p.render(c, status, "error.html", errorData{base: p.base(heading, pr, creds.SessionToken), Status: status, Heading: heading, Code: code, Message: msg})
}

// authorizePatient asks whether pr may do act on obj of the patient. A refusal is audited
// (access.denied, naming the patient) and answered with the 403 page, which offers the
// break-glass form when pr may open it (ok false, err the rendering's).
func (p *Portal) authorizePatient(c echo.Context, pr *auth.Principal, creds auth.Credentials, id uuid.UUID, obj, act string) (bool, error) {
	_, ok, err := p.patientDecision(c, pr, creds, id, obj, act)
	return ok, err
}

// jsonError answers a JSON endpoint of the portal with the server's error envelope.
func jsonError(c echo.Context, status int, code, msg string) error {
	return c.JSON(status, map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

// patientDecision is authorizePatient with the decision (its basis is audited with the read).
// For a JSON request (chart data) the refusals are JSON errors, not pages.
func (p *Portal) patientDecision(c echo.Context, pr *auth.Principal, creds auth.Credentials, id uuid.UUID, obj, act string) (auth.Decision, bool, error) {
	ctx := c.Request().Context()
	asJSON := strings.HasSuffix(c.Path(), "/series")
	pt, err := p.cfg.Core.Patient(ctx, id)
	if errors.Is(err, core.ErrNotFound) {
		if asJSON {
			return auth.Decision{}, false, jsonError(c, http.StatusNotFound, "patient_not_found", "no such patient")
		}
		return auth.Decision{}, false, p.errorPage(c, pr, creds, http.StatusNotFound, "Not found", "patient_not_found", "There is no such patient.")
	}
	if err != nil {
		return auth.Decision{}, false, fmt.Errorf("portal: patient: %w", err)
	}
	team, err := p.cfg.Core.CareTeam(ctx, id)
	if err != nil {
		return auth.Decision{}, false, fmt.Errorf("portal: patient: %w", err)
	}
	t := auth.Target{Object: obj, Patient: id}
	if pt.WardID != nil {
		t.Ward = *pt.WardID
	}
	for _, m := range team {
		t.CareTeam = append(t.CareTeam, m.ClinicianID)
	}
	d, err := p.cfg.Auth.Enforcer().Allow(pr, act, t)
	if err == nil {
		return d, true, nil
	}
	if !errors.Is(err, auth.ErrForbidden) {
		return d, false, fmt.Errorf("portal: patient: %w", err)
	}
	p.auditDenied(c, pr, id, obj, act)
	if asJSON {
		return d, false, jsonError(c, http.StatusForbidden, auth.ErrForbidden.Code, "not allowed to read this patient")
	}
	return d, false, p.forbidden(c, pr, creds, id, http.StatusForbidden, "", 0, nil)
}

// forbidden renders the 403 page for a patient (with the break-glass form when allowed).
func (p *Portal) forbidden(c echo.Context, pr *auth.Principal, creds auth.Credentials, id uuid.UUID, status int, reason string, minutes int, errs map[string]*formError) error {
	data := errorData{base: p.base("Not allowed", pr, creds.SessionToken), Status: status, Heading: "Not allowed",
		Code: auth.ErrForbidden.Code, Message: "This patient is not on your wards or care teams: you may not open their record.",
		Reason: reason, Minutes: minutes, Choices: breakGlassChoices, Errors: errs}
	if _, err := p.cfg.Auth.Enforcer().Allow(pr, "open", auth.Target{Object: auth.ObjBreakGlass}); err == nil {
		data.BreakGlass = &id
	}
	return p.render(c, status, "error.html", data)
}

// auditDenied records a refused page or action on a patient as access.denied.
func (p *Portal) auditDenied(c echo.Context, pr *auth.Principal, patient uuid.UUID, obj, act string) {
	ev := audit.Event{Time: p.cfg.Now(), Actor: pr.Actor(), Action: "access.denied", RequestID: requestID(c), SourceAddr: c.RealIP(),
		Object: audit.Object{Type: "patient", ID: patient.String()}, Outcome: audit.OutcomeRejected, Reason: "policy",
		Payload: map[string]any{"object": obj, "action": act, "route": c.Request().Method + " " + c.Path(), "via": "portal"}}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request().Context()), 5*time.Second)
	defer cancel()
	if _, err := p.cfg.Recorder.RecordNow(ctx, ev); err != nil {
		p.log.ErrorContext(ctx, "portal: audit of access denial failed", "request_id", ev.RequestID, "error", err.Error())
		return // not marked: the server's middleware records the refusal instead
	}
	audited(c)
}

// patientPage is GET /patients/:id.
func (p *Portal) patientPage(c echo.Context) error {
	pr, creds, err := p.viewer(c)
	if err != nil {
		return err
	}
	if pr == nil {
		return toSignIn(c)
	}
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return p.errorPage(c, pr, creds, http.StatusBadRequest, "Bad request", "invalid_patient_id", "The patient id is not valid.")
	}
	d, ok, err := p.patientDecision(c, pr, creds, id, auth.ObjObservation, "read")
	if !ok {
		return err
	}
	ctx := c.Request().Context()
	data := patientData{base: p.base("Patient", pr, creds.SessionToken), ID: id, Ranges: chartRanges, Charts: chartVitals,
		StreamURL: p.cfg.StreamURL, BreakGlass: d.Basis == auth.ScopeBreakGlass}
	status := http.StatusOK
	rg, ok := rangeOf(c.QueryParam("range"))
	if !ok {
		data.RangeError, status = &formError{Code: "invalid_range", Field: "range", Message: "Choose 1 hour, 24 hours or 7 days."}, http.StatusBadRequest
		rg, _ = rangeOf("")
	}
	data.Range = rg
	pt, err := p.cfg.Core.Patient(ctx, id)
	if err != nil {
		return fmt.Errorf("portal: patient: %w", err)
	}
	data.Name, data.MRN = pt.PHI.GivenName+" "+pt.PHI.FamilyName, pt.PHI.MRN
	data.Title = data.Name
	if pt.WardID != nil {
		names, err := p.wardNames(ctx)
		if err != nil {
			return fmt.Errorf("portal: patient: %w", err)
		}
		data.Ward = names[*pt.WardID]
	}
	now := p.cfg.Now()
	names := &actorNames{p: p, ctx: ctx, cache: map[string]string{}}
	// Latest values (the text alternative of the charts).
	src, err := p.loadTiles(ctx, []uuid.UUID{id})
	if err != nil {
		return fmt.Errorf("portal: patient: %w", err)
	}
	t := tile{PatientID: id}
	p.fill(&t, src)
	for _, v := range t.Vitals {
		data.Latest = append(data.Latest, latestRow{Label: v.Label, Value: v.Value, Unit: v.Unit, Age: v.Age})
	}
	if p.cfg.Rules != nil {
		hist, err := p.cfg.Rules.NEWS2History(ctx, id, now.Add(-rg.Span), time.Time{}, 50)
		if err != nil {
			return fmt.Errorf("portal: patient: %w", err)
		}
		for _, h := range hist {
			s := h.Score
			data.NEWS2 = append(data.NEWS2, news2Row{At: clock(h.EffectiveAt), Band: string(s.Band), Label: news2Label(string(s.Band)),
				Total: s.Total, RR: s.RespRate, SpO2: s.SpO2, Air: s.AirOrOxygen, SBP: s.SystolicBP, Pulse: s.Pulse,
				Conscious: s.Consciousness, Temp: s.Temperature, Partial: s.Partial, Missing: strings.Join(s.Missing, ", ")})
		}
	}
	if p.cfg.Alarms != nil {
		hist, err := p.cfg.Alarms.History(ctx, id, now.Add(-7*24*time.Hour), 100)
		if err != nil {
			return fmt.Errorf("portal: patient: %w", err)
		}
		for _, a := range hist {
			r := alarmRow{ID: a.ID, Priority: priorityOf(a.PeakSeverity), Message: a.Message, State: string(a.State), Opened: clock(a.OpenedAt)}
			if a.AckedAt != nil {
				r.Acked = names.name(a.AckedBy) + ", " + clock(*a.AckedAt)
			}
			if a.ResolvedAt != nil {
				who := names.name(a.ResolvedBy)
				if who == "" {
					who = "Vigil (condition cleared)"
				}
				r.Resolved, r.ResolveReason = who+", "+clock(*a.ResolvedAt), a.ResolveReason
			}
			data.Alarms = append(data.Alarms, r)
		}
	}
	if p.cfg.Devices != nil {
		as, err := p.cfg.Devices.PatientAssignments(ctx, id, 50)
		if err != nil {
			return fmt.Errorf("portal: patient: %w", err)
		}
		for _, a := range as {
			r := assignmentRow{Serial: a.Serial, Model: a.Model, Started: clock(a.StartedAt), Ended: "current", By: names.name(a.ActorID)}
			if a.EndedAt != nil {
				r.Ended = clock(*a.EndedAt)
			}
			data.Assignments = append(data.Assignments, r)
		}
	}
	team, err := p.cfg.Core.CareTeam(ctx, id)
	if err != nil {
		return fmt.Errorf("portal: patient: %w", err)
	}
	for _, m := range team {
		data.Team = append(data.Team, teamRow{Name: names.name(m.ClinicianID), Role: m.Role, Since: clock(m.AddedAt)})
	}
	if err := p.auditReads(ctx, c, pr, []phiRead{{patient: id.String(), what: "patient_view", decision: d}}); err != nil {
		return err
	}
	return p.render(c, status, "patient.html", data)
}

// patientSeries is GET /patients/:id/series?range=: the charts' data (JSON), downsampled by
// core.Series; each read is audited like the page.
func (p *Portal) patientSeries(c echo.Context) error {
	pr, creds, err := p.viewer(c)
	if err != nil {
		return err
	}
	if pr == nil {
		return toSignIn(c)
	}
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return jsonError(c, http.StatusBadRequest, "invalid_patient_id", "patient id must be a UUID")
	}
	rg, ok := rangeOf(c.QueryParam("range"))
	if !ok {
		return jsonError(c, http.StatusBadRequest, "invalid_range", "range must be 1h, 24h or 7d")
	}
	d, ok, err := p.patientDecision(c, pr, creds, id, auth.ObjObservation, "read")
	if !ok {
		return err
	}
	ctx := c.Request().Context()
	out, err := p.series(ctx, id, rg)
	if err != nil {
		return fmt.Errorf("portal: patient series: %w", err)
	}
	if err := p.auditReads(ctx, c, pr, []phiRead{{patient: id.String(), what: "patient_charts", decision: d}}); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

// series reads the charts of one patient over one range.
func (p *Portal) series(ctx context.Context, id uuid.UUID, rg chartRange) (seriesJSON, error) {
	to := p.cfg.Now().Truncate(time.Second).Add(time.Second)
	from := to.Add(-rg.Span)
	out := seriesJSON{Range: rg.Name, From: from.Unix(), To: to.Unix()}
	// Every series of every chart is read concurrently (one downsampled query each).
	buckets := make([][][]core.Bucket, len(chartVitals))
	var reads []func() error
	for ci, cv := range chartVitals {
		buckets[ci] = make([][]core.Bucket, len(cv.Codes))
		for i, code := range cv.Codes {
			reads = append(reads, func() (err error) {
				buckets[ci][i], err = p.cfg.Core.Series(ctx, core.RangeQuery{PatientID: id, Code: code, From: from, To: to}, rg.Bucket)
				return err
			})
		}
	}
	if err := all(reads...); err != nil {
		return out, err
	}
	for ci, cv := range chartVitals {
		cs := chartSeries{chartVital: cv, T: []int64{}, Y: make([][]*float64, len(cv.Codes))}
		idx := map[int64]int{}
		per := make([]map[int64]core.Bucket, len(cv.Codes))
		for i := range cv.Codes {
			bs := buckets[ci][i]
			per[i] = map[int64]core.Bucket{}
			for _, b := range bs {
				k := b.Start.Unix()
				per[i][k] = b
				if _, ok := idx[k]; !ok {
					idx[k] = 0
					cs.T = append(cs.T, k)
				}
			}
		}
		slices.Sort(cs.T)
		for i := range cv.Codes {
			cs.Y[i] = make([]*float64, len(cs.T))
			for j, k := range cs.T {
				if b, ok := per[i][k]; ok {
					v := b.Mean
					cs.Y[i][j] = &v
					if i == 0 {
						cs.N = append(cs.N, b.Count)
					}
				} else if i == 0 {
					cs.N = append(cs.N, 0)
				}
			}
		}
		out.Charts = append(out.Charts, cs)
	}
	out.NEWS2 = chartSeries{chartVital: chartVital{ID: "news2", Label: "NEWS2", Unit: "points", Names: []string{"NEWS2"}}, T: []int64{}, Y: [][]*float64{{}}}
	if p.cfg.Rules != nil {
		hist, err := p.cfg.Rules.NEWS2History(ctx, id, from, to, 1000)
		if err != nil {
			return out, err
		}
		for i := len(hist) - 1; i >= 0; i-- { // oldest first
			v := float64(hist[i].Score.Total)
			out.NEWS2.T = append(out.NEWS2.T, hist[i].EffectiveAt.Unix())
			out.NEWS2.Y[0] = append(out.NEWS2.Y[0], &v)
			out.NEWS2.X = append(out.NEWS2.X, string(hist[i].Score.Band))
		}
	}
	return out, nil
}

// breakGlass is POST /patients/:id/break-glass (form: reason, minutes): emergency access to
// a patient outside the viewer's wards and care teams (auth.BreakGlass: audited as
// access.break_glass.opened, listed for review). A missing reason or a duration not offered
// comes back on the 403 page with the coded error next to the field (auth audits the
// refusal); a granted request goes to the patient page.
func (p *Portal) breakGlass(c echo.Context) error {
	pr, creds, ok, err := p.checkForm(c)
	if !ok {
		return err
	}
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return p.errorPage(c, pr, creds, http.StatusBadRequest, "Bad request", "invalid_patient_id", "The patient id is not valid.")
	}
	ctx := c.Request().Context()
	if _, err := p.cfg.Core.Patient(ctx, id); errors.Is(err, core.ErrNotFound) {
		return p.errorPage(c, pr, creds, http.StatusNotFound, "Not found", "patient_not_found", "There is no such patient.")
	} else if err != nil {
		return fmt.Errorf("portal: break glass: %w", err)
	}
	r := c.Request()
	reason := strings.TrimSpace(r.PostFormValue("reason"))
	errs := map[string]*formError{}
	minutes, err := strconv.Atoi(r.PostFormValue("minutes"))
	if err != nil || !slices.Contains(breakGlassChoices, minutes) {
		errs["minutes"] = &formError{Code: "duration_out_of_bounds", Field: "minutes", Message: "Choose a duration from the list."}
		minutes = -1 // refused by auth as out of bounds (and audited)
	}
	if len([]rune(reason)) < 10 {
		errs["reason"] = &formError{Code: auth.ErrBreakGlassReason.Code, Field: "reason", Message: "State the clinical reason (at least 10 characters)."}
	}
	g, err := p.cfg.Auth.BreakGlass(ctx, pr, pr.Origin(requestID(c), c.RealIP()), id, reason, time.Duration(minutes)*time.Minute)
	switch {
	case err == nil:
		audited(c) // the grant, recorded by auth
	case errors.Is(err, auth.ErrForbidden):
		return p.errorPage(c, pr, creds, http.StatusForbidden, "Not allowed", auth.ErrForbidden.Code, "Your role may not open patients by break-glass.")
	case auth.CodeOf(err) != "":
		if len(errs) == 0 {
			errs["reason"] = &formError{Code: auth.CodeOf(err), Field: "reason", Message: "Break-glass was refused: state the reason and choose a duration."}
		}
		if minutes < 0 {
			minutes = 0
		}
		return p.forbidden(c, pr, creds, id, http.StatusUnprocessableEntity, reason, minutes, errs)
	default:
		return fmt.Errorf("portal: break glass: %w", err)
	}
	// As the API does: the stream and webhooks are told (without the reason).
	data := fmt.Appendf(nil, `{"grant_id":%q,"user_id":%q,"expires_at":%q}`, g.ID, g.UserID, g.ExpiresAt.UTC().Format(time.RFC3339Nano))
	ev := core.Event{Type: "access.break_glass.opened", PatientID: id, Data: data}
	p.cfg.Core.Hub().Publish(ev)
	if _, err := p.cfg.Core.EnqueueWebhooks(ctx, ev); err != nil {
		p.log.ErrorContext(ctx, "portal: break-glass webhook notification failed", "request_id", requestID(c), "error", err.Error())
	}
	return c.Redirect(http.StatusSeeOther, "/patients/"+id.String())
}
