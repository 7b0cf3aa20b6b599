package server

import (
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
)

// Alarm and rule routes: the alarm lifecycle actions of clinicians and the versioned rule set.
// Business rules live in core/alarms and core/rules; this file only translates HTTP.
func (s *Server) mountAlarms(api *echo.Group) {
	if s.cfg.Alarms != nil {
		api.GET("/alarms", s.listAlarmsVisible) // access_lists.go: narrowed to the caller's patients
		api.GET("/alarms/:id", s.getAlarm)
		api.POST("/alarms/:id/acknowledge", s.acknowledgeAlarm)
		api.POST("/alarms/:id/silence", s.silenceAlarm)
		api.POST("/alarms/:id/resolve", s.resolveAlarm)
	}
	if s.cfg.Rules != nil {
		api.GET("/rules", s.listRules)
		api.GET("/rules/:id/versions", s.listRuleVersions)
		api.POST("/rules/:id/versions", s.createRuleVersion)
		api.PUT("/patients/:id/spo2-scale", s.putSpO2Scale)
		api.PUT("/patients/:id/oxygen", s.putOxygen)
		api.PUT("/wards/:id/news2", s.putWardNEWS2)
		api.GET("/patients/:id/news2", s.getNEWS2)
	}
}

func alarmID(c echo.Context) (uuid.UUID, error) {
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return uuid.Nil, BadRequest("invalid_alarm_id", "alarm id must be a UUID")
	}
	return id, nil
}

func (s *Server) getAlarm(c echo.Context) error {
	id, err := alarmID(c)
	if err != nil {
		return err
	}
	a, err := s.cfg.Alarms.Get(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return s.answerAlarm(c, http.StatusOK, a)
}

func (s *Server) acknowledgeAlarm(c echo.Context) error {
	id, err := alarmID(c)
	if err != nil {
		return err
	}
	var body struct {
		Note string `json:"note"`
	}
	if err := decodeJSON(c, &body, true); err != nil { // the note is optional
		return err
	}
	a, err := s.cfg.Alarms.Acknowledge(c.Request().Context(), id, EventFor(c), body.Note)
	if err != nil {
		return s.alarmRefused(c, err)
	}
	Audited(c) // alarm.acknowledged (acknowledging twice is a 409, not a no-op)
	return s.answerAlarm(c, http.StatusOK, a)
}

func (s *Server) silenceAlarm(c echo.Context) error {
	id, err := alarmID(c)
	if err != nil {
		return err
	}
	var body struct {
		Reason   string `json:"reason"`
		Duration string `json:"duration"` // Go duration, e.g. "10m"
	}
	if err := bindJSON(c, &body); err != nil {
		return err
	}
	d, err := time.ParseDuration(body.Duration)
	if err != nil {
		return BadRequest("invalid_alarm_request", `duration must be a duration such as "10m"`)
	}
	a, err := s.cfg.Alarms.Silence(c.Request().Context(), id, EventFor(c), body.Reason, d)
	if err != nil {
		return s.alarmRefused(c, err)
	}
	Audited(c) // alarm.silenced
	return s.answerAlarm(c, http.StatusOK, a)
}

func (s *Server) resolveAlarm(c echo.Context) error {
	id, err := alarmID(c)
	if err != nil {
		return err
	}
	var body struct {
		Reason string `json:"reason"`
	}
	if err := bindJSON(c, &body); err != nil {
		return err
	}
	a, err := s.cfg.Alarms.Resolve(c.Request().Context(), id, EventFor(c), body.Reason)
	if err != nil {
		return s.alarmRefused(c, err)
	}
	Audited(c) // alarm.resolved
	return s.answerAlarm(c, http.StatusOK, a)
}

func (s *Server) listRules(c echo.Context) error {
	rs, err := s.cfg.Rules.Rules(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"rules": rs})
}

func (s *Server) listRuleVersions(c echo.Context) error {
	vs, err := s.cfg.Rules.Versions(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"versions": vs})
}

// createRuleVersion takes a rule definition whose "version" is the version it is based on
// (0 for a new rule) and answers 201 with the stored version.
func (s *Server) createRuleVersion(c echo.Context) error {
	var r rules.Rule
	if err := bindJSON(c, &r); err != nil {
		return err
	}
	if r.ID != "" && r.ID != c.Param("id") {
		return BadRequest("invalid_rule", "the body's id differs from the path's")
	}
	r.ID = c.Param("id")
	out, err := s.cfg.Rules.CreateVersion(c.Request().Context(), EventFor(c), r)
	if err != nil {
		return err
	}
	Audited(c) // rule.version_created
	return c.JSON(http.StatusCreated, out)
}

func (s *Server) putSpO2Scale(c echo.Context) error {
	pid, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return BadRequest("invalid_patient_id", "patient id must be a UUID")
	}
	var body struct {
		Scale  int    `json:"scale"`
		Reason string `json:"reason"`
	}
	if err := bindJSON(c, &body); err != nil {
		return err
	}
	if err := s.cfg.Rules.SetSpO2Scale(c.Request().Context(), EventFor(c), pid, body.Scale, body.Reason); err != nil {
		return err
	}
	Audited(c) // rules.spo2_scale_set
	return c.JSON(http.StatusOK, map[string]any{"patient_id": pid, "spo2_scale": body.Scale})
}

// putOxygen documents whether a patient is on supplemental oxygen ({"on_oxygen": true,
// false or null, "reason": …}), which NEWS2 scores when no oxygen observation is current.
func (s *Server) putOxygen(c echo.Context) error {
	pid, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return BadRequest("invalid_patient_id", "patient id must be a UUID")
	}
	var body struct {
		OnOxygen *bool  `json:"on_oxygen"`
		Reason   string `json:"reason"`
	}
	if err := bindJSON(c, &body); err != nil {
		return err
	}
	if err := s.cfg.Rules.SetOxygen(c.Request().Context(), EventFor(c), pid, body.OnOxygen, body.Reason); err != nil {
		return err
	}
	Audited(c) // rules.oxygen_set
	return c.JSON(http.StatusOK, map[string]any{"patient_id": pid, "on_oxygen": body.OnOxygen})
}

// putWardNEWS2 records the NEWS2 parameters a ward charts by hand ({"charted": ["acvpu"],
// "charted_max_age": "4h", "reason": …}).
func (s *Server) putWardNEWS2(c echo.Context) error {
	wid, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return BadRequest("invalid_ward_id", "ward id must be a UUID")
	}
	var body struct {
		Charted       []string `json:"charted"`
		ChartedMaxAge string   `json:"charted_max_age"`
		Reason        string   `json:"reason"`
	}
	if err := bindJSON(c, &body); err != nil {
		return err
	}
	maxAge, err := time.ParseDuration(body.ChartedMaxAge)
	if err != nil {
		return BadRequest("invalid_duration", "charted_max_age must be a duration such as 4h")
	}
	if err := s.cfg.Rules.SetWardNEWS2(c.Request().Context(), EventFor(c), wid, body.Charted, maxAge, body.Reason); err != nil {
		return err
	}
	Audited(c) // rules.ward_news2_set
	return c.JSON(http.StatusOK, map[string]any{"ward_id": wid, "charted": body.Charted, "charted_max_age": maxAge.String()})
}

// getNEWS2 lists a patient's NEWS2 results with their components, newest first
// (?from=&to= RFC 3339, &limit=1..1000).
func (s *Server) getNEWS2(c echo.Context) error {
	pid, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return BadRequest("invalid_patient_id", "patient id must be a UUID")
	}
	var from, to time.Time
	for name, dst := range map[string]*time.Time{"from": &from, "to": &to} {
		if v := c.QueryParam(name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return BadRequest("invalid_time", name+" must be an RFC 3339 time")
			}
			*dst = t
		}
	}
	limit := 0
	if v := c.QueryParam("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return BadRequest("invalid_limit", "limit must be 1..1000")
		}
		limit = n
	}
	recs, err := s.cfg.Rules.NEWS2History(c.Request().Context(), pid, from, to, limit)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"news2": recs})
}

// alarmRefused marks a refusal of the alarm lifecycle audited when its rejection event is
// committed (alarms.RefusalRecorded): that event is the request's one record. A refusal whose
// record failed stays unmarked, so the error handler records http.request.rejected instead.
func (s *Server) alarmRefused(c echo.Context, err error) error {
	if alarms.RefusalRecorded(err) {
		Audited(c) // alarm.acknowledged / alarm.silenced / alarm.resolved, outcome rejected
	}
	return err
}
