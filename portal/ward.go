package portal

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/devices"
)

// vitalSpec is one vital sign of a tile, in display order.
type vitalSpec struct {
	Label string // what a screen reader reads
	Short string // what the tile shows
	Codes []string
	Unit  string // UCUM, as core stores it
	Shown string // the unit as shown
	Prec  int
}

// tileVitals are the vitals of a tile (issue #15): HR, SpO2, RR, BP, temperature.
var tileVitals = []vitalSpec{
	{"Heart rate", "HR", []string{core.LOINCHeartRate}, "/min", "/min", 0},
	{"Oxygen saturation", "SpO₂", []string{core.LOINCSpO2, core.LOINCSpO2Arterial}, "%", "%", 0},
	{"Respiratory rate", "RR", []string{core.LOINCRespiratoryRate}, "/min", "/min", 0},
	{"Blood pressure", "BP", []string{core.LOINCSystolicBP, core.LOINCDiastolicBP}, "mm[Hg]", "mmHg", 0},
	{"Temperature", "Temp", []string{core.LOINCBodyTemperature}, "Cel", "°C", 1},
}

// vitalView is one vital as a tile shows it.
type vitalView struct {
	Label, Short, Code string
	Value              string // "—" when there is none in the window
	Unit               string
	Age                string // "12 s ago"
	At                 time.Time
	Missing            bool
}

// alarmView is one active alarm on a tile.
type alarmView struct {
	ID       uuid.UUID
	Priority priority
	Message  string
	Age      string
	State    string
}

// priority is an IEC 60601-1-8 alarm priority: its colour class, its symbol and its word.
type priority struct {
	Class  string // "high", "medium", "low"
	Symbol string // "!!!", "!!", "!" (IEC 60601-1-8 priority indicators)
	Word   string // "High", "Medium", "Low"
	Rank   int
}

// priorityOf maps an alarm severity to the three IEC 60601-1-8 priorities: critical and high
// are high priority (red), medium is medium (yellow), low is low (cyan).
func priorityOf(s alarms.Severity) priority {
	switch {
	case s >= alarms.SeverityHigh:
		return priority{"high", "!!!", "High", 3}
	case s == alarms.SeverityMedium:
		return priority{"medium", "!!", "Medium", 2}
	}
	return priority{"low", "!", "Low", 1}
}

// deviceView is the status of the patient's device.
type deviceView struct {
	Status string // "online", "no-data", "suspended", "none"
	Label  string
	Serial string
}

// news2View is the latest NEWS2 result.
type news2View struct {
	Score int
	Band  string // low, low_medium, medium, high
	Label string
	Age   string
}

// tile is one patient on the ward overview.
type tile struct {
	PatientID uuid.UUID
	Name, MRN string
	Vitals    []vitalView
	NEWS2     *news2View
	Alarms    []alarmView
	Counts    map[string]int // active alarms by priority class
	Device    deviceView

	patient core.Patient // as listed (ward, for the authorization question)
	hidden  bool         // the viewer may not read its observations: not shown
}

// wardGroup is a ward's tiles.
type wardGroup struct {
	ID    uuid.UUID
	Name  string
	Tiles []tile
}

type wardData struct {
	base
	Wards     []wardGroup
	StreamURL string
	Patients  []uuid.UUID
	Empty     bool
}

// age says how long ago t was, for a tile ("45 s ago", "3 min ago", "2 h ago").
func age(now, t time.Time) string {
	d := now.Sub(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return strconv.Itoa(int(d.Seconds())) + " s ago"
	case d < time.Hour:
		return strconv.Itoa(int(d.Minutes())) + " min ago"
	case d < 48*time.Hour:
		return strconv.Itoa(int(d.Hours())) + " h ago"
	}
	return strconv.Itoa(int(d.Hours()/24)) + " d ago"
}

func format(v float64, prec int) string {
	return strconv.FormatFloat(math.Round(v*math.Pow10(prec))/math.Pow10(prec), 'f', prec, 64)
}

// visiblePatients are the patients of the viewer's wards and care teams, by ward (the ward
// overview; break-glass patients are opened one by one, not listed here). Every part comes
// from the enforcer's visibility filter for patient read.
func (p *Portal) visiblePatients(ctx context.Context, pr *auth.Principal) ([]wardGroup, error) {
	f, err := p.cfg.Auth.Enforcer().Visibility(pr)
	if err != nil {
		return nil, err
	}
	var pts []core.Patient
	switch {
	case f.All:
		if pts, err = p.cfg.Core.Patients(ctx, core.PatientFilter{Limit: 1000}); err != nil {
			return nil, err
		}
	default:
		for _, w := range f.Wards {
			ps, err := p.cfg.Core.Patients(ctx, core.PatientFilter{WardID: w, Limit: 1000})
			if err != nil {
				return nil, err
			}
			pts = append(pts, ps...)
		}
		if f.CareTeamMember != "" {
			ps, err := p.cfg.Core.Patients(ctx, core.PatientFilter{Clinician: f.CareTeamMember, Limit: 1000})
			if err != nil {
				return nil, err
			}
			for _, x := range ps {
				if !slices.ContainsFunc(pts, func(y core.Patient) bool { return y.ID == x.ID }) {
					pts = append(pts, x)
				}
			}
		}
	}
	names, err := p.wardNames(ctx)
	if err != nil {
		return nil, err
	}
	byWard := map[uuid.UUID]*wardGroup{}
	var out []*wardGroup
	for _, pt := range pts {
		var w uuid.UUID
		if pt.WardID != nil {
			w = *pt.WardID
		}
		g := byWard[w]
		if g == nil {
			name := names[w]
			if name == "" {
				name = "No ward"
			}
			g = &wardGroup{ID: w, Name: name}
			byWard[w] = g
			out = append(out, g)
		}
		g.Tiles = append(g.Tiles, tile{PatientID: pt.ID, Name: pt.PHI.GivenName + " " + pt.PHI.FamilyName, MRN: pt.PHI.MRN, patient: pt})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	groups := make([]wardGroup, len(out))
	for i, g := range out {
		sort.Slice(g.Tiles, func(a, b int) bool { return g.Tiles[a].Name < g.Tiles[b].Name })
		groups[i] = *g
	}
	return groups, nil
}

func (p *Portal) wardNames(ctx context.Context) (map[uuid.UUID]string, error) {
	ws, err := p.cfg.Core.Wards(ctx, uuid.Nil) // every ward of every site, one query
	if err != nil {
		return nil, err
	}
	out := map[uuid.UUID]string{}
	for _, w := range ws {
		out[w.ID] = w.Name
	}
	return out, nil
}

// authorizeTile asks the enforcer whether pr may read the patient's observations (the
// patient's ward and care team are the target).
func (p *Portal) authorizeTile(ctx context.Context, pr *auth.Principal, pt core.Patient) (auth.Decision, error) {
	team, err := p.cfg.Core.CareTeam(ctx, pt.ID)
	if err != nil {
		return auth.Decision{}, err
	}
	return p.authorizeWithTeam(pr, auth.ObjObservation, pt, team)
}

// authorizeWithTeam asks the enforcer whether pr may read obj of the patient whose care team
// is known (the overview reads every tile's team in one query).
func (p *Portal) authorizeWithTeam(pr *auth.Principal, obj string, pt core.Patient, team []core.CareTeamMember) (auth.Decision, error) {
	t := auth.Target{Object: obj, Patient: pt.ID}
	if pt.WardID != nil {
		t.Ward = *pt.WardID
	}
	for _, m := range team {
		t.CareTeam = append(t.CareTeam, m.ClinicianID)
	}
	return p.cfg.Auth.Enforcer().Allow(pr, "read", t)
}

// tileSources are the query answers tiles are filled from, read for all the tiles of a page
// at once (core/tiles.go and the batched reads of alarms and rules): a handful of queries
// per page rather than several per tile.
type tileSources struct {
	latest map[uuid.UUID][]core.Observation
	news2  map[uuid.UUID]rules.NEWS2Record
	alarms map[uuid.UUID][]alarms.Alarm
	devs   map[uuid.UUID]devices.Device
}

// tileCodes are the LOINC codes the tiles show.
var tileCodes = func() []string {
	var out []string
	for _, v := range tileVitals {
		out = append(out, v.Codes...)
	}
	return out
}()

// loadTiles reads what the tiles of the patients show: latest vitals, latest NEWS2, open
// alarms (one query each) and the device registry.
func (p *Portal) loadTiles(ctx context.Context, ids []uuid.UUID) (tileSources, error) {
	src := tileSources{news2: map[uuid.UUID]rules.NEWS2Record{}, alarms: map[uuid.UUID][]alarms.Alarm{}, devs: map[uuid.UUID]devices.Device{}}
	now := p.cfg.Now()
	err := all( // independent queries: concurrently
		func() (err error) {
			src.latest, err = p.cfg.Core.LatestOf(ctx, ids, tileCodes, p.cfg.VitalsWindow)
			return err
		},
		func() (err error) {
			if p.cfg.Rules != nil {
				src.news2, err = p.cfg.Rules.LatestNEWS2Of(ctx, ids, now.Add(-p.cfg.VitalsWindow))
			}
			return err
		},
		func() (err error) {
			if p.cfg.Alarms != nil {
				src.alarms, err = p.cfg.Alarms.OpenAlarmsOf(ctx, ids)
			}
			return err
		},
		func() (err error) {
			if p.cfg.Devices != nil {
				src.devs, err = p.cfg.Devices.AssignedTo(ctx, ids)
			}
			return err
		})
	return src, err
}

// fill completes a tile from the page's query answers: latest vitals, NEWS2, active alarms,
// device.
func (p *Portal) fill(t *tile, src tileSources) {
	now := p.cfg.Now()
	latest := src.latest[t.PatientID]
	byCode := map[string]core.Observation{}
	var newest time.Time
	for _, o := range latest {
		byCode[o.Code] = o
		if o.EffectiveAt.After(newest) {
			newest = o.EffectiveAt
		}
	}
	t.Vitals = t.Vitals[:0]
	for _, v := range tileVitals {
		vv := vitalView{Label: v.Label, Short: v.Short, Code: v.Codes[0], Unit: v.Shown, Value: "—", Missing: true}
		if v.Short == "BP" {
			sys, ok1 := byCode[core.LOINCSystolicBP]
			dia, ok2 := byCode[core.LOINCDiastolicBP]
			switch { // systolic/diastolic; a missing half shows as —
			case ok1 && ok2:
				vv.Value, vv.Missing, vv.At = format(sys.Value, 0)+"/"+format(dia.Value, 0), false, sys.EffectiveAt
			case ok1:
				vv.Value, vv.Missing, vv.At = format(sys.Value, 0)+"/—", false, sys.EffectiveAt
			case ok2:
				vv.Value, vv.Missing, vv.At = "—/"+format(dia.Value, 0), false, dia.EffectiveAt
			}
		} else {
			for _, code := range v.Codes {
				if o, ok := byCode[code]; ok && (vv.Missing || o.EffectiveAt.After(vv.At)) {
					vv.Value, vv.Missing, vv.At, vv.Code = format(o.Value, v.Prec), false, o.EffectiveAt, code
				}
			}
		}
		if !vv.Missing {
			vv.Age = age(now, vv.At)
		}
		t.Vitals = append(t.Vitals, vv)
	}
	if h, ok := src.news2[t.PatientID]; ok {
		t.NEWS2 = &news2View{Score: h.Score.Total, Band: string(h.Score.Band), Label: news2Label(string(h.Score.Band)), Age: age(now, h.EffectiveAt)}
	}
	t.Counts = map[string]int{"high": 0, "medium": 0, "low": 0}
	t.Alarms = nil
	for _, a := range src.alarms[t.PatientID] {
		pri := priorityOf(a.Severity)
		t.Counts[pri.Class]++
		t.Alarms = append(t.Alarms, alarmView{ID: a.ID, Priority: pri, Message: a.Message, Age: age(now, a.OpenedAt), State: string(a.State)})
	}
	sort.SliceStable(t.Alarms, func(i, j int) bool { return t.Alarms[i].Priority.Rank > t.Alarms[j].Priority.Rank })
	t.Device = deviceView{Status: "none", Label: "No device"}
	if d, ok := src.devs[t.PatientID]; ok {
		t.Device.Serial = d.Serial
		switch {
		case d.Status == "suspended":
			t.Device.Status, t.Device.Label = "suspended", "Suspended"
		case !newest.IsZero() && now.Sub(newest) <= p.cfg.NoDataAfter:
			t.Device.Status, t.Device.Label = "online", "Online"
		default:
			t.Device.Status, t.Device.Label = "no-data", "No data"
		}
	}
}

func news2Label(band string) string {
	switch band {
	case "high":
		return "High risk"
	case "medium":
		return "Medium risk"
	case "low_medium":
		return "Low–medium risk"
	}
	return "Low risk"
}

// wardOverview is the central station: one tile per patient of the viewer's wards.
func (p *Portal) wardOverview(c echo.Context) error {
	pr, creds, err := p.viewer(c)
	if err != nil {
		return err
	}
	if pr == nil {
		return toSignIn(c)
	}
	ctx := c.Request().Context()
	groups, err := p.visiblePatients(ctx, pr)
	if err != nil {
		return fmt.Errorf("portal: ward overview: %w", err)
	}
	data := wardData{base: p.base("Ward overview", pr, creds.SessionToken), StreamURL: p.cfg.StreamURL}
	// Every tile is authorized (the care teams of all, one query; the enforcer decides in
	// memory) and the shown ones are filled from one batch of queries (loadTiles).
	var all []uuid.UUID
	for _, g := range groups {
		for _, t := range g.Tiles {
			all = append(all, t.PatientID)
		}
	}
	teams, err := p.cfg.Core.CareTeams(ctx, all)
	if err != nil {
		return fmt.Errorf("portal: ward overview: %w", err)
	}
	var reads []phiRead
	var shown []uuid.UUID
	for gi := range groups {
		for ti := range groups[gi].Tiles {
			t := &groups[gi].Tiles[ti]
			d, err := p.authorizeWithTeam(pr, auth.ObjObservation, t.patient, teams[t.PatientID])
			if errors.Is(err, auth.ErrForbidden) {
				t.hidden = true // visible as a patient but not their vitals: no tile
				continue
			}
			if err != nil {
				return fmt.Errorf("portal: ward overview: %w", err)
			}
			reads = append(reads, phiRead{patient: t.PatientID.String(), what: "ward_tile", decision: d})
			shown = append(shown, t.PatientID)
		}
	}
	src, err := p.loadTiles(ctx, shown)
	if err != nil {
		return fmt.Errorf("portal: ward overview: %w", err)
	}
	for gi := range groups {
		groups[gi].Tiles = slices.DeleteFunc(groups[gi].Tiles, func(t tile) bool { return t.hidden })
		for ti := range groups[gi].Tiles {
			p.fill(&groups[gi].Tiles[ti], src)
		}
	}
	data.Patients = shown
	for _, g := range groups {
		if len(g.Tiles) > 0 {
			data.Wards = append(data.Wards, g)
		}
	}
	data.Empty = len(data.Wards) == 0
	// Every tile's read is committed to the audit trail before the page is sent; the page is
	// rendered while the audit events commit.
	audited := make(chan error, 1)
	go func() { audited <- p.auditReads(ctx, c, pr, reads) }()
	page, err := p.renderBytes(c, "ward.html", data)
	if aerr := <-audited; aerr != nil {
		return aerr
	}
	if err != nil {
		return err
	}
	return c.HTMLBlob(http.StatusOK, page)
}

// wardTile re-renders one tile (htmx, on a live event for its patient).
func (p *Portal) wardTile(c echo.Context) error {
	pr, _, err := p.viewer(c)
	if err != nil {
		return err
	}
	if pr == nil {
		return toSignIn(c)
	}
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "patient id must be a UUID")
	}
	ctx := c.Request().Context()
	pt, err := p.cfg.Core.Patient(ctx, id)
	if errors.Is(err, core.ErrNotFound) {
		return echo.ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("portal: tile: %w", err)
	}
	d, err := p.authorizeTile(ctx, pr, pt)
	if errors.Is(err, auth.ErrForbidden) {
		return echo.NewHTTPError(http.StatusForbidden, "not allowed to read this patient")
	}
	if err != nil {
		return fmt.Errorf("portal: tile: %w", err)
	}
	src, err := p.loadTiles(ctx, []uuid.UUID{pt.ID})
	if err != nil {
		return fmt.Errorf("portal: tile: %w", err)
	}
	t := tile{PatientID: pt.ID, Name: pt.PHI.GivenName + " " + pt.PHI.FamilyName, MRN: pt.PHI.MRN}
	p.fill(&t, src)
	if err := p.auditReads(ctx, c, pr, []phiRead{{patient: pt.ID.String(), what: "ward_tile", decision: d}}); err != nil {
		return err
	}
	return p.render(c, http.StatusOK, "tile", t)
}
