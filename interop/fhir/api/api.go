// Package api is Vigil's FHIR R4 read and search API behind /fhir/R4: it resolves a read
// (resource type and id) or a search (parsed by fhir.ParseSearch) into resources rendered by
// package fhir, from the clinical core, the alarms, the NEWS2 results of the rules, the
// device registry and the audit trail. The HTTP shell (server/fhir.go) authenticates the
// caller, gives it here as a Caller (what the policy lets it read), audits the reads this
// package reports (Result.Patients) and writes the answer; this package never sees HTTP.
//
// Reads of observations and uploads for searches are SQL queries of their own on core's
// tables (read only, by the primary keys and indexes core maintains): core's query API reads
// one code in ascending time, and a FHIR search pages across codes newest first.
package api

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/interop/fhir"
)

// Policy objects a Caller is asked about (the names of auth.Obj*).
const (
	ObjPatient     = "patient"
	ObjObservation = "observation"
	ObjAlarm       = "alarm"
	ObjDevice      = "device"
	ObjAudit       = "audit"
)

// Caller is what the policy lets the caller of one request read. The server implements it
// over the one Casbin enforcer; it MUST NOT record audit events itself (the server audits
// what Result.Patients names, once the answer is ready).
type Caller interface {
	// MayRead reports whether the caller may read obj of the patient (false for a patient
	// that does not exist). An error is a failure to decide, never a refusal.
	MayRead(ctx context.Context, obj string, patient uuid.UUID) (bool, error)
	// Visible returns the patients the caller may see when a search names none: all is
	// true when the caller may see every patient.
	Visible(ctx context.Context) (all bool, patients []uuid.UUID, err error)
}

// AuditSource reads the audit trail (the server adapts audit/chain to it: only the shell
// reads the chain).
type AuditSource interface {
	// AuditEvents lists events concerning object (type, id), newest first, at most limit,
	// from ≤ time < to (zero: unbounded), after cursor (""; the next cursor is returned,
	// "" on the last page).
	AuditEvents(ctx context.Context, objectType, objectID string, from, to time.Time, cursor string, limit int) ([]fhir.AuditEvent, string, error)
	// AuditEvent returns one event; an error wrapping ErrNotFound when there is none.
	AuditEvent(ctx context.Context, id uuid.UUID) (fhir.AuditEvent, error)
}

// Config is what the API reads from. Every service is optional: a resource type whose
// source is missing answers not found.
type Config struct {
	// Pool is the installation's database (observation and upload searches). Required.
	Pool    *pgxpool.Pool
	Core    *core.Service
	Alarms  *alarms.Service
	Rules   *rules.Engine
	Devices *devices.Service
	Audit   AuditSource
	// Recorder records the setting of SMART scopes (SetScopes). Optional otherwise.
	Recorder audit.Recorder
	// Version is the software version the CapabilityStatement names.
	Version string
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Service answers FHIR reads and searches.
type Service struct{ cfg Config }

// New returns the API over cfg.
func New(cfg Config) (*Service, error) {
	if cfg.Pool == nil {
		return nil, errors.New("fhir api: Config.Pool is required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Service{cfg: cfg}, nil
}

// ErrNotFound: no such resource, or one the caller may not read (the two are not told
// apart, so that existence does not leak).
var ErrNotFound = errors.New("fhir: resource not found")

// Error codes of the API's own refusals (the search parser's are fhir.Code*).
const (
	CodeNotFound = "not_found"
)

// Result is one answer: the resource (or Bundle) to write, and the patients whose data it
// shows, each with the policy object it was read as (for the access.phi.read events).
type Result struct {
	Resource any
	Patients []Read
}

// Read is one patient's data in an answer.
type Read struct {
	Patient uuid.UUID
	Object  string // ObjPatient, ObjObservation, ObjAlarm
	What    string // "fhir:Observation", …
}

// Types are the resource types served, with the policy object that guards their patient
// data ("" for none).
var Types = map[string]string{"Patient": ObjPatient, "Encounter": ObjPatient, "Observation": ObjObservation,
	"Flag": ObjAlarm, "Provenance": ObjObservation, "Device": ObjDevice, "AuditEvent": ObjAudit}

// Capability returns the CapabilityStatement.
func (s *Service) Capability() any { return fhir.RenderCapabilityStatement(s.cfg.Now(), s.cfg.Version) }

// Read returns one resource. ErrNotFound when it does not exist or the caller may not read
// it.
func (s *Service) Read(ctx context.Context, c Caller, typ, id string) (Result, error) {
	var (
		r   any
		pid uuid.UUID
		err error
	)
	switch typ {
	case "Patient":
		r, pid, err = s.readPatient(ctx, id)
	case "Encounter":
		r, pid, err = s.readEncounter(ctx, id)
	case "Observation":
		r, pid, err = s.readObservation(ctx, id)
	case "Flag":
		r, pid, err = s.readFlag(ctx, id)
	case "Provenance":
		r, pid, err = s.readProvenance(ctx, id)
	case "Device":
		r, err = s.readDevice(ctx, id)
	case "AuditEvent":
		r, err = s.readAuditEvent(ctx, id)
	default:
		return Result{}, &fhir.SearchError{Problems: []fhir.Problem{{Code: fhir.CodeUnknownResource, Type: "not-supported",
			Message: "resource type not supported"}}}
	}
	if err != nil {
		return Result{}, err
	}
	res := Result{Resource: r}
	if pid != uuid.Nil {
		ok, err := c.MayRead(ctx, Types[typ], pid)
		if err != nil {
			return Result{}, err
		}
		if !ok {
			return Result{}, fmt.Errorf("%s/%s: %w", typ, clip(id), ErrNotFound)
		}
		res.Patients = []Read{{Patient: pid, Object: Types[typ], What: "fhir:" + typ}}
	}
	return res, nil
}

// Search runs a search. base is the FHIR base URL of the links.
func (s *Service) Search(ctx context.Context, c Caller, base, typ string, values url.Values, h fhir.Handling) (Result, error) {
	q, err := fhir.ParseSearch(typ, values, h)
	if err != nil {
		return Result{}, err
	}
	sc := &scope{c: c, obj: Types[typ], reads: map[uuid.UUID]string{}}
	var page fhir.Page
	switch typ {
	case "Patient":
		page, err = s.searchPatients(ctx, sc, q)
	case "Encounter":
		page, err = s.searchEncounters(ctx, sc, q)
	case "Observation":
		page, err = s.searchObservations(ctx, sc, q)
	case "Flag":
		page, err = s.searchFlags(ctx, sc, q)
	case "Provenance":
		page, err = s.searchProvenance(ctx, sc, q)
	case "Device":
		page, err = s.searchDevices(ctx, sc, q)
	case "AuditEvent":
		page, err = s.searchAuditEvents(ctx, sc, q)
	}
	if err != nil {
		return Result{}, err
	}
	page.Base, page.Query = base, q
	b, err := fhir.RenderSearchBundle(page)
	if err != nil {
		return Result{}, err
	}
	res := Result{Resource: b}
	for pid, obj := range sc.reads {
		res.Patients = append(res.Patients, Read{Patient: pid, Object: obj, What: "fhir:" + typ + "?"})
	}
	return res, nil
}

// scope is one search's view of the caller: what it may read, decided once per patient
// and object, and the patients whose data the answer shows.
type scope struct {
	c       Caller
	obj     string
	allowed map[scopeKey]bool
	reads   map[uuid.UUID]string
}

type scopeKey struct {
	obj string
	pid uuid.UUID
}

// may reports whether the search may show obj of patient (the read is noted by saw, when
// data of the patient is in the answer).
func (sc *scope) may(ctx context.Context, obj string, pid uuid.UUID) (bool, error) {
	if sc.allowed == nil {
		sc.allowed = map[scopeKey]bool{}
	}
	k := scopeKey{obj, pid}
	ok, known := sc.allowed[k]
	if !known {
		var err error
		if ok, err = sc.c.MayRead(ctx, obj, pid); err != nil {
			return false, err
		}
		sc.allowed[k] = ok
	}
	return ok, nil
}

// saw notes that the answer shows obj of the patient.
func (sc *scope) saw(obj string, pid uuid.UUID) {
	if _, seen := sc.reads[pid]; !seen {
		sc.reads[pid] = obj
	}
}

// patients returns the patients a search covers: those named by its patient (or subject)
// filters that the caller may read, or every patient the caller may see (nil, true: every
// patient).
func (sc *scope) patients(ctx context.Context, q fhir.Query, params ...string) (ids []uuid.UUID, all bool, err error) {
	named, ok := refFilter(q, params...)
	if ok {
		for _, id := range named {
			pid, perr := uuid.Parse(id)
			if perr != nil {
				continue
			}
			if allowed, err := sc.may(ctx, sc.obj, pid); err != nil {
				return nil, false, err
			} else if allowed {
				ids = append(ids, pid)
			}
		}
		return ids, false, nil
	}
	all, vis, err := sc.c.Visible(ctx)
	if err != nil || all {
		return nil, all, err
	}
	for _, pid := range vis {
		if allowed, err := sc.may(ctx, sc.obj, pid); err != nil {
			return nil, false, err
		} else if allowed {
			ids = append(ids, pid)
		}
	}
	return ids, false, nil
}

// refFilter returns the ids of the reference filters named params (AND of ORs: the ids in
// every filter), and whether any was given.
func refFilter(q fhir.Query, params ...string) ([]string, bool) {
	var out []string
	given := false
	for _, f := range q.Filters {
		if !contains(params, f.Param) || f.Modifier == "missing" {
			continue
		}
		var ids []string
		for _, v := range f.Values {
			if v.Ref != nil {
				ids = append(ids, v.Ref.ID)
			}
		}
		if !given {
			out, given = ids, true
			continue
		}
		out = intersect(out, ids)
	}
	return out, given
}

// tokenFilter returns the token values of the filters named param (each filter's values).
func tokenFilter(q fhir.Query, param string) [][]fhir.Token {
	var out [][]fhir.Token
	for _, f := range q.Filters {
		if f.Param != param || f.Modifier != "" {
			continue
		}
		var ts []fhir.Token
		for _, v := range f.Values {
			if v.Token != nil {
				ts = append(ts, *v.Token)
			}
		}
		out = append(out, ts)
	}
	return out
}

// dateRange narrows [from, to) by the date filters of param; empty reports a range that
// matches nothing.
func dateRange(q fhir.Query, param string) (from, to time.Time, empty bool) {
	from, to = time.Unix(0, 0).UTC(), time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, f := range q.Filters {
		if f.Param != param {
			continue
		}
		// Alternatives (OR) of one filter: their union's hull.
		var lo, hi time.Time
		for i, v := range f.Values {
			if v.Date == nil {
				continue
			}
			l, h := bounds(*v.Date)
			if i == 0 || l.Before(lo) {
				lo = l
			}
			if i == 0 || h.After(hi) {
				hi = h
			}
		}
		if lo.After(from) {
			from = lo
		}
		if !hi.IsZero() && hi.Before(to) {
			to = hi
		}
	}
	return from, to, !from.Before(to)
}

// bounds is the instant range [lo, hi) a date value selects for a point in time.
func bounds(d fhir.DateBound) (lo, hi time.Time) {
	lo, hi = time.Unix(0, 0).UTC(), time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
	switch d.Prefix {
	case "eq", "ap":
		return d.Start, d.End
	case "ge", "sa":
		return d.Start, hi
	case "gt":
		return d.End, hi
	case "le", "eb":
		return lo, d.End
	case "lt":
		return lo, d.Start
	}
	return lo, hi // ne: no narrowing of the range (rare; filtered nowhere)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		if contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64]
	}
	return s
}

// ids returns the values of the _id filters (nil when none).
func idFilter(q fhir.Query) ([]string, bool) {
	ts := tokenFilter(q, "_id")
	if len(ts) == 0 {
		return nil, false
	}
	var out []string
	for i, f := range ts {
		var ids []string
		for _, t := range f {
			ids = append(ids, t.Code)
		}
		if i == 0 {
			out = ids
		} else {
			out = intersect(out, ids)
		}
	}
	return out, true
}
