package api

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	m "github.com/samply/golang-fhir-models/fhir-models/fhir"

	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/interop/fhir"
)

func notFound(typ, id string) error { return fmt.Errorf("%s/%s: %w", typ, clip(id), ErrNotFound) }

// --- Patient and Encounter ---------------------------------------------------------------

func renderPatient(p core.Patient) any {
	return fhir.RenderPatient(fhir.Patient{ID: p.ID.String(), MRN: p.PHI.MRN, FamilyName: p.PHI.FamilyName,
		GivenName: p.PHI.GivenName, BirthDate: p.PHI.BirthDate, Active: p.DischargedAt == nil})
}

// renderEncounter renders a patient's admission. Core keeps one admission per patient
// record, so the Encounter's id is the patient's.
func renderEncounter(p core.Patient) any {
	e := fhir.Encounter{ID: p.ID.String(), PatientID: p.ID.String(), Start: p.AdmittedAt, Cancelled: p.AdmissionCancelled}
	if p.WardID != nil {
		e.WardID = p.WardID.String()
	}
	if p.DischargedAt != nil {
		e.End = *p.DischargedAt
	}
	return fhir.RenderEncounter(e)
}

func (s *Service) patient(ctx context.Context, typ, id string) (core.Patient, error) {
	pid, err := uuid.Parse(id)
	if err != nil || s.cfg.Core == nil {
		return core.Patient{}, notFound(typ, id)
	}
	p, err := s.cfg.Core.Patient(ctx, pid)
	if errors.Is(err, core.ErrNotFound) {
		return core.Patient{}, notFound(typ, id)
	}
	return p, err
}

func (s *Service) readPatient(ctx context.Context, id string) (any, uuid.UUID, error) {
	p, err := s.patient(ctx, "Patient", id)
	if err != nil {
		return nil, uuid.Nil, err
	}
	return renderPatient(p), p.ID, nil
}

func (s *Service) readEncounter(ctx context.Context, id string) (any, uuid.UUID, error) {
	p, err := s.patient(ctx, "Encounter", id)
	if err != nil {
		return nil, uuid.Nil, err
	}
	return renderEncounter(p), p.ID, nil
}

// allPatients lists every patient (discharged ones too), at most 1,000.
func (s *Service) allPatients(ctx context.Context) ([]uuid.UUID, error) {
	ps, err := s.cfg.Core.Patients(ctx, core.PatientFilter{Discharged: true, Limit: 1000})
	if err != nil {
		return nil, err
	}
	out := make([]uuid.UUID, len(ps))
	for i, p := range ps {
		out[i] = p.ID
	}
	return out, nil
}

// patientsOf returns the patients a Patient or Encounter search selects, at most q.Count.
func (s *Service) patientsOf(ctx context.Context, sc *scope, q fhir.Query, refParams ...string) ([]core.Patient, error) {
	if s.cfg.Core == nil || q.Count == 0 {
		return nil, nil
	}
	var cand []uuid.UUID
	narrowed := false
	if ids, ok := idFilter(q); ok {
		narrowed = true
		for _, id := range ids {
			if pid, err := uuid.Parse(id); err == nil {
				cand = append(cand, pid)
			}
		}
	}
	if ids, ok := refFilter(q, refParams...); ok && len(refParams) > 0 {
		var refd []uuid.UUID
		for _, id := range ids {
			if pid, err := uuid.Parse(id); err == nil && (!narrowed || containsID(cand, pid)) {
				refd = append(refd, pid)
			}
		}
		cand, narrowed = refd, true
	}
	for _, f := range tokenFilter(q, "identifier") {
		var found []uuid.UUID
		for _, t := range f {
			switch {
			case t.System == fhir.PatientIDSystem:
				if pid, err := uuid.Parse(t.Code); err == nil {
					found = append(found, pid)
				}
			default: // an MRN, in any namespace: Vigil knows one per patient
				p, err := s.cfg.Core.PatientByMRN(ctx, t.Code)
				if errors.Is(err, core.ErrNotFound) || errors.Is(err, core.ErrInvalidRequest) {
					continue
				}
				if err != nil {
					return nil, err
				}
				found = append(found, p.ID)
			}
		}
		if narrowed {
			var both []uuid.UUID
			for _, id := range found {
				if containsID(cand, id) {
					both = append(both, id)
				}
			}
			found = both
		}
		cand, narrowed = found, true
	}
	if !narrowed {
		all, vis, err := sc.c.Visible(ctx)
		if err != nil {
			return nil, err
		}
		if all {
			if vis, err = s.allPatients(ctx); err != nil {
				return nil, err
			}
		}
		cand = vis
	}
	var out []core.Patient
	for _, pid := range cand {
		if len(out) == q.Count {
			break
		}
		ok, err := sc.may(ctx, sc.obj, pid)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		p, err := s.cfg.Core.Patient(ctx, pid)
		if errors.Is(err, core.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		sc.saw(sc.obj, pid)
		out = append(out, p)
	}
	return out, nil
}

func containsID(list []uuid.UUID, id uuid.UUID) bool {
	for _, x := range list {
		if x == id {
			return true
		}
	}
	return false
}

func (s *Service) searchPatients(ctx context.Context, sc *scope, q fhir.Query) (fhir.Page, error) {
	ps, err := s.patientsOf(ctx, sc, q)
	var page fhir.Page
	for _, p := range ps {
		page.Matches = append(page.Matches, renderPatient(p))
	}
	return page, err
}

func (s *Service) searchEncounters(ctx context.Context, sc *scope, q fhir.Query) (fhir.Page, error) {
	ps, err := s.patientsOf(ctx, sc, q, "patient")
	var page fhir.Page
	for _, p := range ps {
		page.Matches = append(page.Matches, renderEncounter(p))
		if contains(q.Include, "Encounter:patient") {
			page.Included = append(page.Included, renderPatient(p))
		}
	}
	return page, err
}

// --- Device ------------------------------------------------------------------------------

func (s *Service) renderDevice(ctx context.Context, d *devices.Device) (any, error) {
	fd := fhir.Device{ID: d.ID.String(), Serial: d.Serial, Model: d.Model, Firmware: d.Firmware, Status: d.Status}
	if d.PatientID != nil {
		fd.PatientID = d.PatientID.String()
	}
	if d.KeyVersion > 0 {
		ks, err := s.cfg.Devices.Keys(ctx, d.ID)
		if err != nil {
			return nil, err
		}
		for _, k := range ks {
			if k.Version == d.KeyVersion {
				sum := sha256.Sum256(k.PublicKey)
				fd.KeyFingerprint = sum[:]
			}
		}
	}
	return fhir.RenderDevice(fd), nil
}

func (s *Service) device(ctx context.Context, id string) (*devices.Device, error) {
	did, err := uuid.Parse(id)
	if err != nil || s.cfg.Devices == nil {
		return nil, notFound("Device", id)
	}
	d, err := s.cfg.Devices.Get(ctx, did)
	if errors.Is(err, devices.ErrNotFound) {
		return nil, notFound("Device", id)
	}
	return d, err
}

func (s *Service) readDevice(ctx context.Context, id string) (any, error) {
	d, err := s.device(ctx, id)
	if err != nil {
		return nil, err
	}
	return s.renderDevice(ctx, d)
}

// searchDevices lists registered devices (the route is for those who may read the
// registry): by id, identifier (serial or key fingerprint) and patient.
func (s *Service) searchDevices(ctx context.Context, sc *scope, q fhir.Query) (fhir.Page, error) {
	var page fhir.Page
	if s.cfg.Devices == nil || q.Count == 0 {
		return page, nil
	}
	var list []devices.Device
	if ids, ok := idFilter(q); ok {
		for _, id := range ids {
			d, err := s.device(ctx, id)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return page, err
			}
			list = append(list, *d)
		}
	} else {
		after := uuid.Nil
		for len(list) < 10000 {
			batch, err := s.cfg.Devices.List(ctx, "", after, 1000)
			if err != nil {
				return page, err
			}
			list = append(list, batch...)
			if len(batch) < 1000 {
				break
			}
			after = batch[len(batch)-1].ID
		}
	}
	patients, byPatient := refFilter(q, "patient")
	idents := tokenFilter(q, "identifier")
	for i := range list {
		d := &list[i]
		if byPatient && (d.PatientID == nil || !contains(patients, d.PatientID.String())) {
			continue
		}
		r, err := s.renderDevice(ctx, d)
		if err != nil {
			return page, err
		}
		if !matchesIdentifiers(r, idents) {
			continue
		}
		if len(page.Matches) == q.Count {
			break
		}
		page.Matches = append(page.Matches, r)
	}
	return page, nil
}

// matchesIdentifiers reports whether the rendered device has an identifier of every filter.
func matchesIdentifiers(r any, filters [][]fhir.Token) bool {
	dev, ok := r.(m.Device)
	if !ok {
		return len(filters) == 0
	}
	for _, f := range filters {
		hit := false
		for _, t := range f {
			for _, id := range dev.Identifier {
				if id.Value != nil && strings.EqualFold(*id.Value, t.Code) && (t.AnySystem || (id.System != nil && *id.System == t.System)) {
					hit = true
				}
			}
		}
		if !hit {
			return false
		}
	}
	return true
}

// provenanceTargets are the Observation ids a rendered Provenance targets.
func provenanceTargets(r any) []string {
	p, ok := r.(m.Provenance)
	if !ok {
		return nil
	}
	var out []string
	for _, t := range p.Target {
		if t.Reference != nil && strings.HasPrefix(*t.Reference, "Observation/") {
			out = append(out, strings.TrimPrefix(*t.Reference, "Observation/"))
		}
	}
	return out
}

func sortedKeys(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// --- Flag (alarms) -----------------------------------------------------------------------

func renderFlag(a alarms.Alarm) any {
	fa := fhir.Alarm{ID: a.ID.String(), PatientID: a.PatientID.String(), Rule: a.RuleID, Severity: a.Severity.String(),
		State: string(a.State), OpenedAt: a.OpenedAt}
	if a.ResolvedAt != nil {
		fa.ResolvedAt = *a.ResolvedAt
	}
	return fhir.RenderFlag(fa)
}

func (s *Service) readFlag(ctx context.Context, id string) (any, uuid.UUID, error) {
	aid, err := uuid.Parse(id)
	if err != nil || s.cfg.Alarms == nil {
		return nil, uuid.Nil, notFound("Flag", id)
	}
	a, err := s.cfg.Alarms.Get(ctx, aid)
	if errors.Is(err, alarms.ErrNotFound) {
		return nil, uuid.Nil, notFound("Flag", id)
	}
	if err != nil {
		return nil, uuid.Nil, err
	}
	return renderFlag(a), a.PatientID, nil
}

func (s *Service) searchFlags(ctx context.Context, sc *scope, q fhir.Query) (fhir.Page, error) {
	var page fhir.Page
	if s.cfg.Alarms == nil || q.Count == 0 {
		return page, nil
	}
	if ids, ok := idFilter(q); ok {
		for _, id := range ids {
			r, pid, err := s.readFlag(ctx, id)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return page, err
			}
			if ok, err := sc.may(ctx, ObjAlarm, pid); err != nil {
				return page, err
			} else if ok {
				sc.saw(ObjAlarm, pid)
				page.Matches = append(page.Matches, r)
			}
		}
		return page, nil
	}
	pids, all, err := sc.patients(ctx, q, "patient")
	if err != nil {
		return page, err
	}
	from, to, empty := dateRange(q, "date")
	if empty {
		return page, nil
	}
	var list []alarms.Alarm
	if all {
		if list, err = s.cfg.Alarms.List(ctx, alarms.Filter{Limit: 1000}); err != nil {
			return page, err
		}
	}
	for _, pid := range pids {
		l, err := s.cfg.Alarms.List(ctx, alarms.Filter{PatientID: pid, Limit: 1000})
		if err != nil {
			return page, err
		}
		list = append(list, l...)
	}
	for _, a := range list {
		end := time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
		if a.ResolvedAt != nil {
			end = *a.ResolvedAt
		}
		if !a.OpenedAt.Before(to) || end.Before(from) {
			continue // the alarm's period does not meet the date range
		}
		if len(page.Matches) == q.Count {
			break
		}
		sc.saw(ObjAlarm, a.PatientID)
		page.Matches = append(page.Matches, renderFlag(a))
	}
	return page, nil
}

// --- Provenance --------------------------------------------------------------------------

// provenance renders the Provenance of one accepted upload (id = the upload's id, which is
// its audit event's).
func (s *Service) provenance(ctx context.Context, uploadID uuid.UUID) (any, uuid.UUID, error) {
	if s.cfg.Core == nil {
		return nil, uuid.Nil, notFound("Provenance", uploadID.String())
	}
	u, err := s.cfg.Core.UploadByID(ctx, uploadID)
	if errors.Is(err, core.ErrNotFound) {
		return nil, uuid.Nil, notFound("Provenance", uploadID.String())
	}
	if err != nil {
		return nil, uuid.Nil, err
	}
	fu := fhir.Upload{ID: u.ID.String(), DeviceID: deviceRef(u.DeviceID), KeyID: u.KeyID, ReceivedAt: u.ReceivedAt,
		AuditEventID: u.ID.String(), PatientID: u.PatientID.String()}
	copy(fu.Hash[:], u.UploadHash)
	// The observations it carried: the patient's rows of this upload (near its receipt).
	rows, err := s.cfg.Pool.Query(ctx, `SELECT code, effective_at FROM core_observations
		WHERE patient_id = $1 AND upload_id = $2 ORDER BY effective_at, code`, u.PatientID, u.ID)
	if err != nil {
		return nil, uuid.Nil, fmt.Errorf("fhir: provenance targets: %w", err)
	}
	var code string
	var at time.Time
	seen := map[string]bool{}
	if _, err := pgx.ForEachRow(rows, []any{&code, &at}, func() error {
		id := ObservationID(u.PatientID, groupOf(code), at.UTC())
		if !seen[id] {
			seen[id] = true
			fu.Targets = append(fu.Targets, id)
		}
		return nil
	}); err != nil {
		return nil, uuid.Nil, fmt.Errorf("fhir: provenance targets: %w", err)
	}
	if s.cfg.Devices != nil && len(u.UploadHash) == 32 {
		rc, err := s.cfg.Devices.UploadReceipt(ctx, fu.Hash)
		if err == nil {
			fu.Receipt, fu.ReceiptKeyID = rc.Wire, rc.Signed.KeyID
			fu.ReceiptSignedAt = time.UnixMilli(rc.Body.ServerTime).UTC()
			fu.AuditLeafIndex = rc.Body.LeafIndex
			fu.Signature, fu.SignedAt = rc.DeviceSignature, rc.DeviceSignedAt
		} else if !errors.Is(err, devices.ErrNotFound) {
			return nil, uuid.Nil, err
		}
	}
	if len(fu.Targets) == 0 {
		// Every sample was a duplicate: a Provenance needs a target; the upload's patient.
		fu.TargetPatient = true
	}
	return fhir.RenderProvenance(fu), u.PatientID, nil
}

func (s *Service) readProvenance(ctx context.Context, id string) (any, uuid.UUID, error) {
	uid, err := uuid.Parse(id)
	if err != nil {
		return nil, uuid.Nil, notFound("Provenance", id)
	}
	return s.provenance(ctx, uid)
}

func (s *Service) searchProvenance(ctx context.Context, sc *scope, q fhir.Query) (fhir.Page, error) {
	var page fhir.Page
	if q.Count == 0 {
		return page, nil
	}
	var uploads []uuid.UUID
	narrowed := false
	if ids, ok := idFilter(q); ok {
		narrowed = true
		for _, id := range ids {
			if u, err := uuid.Parse(id); err == nil {
				uploads = append(uploads, u)
			}
		}
	}
	if targets, ok := refFilter(q, "target"); ok {
		var found []uuid.UUID
		for _, t := range targets {
			pid, code, at, ok := parseObservationID(t)
			if !ok {
				continue
			}
			codes := []string{code}
			if code == groupBP {
				codes = bpCodes
			}
			var up uuid.UUID
			err := s.cfg.Pool.QueryRow(ctx, `SELECT upload_id FROM core_observations WHERE patient_id = $1 AND code = ANY($2)
				AND effective_at = $3 LIMIT 1`, pid, codes, at).Scan(&up)
			if errors.Is(err, pgx.ErrNoRows) {
				continue
			}
			if err != nil {
				return page, fmt.Errorf("fhir: provenance of target: %w", err)
			}
			if !narrowed || containsID(uploads, up) {
				found = append(found, up)
			}
		}
		uploads, narrowed = found, true
	}
	if !narrowed {
		pids, all, err := sc.patients(ctx, q, "patient")
		if err != nil {
			return page, err
		}
		var pf any
		if !all {
			pf = pids
		}
		rows, err := s.cfg.Pool.Query(ctx, `SELECT id FROM core_uploads WHERE ($1::uuid[] IS NULL OR patient_id = ANY($1))
			ORDER BY received_at DESC LIMIT $2`, pf, q.Count)
		if err != nil {
			return page, fmt.Errorf("fhir: search provenance: %w", err)
		}
		if uploads, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID]); err != nil {
			return page, fmt.Errorf("fhir: search provenance: %w", err)
		}
	}
	patients, byPatient := refFilter(q, "patient")
	for _, u := range uploads {
		if len(page.Matches) == q.Count {
			break
		}
		r, pid, err := s.provenance(ctx, u)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return page, err
		}
		if byPatient && !contains(patients, pid.String()) {
			continue
		}
		ok, err := sc.may(ctx, ObjObservation, pid)
		if err != nil {
			return page, err
		}
		if !ok {
			continue
		}
		sc.saw(ObjObservation, pid)
		page.Matches = append(page.Matches, r)
		if contains(q.Include, "Provenance:target") {
			for _, t := range provenanceTargets(r) {
				o, _, err := s.readObservation(ctx, t)
				if errors.Is(err, ErrNotFound) {
					continue
				}
				if err != nil {
					return page, err
				}
				page.Included = append(page.Included, o)
			}
		}
	}
	return page, nil
}

// --- AuditEvent --------------------------------------------------------------------------

func (s *Service) readAuditEvent(ctx context.Context, id string) (any, error) {
	eid, err := uuid.Parse(id)
	if err != nil || s.cfg.Audit == nil {
		return nil, notFound("AuditEvent", id)
	}
	e, err := s.cfg.Audit.AuditEvent(ctx, eid)
	if err != nil {
		return nil, err
	}
	return fhir.RenderAuditEvent(e), nil
}

// searchAuditEvents lists audit events (the route is for those who may read the audit
// trail), of one patient or all, newest first.
func (s *Service) searchAuditEvents(ctx context.Context, sc *scope, q fhir.Query) (fhir.Page, error) {
	var page fhir.Page
	if s.cfg.Audit == nil || q.Count == 0 {
		return page, nil
	}
	if ids, ok := idFilter(q); ok {
		for _, id := range ids {
			r, err := s.readAuditEvent(ctx, id)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return page, err
			}
			page.Matches = append(page.Matches, r)
		}
		return page, nil
	}
	from, to, empty := dateRange(q, "date")
	if empty {
		return page, nil
	}
	objType, objID := "", ""
	if pids, ok := refFilter(q, "patient"); ok {
		if len(pids) != 1 {
			return page, nil // one patient at a time (or none matches)
		}
		objType, objID = "patient", pids[0]
	}
	actions := map[string]bool{}
	for _, f := range tokenFilter(q, "action") {
		for _, t := range f {
			actions[t.Code] = true
		}
	}
	evs, next, err := s.cfg.Audit.AuditEvents(ctx, objType, objID, from, to, q.Cursor, q.Count)
	if err != nil {
		return page, err
	}
	for _, e := range evs {
		r := fhir.RenderAuditEvent(e)
		if len(actions) > 0 && (r.Action == nil || !actions[r.Action.Code()]) {
			continue
		}
		page.Matches = append(page.Matches, r)
	}
	page.Next = next
	return page, nil
}

// --- _include ----------------------------------------------------------------------------

// includeFor adds the resources the search's _include values name for its matches.
func (s *Service) includeFor(ctx context.Context, sc *scope, q fhir.Query, page *fhir.Page) error {
	devs, pats := map[string]bool{}, map[string]bool{}
	for _, r := range page.Matches {
		o, ok := r.(m.Observation)
		if !ok {
			continue
		}
		if contains(q.Include, "Observation:device") && o.Device != nil && o.Device.Reference != nil {
			devs[strings.TrimPrefix(*o.Device.Reference, "Device/")] = true
		}
		if (contains(q.Include, "Observation:patient") || contains(q.Include, "Observation:subject")) && o.Subject != nil && o.Subject.Reference != nil {
			pats[strings.TrimPrefix(*o.Subject.Reference, "Patient/")] = true
		}
	}
	for _, id := range sortedKeys(devs) {
		r, err := s.readDevice(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		page.Included = append(page.Included, r)
	}
	for _, id := range sortedKeys(pats) {
		r, pid, err := s.readPatient(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if ok, err := sc.may(ctx, ObjPatient, pid); err != nil {
			return err
		} else if ok {
			sc.saw(ObjPatient, pid)
			page.Included = append(page.Included, r)
		}
	}
	return nil
}
