package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/core"
)

// Clinical core routes: patients, sites and wards, care teams, observations (raw and
// downsampled), the notification stream (SSE) and webhooks. Business rules live in core; this
// file only translates HTTP.
func (s *Server) mountCore(api *echo.Group) {
	if s.cfg.Core == nil {
		return
	}
	api.GET("/codes", s.coreCodes)
	api.GET("/sites", s.coreListSites)
	api.POST("/sites", s.coreCreateSite)
	api.GET("/sites/:id/wards", s.coreListWards)
	api.POST("/sites/:id/wards", s.coreCreateWard)
	api.GET("/patients", s.listPatients) // access_lists.go: narrowed to the caller's patients
	api.POST("/patients", s.coreCreatePatient)
	api.GET("/patients/:id", s.coreGetPatient)
	api.POST("/patients/:id/discharge", s.coreDischargePatient)
	api.POST("/patients/:id/move", s.coreMovePatient)
	api.POST("/patients/:id/chart", s.coreChart)
	api.GET("/patients/:id/care-team", s.coreCareTeam)
	api.POST("/patients/:id/care-team", s.coreAddCareTeam)
	api.DELETE("/patients/:id/care-team/:clinician", s.coreRemoveCareTeam)
	api.GET("/patients/:id/observations", s.coreObservations)
	api.GET("/patients/:id/latest", s.coreLatest)
	api.GET("/stream", s.streamVisible) // access_lists.go, then coreStream
	api.GET("/webhooks", s.coreListWebhooks)
	api.POST("/webhooks", s.coreCreateWebhook)
	api.DELETE("/webhooks/:id", s.coreDeleteWebhook)
	api.GET("/webhook-deliveries", s.coreListDeliveries)
	api.POST("/webhook-deliveries/:id/redeliver", s.coreRedeliver)
}

func coreID(c echo.Context, name, code string) (uuid.UUID, error) {
	id, err := uuid.Parse(c.Param(name))
	if err != nil {
		return uuid.Nil, BadRequest(code, name+" must be a UUID")
	}
	return id, nil
}

func (s *Server) coreCodes(c echo.Context) error {
	type code struct {
		Code      string     `json:"code"`
		Display   string     `json:"display"`
		Unit      string     `json:"unit"`
		Units     []string   `json:"accepted_units"`
		Possible  [2]float64 `json:"possible"`
		Plausible [2]float64 `json:"plausible"`
	}
	var out []code
	for _, ci := range core.Codes() {
		out = append(out, code{ci.Code, ci.Display, ci.Unit, ci.Units(),
			[2]float64{ci.Possible.Min, ci.Possible.Max}, [2]float64{ci.Plausible.Min, ci.Plausible.Max}})
	}
	return c.JSON(http.StatusOK, map[string]any{"codes": out})
}

func (s *Server) coreListSites(c echo.Context) error {
	list, err := s.cfg.Core.Sites(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"sites": list})
}

func (s *Server) coreCreateSite(c echo.Context) error {
	var req struct {
		Name string `json:"name"`
	}
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	site, err := s.cfg.Core.CreateSite(c.Request().Context(), EventFor(c), req.Name)
	if err != nil {
		return err
	}
	Audited(c) // site.created
	return c.JSON(http.StatusCreated, site)
}

func (s *Server) coreListWards(c echo.Context) error {
	id, err := coreID(c, "id", "invalid_site_id")
	if err != nil {
		return err
	}
	list, err := s.cfg.Core.Wards(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"wards": list})
}

func (s *Server) coreCreateWard(c echo.Context) error {
	id, err := coreID(c, "id", "invalid_site_id")
	if err != nil {
		return err
	}
	var req struct {
		Name string `json:"name"`
	}
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	w, err := s.cfg.Core.CreateWard(c.Request().Context(), EventFor(c), id, req.Name)
	if err != nil {
		return err
	}
	Audited(c) // ward.created
	return c.JSON(http.StatusCreated, w)
}

func (s *Server) coreCreatePatient(c echo.Context) error {
	var req struct {
		core.PatientPHI
		WardID *uuid.UUID `json:"ward_id"`
	}
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	p, err := s.cfg.Core.CreatePatient(c.Request().Context(), EventFor(c), req.PatientPHI, req.WardID)
	if err != nil {
		return err
	}
	Audited(c) // patient.created
	return c.JSON(http.StatusCreated, p)
}

func (s *Server) coreGetPatient(c echo.Context) error {
	id, err := coreID(c, "id", "invalid_patient_id")
	if err != nil {
		return err
	}
	p, err := s.cfg.Core.Patient(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, p)
}

func (s *Server) coreDischargePatient(c echo.Context) error {
	id, err := coreID(c, "id", "invalid_patient_id")
	if err != nil {
		return err
	}
	if err := s.cfg.Core.DischargePatient(c.Request().Context(), EventFor(c), id); err != nil {
		return err
	}
	Audited(c) // patient.discharged
	return c.NoContent(http.StatusNoContent)
}

// coreChart stores observations a person enters by hand ({"samples": [{"code", "value",
// "unit", "time"}]}), e.g. the level of consciousness most monitors never send, through
// core's upload path (audited upload.accepted with the person as actor; rejections with
// core's codes).
func (s *Server) coreChart(c echo.Context) error {
	id, err := coreID(c, "id", "invalid_patient_id")
	if err != nil {
		return err
	}
	var req struct {
		Samples []struct {
			Code  string    `json:"code"`
			Value float64   `json:"value"`
			Unit  string    `json:"unit"`
			Time  time.Time `json:"time"`
		} `json:"samples"`
	}
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	if len(req.Samples) == 0 {
		return BadRequest("invalid_request", "samples must not be empty")
	}
	samples := make([]core.Sample, len(req.Samples))
	for i, smp := range req.Samples {
		samples[i] = core.Sample{Code: smp.Code, Value: smp.Value, Unit: smp.Unit, Time: smp.Time}
	}
	res, err := s.cfg.Core.Chart(c.Request().Context(), EventFor(c), id, samples)
	if err != nil {
		return err
	}
	Audited(c) // upload.accepted
	return c.JSON(http.StatusCreated, map[string]any{"stored": res.Stored, "flagged": res.Flagged, "duplicates": res.Duplicates})
}

func (s *Server) coreMovePatient(c echo.Context) error {
	id, err := coreID(c, "id", "invalid_patient_id")
	if err != nil {
		return err
	}
	var req struct {
		WardID uuid.UUID `json:"ward_id"`
	}
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	if err := s.cfg.Core.MovePatient(c.Request().Context(), EventFor(c), id, req.WardID); err != nil {
		return err
	}
	Audited(c) // patient.moved
	return c.NoContent(http.StatusNoContent)
}

func (s *Server) coreCareTeam(c echo.Context) error {
	id, err := coreID(c, "id", "invalid_patient_id")
	if err != nil {
		return err
	}
	list, err := s.cfg.Core.CareTeam(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"care_team": list})
}

func (s *Server) coreAddCareTeam(c echo.Context) error {
	id, err := coreID(c, "id", "invalid_patient_id")
	if err != nil {
		return err
	}
	var req struct {
		ClinicianID string `json:"clinician_id"`
		Role        string `json:"role"`
	}
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	m, err := s.cfg.Core.AddCareTeamMember(c.Request().Context(), EventFor(c), id, req.ClinicianID, req.Role)
	if err != nil {
		return err
	}
	Audited(c) // care_team.member_added
	return c.JSON(http.StatusOK, m)
}

func (s *Server) coreRemoveCareTeam(c echo.Context) error {
	id, err := coreID(c, "id", "invalid_patient_id")
	if err != nil {
		return err
	}
	if err := s.cfg.Core.RemoveCareTeamMember(c.Request().Context(), EventFor(c), id, c.Param("clinician")); err != nil {
		return err
	}
	Audited(c) // care_team.member_removed
	return c.NoContent(http.StatusNoContent)
}

// coreObservations answers GET /patients/:id/observations?code=&from=&to=[&bucket=][&artifacts=true]:
// raw observations, or with bucket (a Go duration, e.g. "1m") min/max/mean/count per bucket.
func (s *Server) coreObservations(c echo.Context) error {
	id, err := coreID(c, "id", "invalid_patient_id")
	if err != nil {
		return err
	}
	q := c.QueryParams()
	rq := core.RangeQuery{PatientID: id, Code: q.Get("code"), Artifacts: q.Get("artifacts") == "true"}
	if rq.Code == "" {
		return BadRequest("invalid_code", "code (a LOINC code) is required")
	}
	for _, p := range []struct {
		name string
		dst  *time.Time
	}{{"from", &rq.From}, {"to", &rq.To}} {
		t, err := time.Parse(time.RFC3339Nano, q.Get(p.name))
		if err != nil {
			return BadRequest("invalid_time_range", p.name+" must be an RFC 3339 time")
		}
		*p.dst = t
	}
	if err := queryLimit(c, core.MaxRawPoints, "invalid_limit", &rq.Limit); err != nil {
		return err
	}
	ctx := c.Request().Context()
	if v := q.Get("bucket"); v != "" {
		b, err := time.ParseDuration(v)
		if err != nil {
			return BadRequest("invalid_bucket", "bucket must be a duration such as 1m or 15m")
		}
		series, err := s.cfg.Core.Series(ctx, rq, b)
		if err != nil {
			return err
		}
		if series == nil {
			series = []core.Bucket{}
		}
		return c.JSON(http.StatusOK, map[string]any{"code": rq.Code, "bucket": b.String(), "buckets": series})
	}
	obs, truncated, err := s.cfg.Core.ObservationsPage(ctx, rq)
	if err != nil {
		return err
	}
	if obs == nil {
		obs = []core.Observation{}
	}
	// truncated: the range holds more than limit observations (the oldest are returned).
	return c.JSON(http.StatusOK, map[string]any{"code": rq.Code, "observations": obs, "truncated": truncated})
}

// coreLatest answers GET /patients/:id/latest[?window=24h]: the newest observation of each
// code within the window, not after now, artifacts flagged.
func (s *Server) coreLatest(c echo.Context) error {
	id, err := coreID(c, "id", "invalid_patient_id")
	if err != nil {
		return err
	}
	var window time.Duration
	if v := c.QueryParam("window"); v != "" {
		if window, err = time.ParseDuration(v); err != nil || window <= 0 {
			return BadRequest("invalid_window", "window must be a positive duration such as 6h")
		}
	}
	obs, err := s.cfg.Core.Latest(c.Request().Context(), id, window)
	if err != nil {
		return err
	}
	if obs == nil {
		obs = []core.Observation{}
	}
	return c.JSON(http.StatusOK, map[string]any{"observations": obs})
}

// coreStream is the Server-Sent Events stream of notifications (GET /stream), optionally
// filtered by ?patient_id= (repeatable) and ?type= (repeatable). Each event is written as
// "id: <id>\nevent: <type>\ndata: <json>\n\n"; a reconnecting client sends Last-Event-ID and
// resumes without a gap, or gets an "event: reset" telling it to reload its state. The stream
// ends when the request's time limit is reached (the client reconnects) or the client leaves.
// Streams are capped in number (streams.go); past a cap the answer is 503 too_many_streams.
func (s *Server) coreStream(c echo.Context) error {
	var f core.Filter
	q := c.QueryParams()
	for _, v := range q["patient_id"] {
		id, err := uuid.Parse(v)
		if err != nil {
			return BadRequest("invalid_patient_id", "patient_id must be a UUID")
		}
		if f.Patients == nil {
			f.Patients = map[uuid.UUID]bool{}
		}
		f.Patients[id] = true
	}
	for _, v := range q["type"] {
		if f.Types == nil {
			f.Types = map[string]bool{}
		}
		f.Types[v] = true
	}
	lastID := c.Request().Header.Get("Last-Event-ID")
	var last uint64
	if lastID != "" {
		var err error
		if last, err = strconv.ParseUint(strings.TrimSpace(lastID), 10, 64); err != nil {
			return BadRequest("invalid_last_event_id", "Last-Event-ID must be an event id")
		}
	}
	release, err := s.streams.acquire(streamCaller(c))
	if err != nil {
		return err
	}
	hub := s.cfg.Core.Hub()
	var sub *core.Subscription
	reset := false
	if lastID != "" {
		var complete bool
		sub, complete = hub.SubscribeAfter(f, last)
		reset = !complete
	} else {
		sub = hub.Subscribe(f)
	}
	defer sub.Close()
	defer release() // before the subscription closes: once it is gone, the place is free
	w := c.Response()
	w.Header().Set(echo.HeaderContentType, "text/event-stream")
	w.Header().Set(echo.HeaderCacheControl, "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	// A write deadline per write, not one for the whole answer: a stream lives long, but a
	// client that stops reading must not hold its goroutine.
	wd := http.NewResponseController(w)
	_ = wd.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	w.WriteHeader(http.StatusOK)
	if _, err := fmt.Fprint(w, "retry: 2000\n\n"); err != nil {
		return nil
	}
	if reset {
		if _, err := fmt.Fprint(w, "event: reset\ndata: {}\n\n"); err != nil {
			return nil
		}
	}
	w.Flush()
	ctx := c.Request().Context()
	who := s.streamIdentities(c) // alarm events name their patient for callers allowed (alarms_view.go)
	ping := time.NewTicker(s.streamPing)
	defer ping.Stop()
	// The events pending for the stream are written with one write and one flush (REQ-POR-061):
	// whatever is queued when one arrives, and — for tile updates (observations) coming
	// faster than one per StreamCoalesce — those that arrive until StreamCoalesce after the
	// previous flush. Any other event (an alarm's) is written at once, with what is pending
	// before it. Events keep their order; none is dropped here.
	hold := s.cfg.StreamCoalesce
	var (
		pending   []byte // the SSE text of the events not yet written
		lastFlush = time.Now()
		holdT     *time.Timer
		holdC     <-chan time.Time
	)
	defer func() {
		if holdT != nil {
			holdT.Stop()
		}
	}()
	flush := func() error {
		if holdC != nil {
			holdT.Stop()
			holdC = nil
		}
		_ = wd.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
		if len(pending) > 0 {
			if _, err := w.Write(pending); err != nil {
				return err
			}
			if cap(pending) > maxStreamPending { // a burst's buffer is not kept for the stream's life
				pending = nil
			}
			pending = pending[:0]
		}
		w.Flush()
		lastFlush = time.Now()
		return nil
	}
	// take appends the events queued on sub.C (after first, when there is one); urgent when
	// one is not a tile update.
	take := func(first *core.Event) (urgent bool, err error) {
		ev := first
		for {
			if ev != nil {
				if pending, err = appendSSE(pending, *ev, who); err != nil {
					return false, err
				}
				urgent = urgent || ev.Type != core.TypeObservations
			}
			if len(sub.C) == 0 {
				return urgent, nil
			}
			next, ok := <-sub.C
			if !ok {
				return urgent, nil // closed: the next receive reports it
			}
			ev = &next
		}
	}
	for {
		// While tile updates are held the stream does not wake for each event: the hold's end
		// writes what came meanwhile, and sub.Urgent wakes it for an alarm's event.
		recv, urgent := sub.C, (<-chan struct{})(nil)
		if holdC != nil {
			recv, urgent = nil, sub.Urgent
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.drained(): // shutting down: the client resumes on another replica
			_, _ = take(nil)
			_ = flush()
			return nil
		case <-ping.C:
			if _, err := take(nil); err != nil {
				return nil
			}
			pending = append(pending, ": ping\n\n"...)
			if flush() != nil {
				return nil
			}
		case <-holdC:
			holdC = nil
			if _, err := take(nil); err != nil || flush() != nil {
				return nil
			}
		case <-urgent: // an alarm's event was queued while holding: written at once
			if _, err := take(nil); err != nil || flush() != nil {
				return nil
			}
		case ev, ok := <-recv:
			if !ok {
				if sub.Dropped() {
					pending = append(pending, "event: reset\ndata: {\"reason\":\"too_slow\"}\n\n"...)
				}
				_ = flush()
				return nil
			}
			isUrgent, err := take(&ev)
			if err != nil {
				return nil
			}
			wait := hold - time.Since(lastFlush)
			if !isUrgent && wait > 0 && len(pending) < maxStreamPending {
				// Hold until StreamCoalesce after the last flush. A signal of an alarm's event
				// already written is cleared first; one queued since is then in sub.C.
				select {
				case <-sub.Urgent:
				default:
				}
				if isUrgent, err = take(nil); err != nil {
					return nil
				}
				if !isUrgent {
					if holdT == nil {
						holdT = time.NewTimer(wait)
					} else {
						holdT.Reset(wait)
					}
					holdC = holdT.C
					continue
				}
			}
			if flush() != nil {
				return nil
			}
		}
	}
}

// maxStreamPending is the most bytes of events a stream holds before writing them, however
// soon after its last flush.
const maxStreamPending = 64 << 10

// appendSSE appends ev as server-sent event text to b.
func appendSSE(b []byte, ev core.Event, who func(core.Event) *patientIdentity) ([]byte, error) {
	var (
		data []byte
		err  error
	)
	if p := who(ev); p != nil {
		data, err = json.Marshal(struct {
			core.Event
			Patient *patientIdentity `json:"patient"`
		}{ev, p})
	} else {
		data, err = ev.JSON() // encoded once for every stream that receives the event
	}
	if err != nil {
		return b, err
	}
	b = append(b, "id: "...)
	b = strconv.AppendUint(b, ev.ID, 10)
	b = append(b, "\nevent: "...)
	b = append(b, ev.Type...)
	b = append(b, "\ndata: "...)
	b = append(b, data...)
	return append(b, "\n\n"...), nil
}

func (s *Server) coreListWebhooks(c echo.Context) error {
	list, err := s.cfg.Core.Webhooks(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"webhooks": list})
}

func (s *Server) coreCreateWebhook(c echo.Context) error {
	var req struct {
		URL        string   `json:"url"`
		EventTypes []string `json:"event_types"`
	}
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	w, secret, err := s.cfg.Core.CreateWebhook(c.Request().Context(), EventFor(c), req.URL, req.EventTypes)
	if err != nil {
		return err
	}
	// webhook.created was recorded with the webhook; the secret is shown only in this answer.
	Audited(c)
	return c.JSON(http.StatusCreated, map[string]any{"webhook": w, "secret": secret})
}

func (s *Server) coreDeleteWebhook(c echo.Context) error {
	id, err := coreID(c, "id", "invalid_webhook_id")
	if err != nil {
		return err
	}
	if err := s.cfg.Core.DeleteWebhook(c.Request().Context(), EventFor(c), id); err != nil {
		return err
	}
	Audited(c) // webhook.deleted
	return c.NoContent(http.StatusNoContent)
}

func (s *Server) coreListDeliveries(c echo.Context) error {
	q := c.QueryParams()
	f := core.DeliveryFilter{Status: q.Get("status")}
	if err := queryUUID(c, "webhook_id", &f.WebhookID); err != nil {
		return err
	}
	if err := queryLimit(c, 1000, "invalid_limit", &f.Limit); err != nil {
		return err
	}
	list, err := s.cfg.Core.Deliveries(c.Request().Context(), f)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"deliveries": list})
}

func (s *Server) coreRedeliver(c echo.Context) error {
	id, err := coreID(c, "id", "invalid_delivery_id")
	if err != nil {
		return err
	}
	if err := s.cfg.Core.Redeliver(c.Request().Context(), EventFor(c), id); err != nil {
		return err
	}
	Audited(c) // webhook.redelivery_requested
	return c.NoContent(http.StatusAccepted)
}
