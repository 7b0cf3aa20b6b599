package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	m "github.com/samply/golang-fhir-models/fhir-models/fhir"

	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/interop/fhir"
)

// Observation ids. Core stores an observation by (patient, code, effective time), so its
// FHIR id is made of the three: "<patient hex>.<LOINC code>.<µs since the epoch>". A blood
// pressure panel (the systolic, diastolic and mean of one time) is "<patient hex>.bp.<µs>",
// a NEWS2 score "<patient hex>.news2.<µs>". Every id fits FHIR's 64 characters.
const (
	groupBP    = "bp"
	groupNEWS2 = "news2"
)

var bpCodes = []string{"8480-6", "8462-4", "8478-0"}

// ObservationID returns the FHIR id of the observation of patient, code (or groupBP,
// groupNEWS2) at t.
func ObservationID(patient uuid.UUID, code string, t time.Time) string {
	return hex.EncodeToString(patient[:]) + "." + code + "." + strconv.FormatInt(t.UnixMicro(), 10)
}

// parseObservationID is the inverse of ObservationID.
func parseObservationID(id string) (uuid.UUID, string, time.Time, bool) {
	parts := strings.Split(id, ".")
	if len(parts) != 3 || len(parts[0]) != 32 {
		return uuid.Nil, "", time.Time{}, false
	}
	b, err := hex.DecodeString(parts[0])
	if err != nil {
		return uuid.Nil, "", time.Time{}, false
	}
	us, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil || us < 0 {
		return uuid.Nil, "", time.Time{}, false
	}
	pid, _ := uuid.FromBytes(b)
	return pid, parts[1], time.UnixMicro(us).UTC(), true
}

func groupOf(code string) string {
	if contains(bpCodes, code) {
		return groupBP
	}
	return code
}

// row is one stored observation.
type row struct {
	patient  uuid.UUID
	code     string
	value    float64
	at       time.Time
	artifact bool
	upload   uuid.UUID
}

// entry is one Observation of a result: a sample, a blood-pressure panel or a NEWS2 score.
type entry struct {
	at      time.Time
	patient uuid.UUID
	group   string
	rows    []row
	news2   *rules.NEWS2Record
}

func (e entry) key() cursorKey { return cursorKey{e.at, e.patient, e.group} }

// cursorKey is a position in the order (effective time, patient, group).
type cursorKey struct {
	at      time.Time
	patient uuid.UUID
	group   string
}

func (k cursorKey) less(o cursorKey) bool {
	if !k.at.Equal(o.at) {
		return k.at.Before(o.at)
	}
	if c := bytes.Compare(k.patient[:], o.patient[:]); c != 0 {
		return c < 0
	}
	return k.group < o.group
}

func (k cursorKey) encode() string {
	raw := strconv.FormatInt(k.at.UnixMicro(), 10) + "." + hex.EncodeToString(k.patient[:]) + "." + k.group
	return base64.RawURLEncoding.EncodeToString([]byte(raw))
}

func decodeCursor(s string) (cursorKey, bool) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return cursorKey{}, false
	}
	parts := strings.Split(string(raw), ".")
	if len(parts) != 3 {
		return cursorKey{}, false
	}
	us, err := strconv.ParseInt(parts[0], 10, 64)
	if err != nil {
		return cursorKey{}, false
	}
	b, err := hex.DecodeString(parts[1])
	if err != nil || len(b) != 16 {
		return cursorKey{}, false
	}
	pid, _ := uuid.FromBytes(b)
	return cursorKey{time.UnixMicro(us).UTC(), pid, parts[2]}, true
}

func badCursor() error {
	return &fhir.SearchError{Problems: []fhir.Problem{{Code: fhir.CodeInvalidValue, Type: "invalid", Expression: "_cursor",
		Message: "_cursor is an opaque token from a next link"}}}
}

// groups returns the observation groups (codes, groupBP, groupNEWS2) the search's code and
// category filters select.
func groups(q fhir.Query) map[string]bool {
	all := map[string]bool{groupBP: true, groupNEWS2: true}
	for _, c := range fhir.Codes() {
		all[groupOf(c)] = true
	}
	for _, f := range tokenFilter(q, "code") {
		sel := map[string]bool{}
		for _, t := range f {
			switch {
			case (t.AnySystem || t.System == fhir.SNOMED) && t.Code == fhir.NEWS2Total:
				sel[groupNEWS2] = true
			case !t.AnySystem && t.System != fhir.LOINC:
			case t.Code == "85354-9":
				sel[groupBP] = true
			case all[groupOf(t.Code)] && fhir.KnownCode(t.Code):
				sel[groupOf(t.Code)] = true
			}
		}
		all = intersectSet(all, sel)
	}
	for _, f := range tokenFilter(q, "category") {
		sel := map[string]bool{}
		for _, t := range f {
			if !t.AnySystem && t.System != fhir.ObsCategory {
				continue
			}
			if t.Code == "survey" {
				sel[groupNEWS2] = true
			}
			for _, c := range fhir.Codes() {
				if fhir.CategoryOf(c) == t.Code {
					sel[groupOf(c)] = true
				}
			}
		}
		all = intersectSet(all, sel)
	}
	return all
}

func intersectSet(a, b map[string]bool) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		if b[k] {
			out[k] = true
		}
	}
	return out
}

// searchObservations pages through the observations of the patients the caller may read.
func (s *Service) searchObservations(ctx context.Context, sc *scope, q fhir.Query) (fhir.Page, error) {
	if ids, ok := idFilter(q); ok {
		return s.observationsByID(ctx, sc, ids)
	}
	pids, all, err := sc.patients(ctx, q, "patient", "subject")
	if err != nil || (!all && len(pids) == 0) || q.Count == 0 {
		return fhir.Page{}, err
	}
	from, to, empty := dateRange(q, "date")
	sel := groups(q)
	if empty || len(sel) == 0 {
		return fhir.Page{}, nil
	}
	desc := len(q.Sort) > 0 && q.Sort[0].Desc
	var after *cursorKey
	if q.Cursor != "" {
		k, ok := decodeCursor(q.Cursor)
		if !ok {
			return fhir.Page{}, badCursor()
		}
		after = &k
	}
	var codes []string
	for _, c := range fhir.Codes() {
		if sel[groupOf(c)] {
			codes = append(codes, c)
		}
	}
	devs := deviceFilter(q)
	entries, err := s.sampleEntries(ctx, pids, all, codes, devs, from, to, after, desc, q.Count+1)
	if err != nil {
		return fhir.Page{}, err
	}
	if sel[groupNEWS2] && devs == nil && s.cfg.Rules != nil {
		ns, err := s.news2Entries(ctx, pids, all, from, to, after, desc, q.Count+1)
		if err != nil {
			return fhir.Page{}, err
		}
		entries = append(entries, ns...)
		sort.SliceStable(entries, func(i, j int) bool {
			if desc {
				return entries[j].key().less(entries[i].key())
			}
			return entries[i].key().less(entries[j].key())
		})
	}
	var page fhir.Page
	if len(entries) > q.Count {
		entries = entries[:q.Count]
		page.Next = entries[len(entries)-1].key().encode()
	}
	if err := s.renderEntries(ctx, sc, entries, &page); err != nil {
		return fhir.Page{}, err
	}
	if err := s.includeFor(ctx, sc, q, &page); err != nil {
		return fhir.Page{}, err
	}
	return page, nil
}

// deviceFilter returns the device ids of the device filter (nil: none given).
func deviceFilter(q fhir.Query) []string {
	ids, ok := refFilter(q, "device")
	if !ok {
		return nil
	}
	if ids == nil {
		ids = []string{}
	}
	return ids
}

// sampleEntries reads at most limit entries (samples and blood-pressure panels) in the
// order (effective time, patient, group), after the cursor.
func (s *Service) sampleEntries(ctx context.Context, pids []uuid.UUID, all bool, codes, devs []string, from, to time.Time,
	after *cursorKey, desc bool, limit int) ([]entry, error) {
	if len(codes) == 0 {
		return nil, nil
	}
	var patients any
	if !all {
		patients = pids
	}
	var devFilter any
	if devs != nil {
		devFilter = devs
	}
	cmp, order := ">", "ASC"
	if desc {
		cmp, order = "<", "DESC"
	}
	var cAt, cPatient, cGroup any
	if after != nil {
		cAt, cPatient, cGroup = after.at, after.patient, after.group
	}
	grp := `(CASE WHEN o.code IN ('8480-6','8462-4','8478-0') THEN 'bp' ELSE o.code END COLLATE "C")`
	// A group has at most three rows (a blood-pressure panel): 3·limit rows hold limit groups.
	sql := `SELECT o.patient_id, o.code, o.value, o.effective_at, o.flags & 1 = 1, o.upload_id
		FROM core_observations o
		WHERE ($1::uuid[] IS NULL OR o.patient_id = ANY($1)) AND o.code = ANY($2)
		  AND o.effective_at >= $3 AND o.effective_at < $4
		  AND ($5::timestamptz IS NULL OR (o.effective_at, o.patient_id, ` + grp + `) ` + cmp + ` ($5, $6::uuid, $7::text COLLATE "C"))
		  AND ($8::text[] IS NULL OR o.upload_id IN (SELECT u.id FROM core_uploads u WHERE u.device_id = ANY($8) AND u.patient_id = o.patient_id))
		ORDER BY o.effective_at ` + order + `, o.patient_id ` + order + `, ` + grp + ` ` + order + `
		LIMIT $9`
	rows, err := s.cfg.Pool.Query(ctx, sql, patients, codes, from, to, cAt, cPatient, cGroup, devFilter, 3*limit)
	if err != nil {
		return nil, fmt.Errorf("fhir: search observations: %w", err)
	}
	rs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var o row
		err := r.Scan(&o.patient, &o.code, &o.value, &o.at, &o.artifact, &o.upload)
		o.at = o.at.UTC()
		return o, err
	})
	if err != nil {
		return nil, fmt.Errorf("fhir: search observations: %w", err)
	}
	var out []entry
	for _, o := range rs {
		g := groupOf(o.code)
		if n := len(out); n > 0 && out[n-1].at.Equal(o.at) && out[n-1].patient == o.patient && out[n-1].group == g {
			out[n-1].rows = append(out[n-1].rows, o)
			continue
		}
		if len(out) == limit {
			break
		}
		out = append(out, entry{at: o.at, patient: o.patient, group: g, rows: []row{o}})
	}
	return out, nil
}

// news2Entries reads at most limit NEWS2 scores of the patients after the cursor.
func (s *Service) news2Entries(ctx context.Context, pids []uuid.UUID, all bool, from, to time.Time, after *cursorKey, desc bool, limit int) ([]entry, error) {
	if all {
		if s.cfg.Core == nil {
			return nil, nil
		}
		var err error
		if pids, err = s.allPatients(ctx); err != nil {
			return nil, err
		}
	}
	if after != nil {
		if desc && after.at.Add(time.Microsecond).Before(to) {
			to = after.at.Add(time.Microsecond)
		}
		if !desc && after.at.After(from) {
			from = after.at
		}
	}
	var out []entry
	for _, pid := range pids {
		n := limit
		if !desc {
			n = 1000 // NEWS2History reads newest first: an ascending page takes the oldest
		}
		recs, err := s.cfg.Rules.NEWS2History(ctx, pid, from, to, n)
		if err != nil {
			return nil, fmt.Errorf("fhir: NEWS2 scores: %w", err)
		}
		seen := map[int64]bool{}
		for i := range recs {
			r := &recs[i]
			us := r.EffectiveAt.UnixMicro()
			if seen[us] {
				continue // an earlier recording of the same score time: the newest is shown
			}
			seen[us] = true
			e := entry{at: r.EffectiveAt, patient: pid, group: groupNEWS2, news2: r}
			if after != nil && (desc && !e.key().less(*after) || !desc && !after.less(e.key())) {
				continue
			}
			out = append(out, e)
		}
	}
	return out, nil
}

// renderEntries renders entries into page.Matches, with their devices and encounters.
func (s *Service) renderEntries(ctx context.Context, sc *scope, entries []entry, page *fhir.Page) error {
	devOf, err := s.uploadDevices(ctx, entries)
	if err != nil {
		return err
	}
	for _, e := range entries {
		rs, err := s.renderEntry(ctx, e, devOf)
		if err != nil {
			return err
		}
		for _, r := range rs {
			page.Matches = append(page.Matches, r)
		}
		sc.saw(ObjObservation, e.patient)
	}
	return nil
}

// uploadDevices maps the entries' upload ids to their devices.
func (s *Service) uploadDevices(ctx context.Context, entries []entry) (map[uuid.UUID]string, error) {
	var ids []uuid.UUID
	seen := map[uuid.UUID]bool{}
	for _, e := range entries {
		for _, r := range e.rows {
			if !seen[r.upload] {
				seen[r.upload] = true
				ids = append(ids, r.upload)
			}
		}
	}
	out := map[uuid.UUID]string{}
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := s.cfg.Pool.Query(ctx, `SELECT id, device_id FROM core_uploads WHERE id = ANY($1)`, ids)
	if err != nil {
		return nil, fmt.Errorf("fhir: upload devices: %w", err)
	}
	var id uuid.UUID
	var dev string
	if _, err := pgx.ForEachRow(rows, []any{&id, &dev}, func() error { out[id] = dev; return nil }); err != nil {
		return nil, fmt.Errorf("fhir: upload devices: %w", err)
	}
	return out, nil
}

// deviceRef is the FHIR id of a device as core records it (the registry's UUID), or "" for
// an observation entered by hand (core records the charting clinician's channel instead).
func deviceRef(dev string) string {
	if _, err := uuid.Parse(dev); err != nil {
		return ""
	}
	return dev
}

// renderEntry renders one entry: a sample, a panel (or its parts when it is not complete),
// or a NEWS2 score.
func (s *Service) renderEntry(ctx context.Context, e entry, devOf map[uuid.UUID]string) ([]any, error) {
	pid := e.patient.String()
	if e.news2 != nil {
		o, err := s.renderNEWS2(ctx, e.news2)
		if err != nil {
			return nil, err
		}
		return []any{o}, nil
	}
	if e.group == groupBP {
		var sys, dia, mean *row
		for i := range e.rows {
			r := &e.rows[i]
			switch r.code {
			case "8480-6":
				sys = r
			case "8462-4":
				dia = r
			case "8478-0":
				mean = r
			}
		}
		if sys != nil && dia != nil && !sys.artifact && !dia.artifact {
			bp := fhir.BloodPressure{ID: ObservationID(e.patient, groupBP, e.at), PatientID: pid, EncounterID: pid,
				DeviceID: deviceRef(devOf[sys.upload]), Time: e.at, Systolic: sys.value, Diastolic: dia.value}
			if mean != nil && !mean.artifact {
				bp.Mean = &mean.value
			}
			return []any{fhir.RenderBloodPressure(bp)}, nil
		}
	}
	var out []any
	for _, r := range e.rows {
		o, err := fhir.RenderObservation(fhir.Sample{ID: ObservationID(r.patient, r.code, r.at), PatientID: pid, EncounterID: pid,
			DeviceID: deviceRef(devOf[r.upload]), Code: r.code, Value: r.value, Unit: unitOf(r.code), Time: r.at, Artifact: r.artifact})
		if err != nil {
			return nil, err
		}
		out = append(out, o)
	}
	return out, nil
}

// news2Codes are the observations each measured NEWS2 value comes from.
var news2Codes = map[string][]string{"resp_rate": {"9279-1"}, "spo2": {"59408-5", "2708-6"}, "systolic_bp": {"8480-6"},
	"pulse": {"8867-4"}, "temperature": {"8310-5"}, "fio2": {"3150-0"}, "o2_flow": {"3151-8"}, "consciousness": {"80288-4"}}

// renderNEWS2 renders a NEWS2 record, derived from the latest stored observation of each
// parameter it measured (at or before the score's time).
func (s *Service) renderNEWS2(ctx context.Context, r *rules.NEWS2Record) (any, error) {
	sc := r.Score
	spo2 := "spo2_scale1"
	if sc.SpO2Scale == 2 {
		spo2 = "spo2_scale2"
	}
	n := fhir.NEWS2{ID: ObservationID(r.PatientID, groupNEWS2, r.EffectiveAt), PatientID: r.PatientID.String(), EncounterID: r.PatientID.String(),
		Time: r.EffectiveAt, Score: sc.Total,
		Points: map[string]int{"respiration_rate": sc.RespRate, spo2: sc.SpO2, "air_or_oxygen": sc.AirOrOxygen, "systolic_bp": sc.SystolicBP,
			"pulse": sc.Pulse, "consciousness": sc.Consciousness, "temperature": sc.Temperature}}
	var codes []string
	for name := range sc.Values {
		codes = append(codes, news2Codes[name]...)
	}
	if len(codes) > 0 {
		rows, err := s.cfg.Pool.Query(ctx, `SELECT DISTINCT ON (code) code, effective_at FROM core_observations
			WHERE patient_id = $1 AND code = ANY($2) AND effective_at <= $3 AND effective_at > $3 - interval '1 day'
			ORDER BY code, effective_at DESC`, r.PatientID, codes, r.EffectiveAt)
		if err != nil {
			return nil, fmt.Errorf("fhir: NEWS2 derivation: %w", err)
		}
		var code string
		var at time.Time
		seen := map[string]bool{}
		if _, err := pgx.ForEachRow(rows, []any{&code, &at}, func() error {
			id := ObservationID(r.PatientID, groupOf(code), at.UTC())
			if code == "8480-6" {
				id = ObservationID(r.PatientID, groupBP, at.UTC())
			}
			if !seen[id] {
				seen[id] = true
				n.DerivedFrom = append(n.DerivedFrom, id)
			}
			return nil
		}); err != nil {
			return nil, fmt.Errorf("fhir: NEWS2 derivation: %w", err)
		}
		sort.Strings(n.DerivedFrom)
	}
	return fhir.RenderNEWS2(n)
}

// readObservation reads one Observation by id.
func (s *Service) readObservation(ctx context.Context, id string) (any, uuid.UUID, error) {
	pid, code, at, ok := parseObservationID(id)
	if !ok {
		return nil, uuid.Nil, fmt.Errorf("Observation/%s: %w", clip(id), ErrNotFound)
	}
	if code == groupNEWS2 {
		if s.cfg.Rules == nil {
			return nil, uuid.Nil, fmt.Errorf("Observation/%s: %w", clip(id), ErrNotFound)
		}
		recs, err := s.cfg.Rules.NEWS2History(ctx, pid, at, at.Add(time.Microsecond), 1)
		if err != nil {
			return nil, uuid.Nil, err
		}
		if len(recs) == 0 {
			return nil, uuid.Nil, fmt.Errorf("Observation/%s: %w", clip(id), ErrNotFound)
		}
		o, err := s.renderNEWS2(ctx, &recs[0])
		return o, pid, err
	}
	codes := []string{code}
	if code == groupBP {
		codes = bpCodes
	} else if !fhir.KnownCode(code) {
		return nil, uuid.Nil, fmt.Errorf("Observation/%s: %w", clip(id), ErrNotFound)
	}
	es, err := s.sampleEntries(ctx, []uuid.UUID{pid}, false, codes, nil, at, at.Add(time.Microsecond), nil, false, 1)
	if err != nil {
		return nil, uuid.Nil, err
	}
	if len(es) == 0 {
		return nil, uuid.Nil, fmt.Errorf("Observation/%s: %w", clip(id), ErrNotFound)
	}
	devOf, err := s.uploadDevices(ctx, es)
	if err != nil {
		return nil, uuid.Nil, err
	}
	rs, err := s.renderEntry(ctx, es[0], devOf)
	if err != nil {
		return nil, uuid.Nil, err
	}
	for _, r := range rs {
		if o, ok := r.(m.Observation); ok && o.Id != nil && *o.Id == id {
			return r, pid, nil
		}
	}
	return nil, uuid.Nil, fmt.Errorf("Observation/%s: %w", clip(id), ErrNotFound)
}

// observationsByID renders the observations named by _id that the caller may read.
func (s *Service) observationsByID(ctx context.Context, sc *scope, ids []string) (fhir.Page, error) {
	var page fhir.Page
	for _, id := range ids {
		r, pid, err := s.readObservation(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return fhir.Page{}, err
		}
		if ok, err := sc.may(ctx, ObjObservation, pid); err != nil {
			return fhir.Page{}, err
		} else if ok {
			sc.saw(ObjObservation, pid)
			page.Matches = append(page.Matches, r)
		}
	}
	return page, nil
}

// unitOf is the canonical UCUM unit core stores code in.
func unitOf(code string) string {
	c, _ := core.LookupCode(code)
	return c.Unit
}

// ObservationIDOf returns the FHIR id under which a stored observation of patient, code at
// t is served: a blood-pressure code's is its panel's (ObservationID with "bp").
func ObservationIDOf(patient uuid.UUID, code string, t time.Time) string {
	return ObservationID(patient, groupOf(code), t)
}
