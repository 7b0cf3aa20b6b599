package core

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/rowdigest"
)

// Site is a hospital or care site.
type Site struct {
	ID        uuid.UUID `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// Ward is a ward of a site.
type Ward struct {
	ID        uuid.UUID `json:"id"`
	SiteID    uuid.UUID `json:"site_id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// PatientPHI is a patient's identifying data. It is stored only sealed (Config.PHI).
type PatientPHI struct {
	MRN        string `json:"mrn"` // medical record number; unique, found through its blind index
	GivenName  string `json:"given_name"`
	FamilyName string `json:"family_name"`
	BirthDate  string `json:"birth_date,omitempty"` // YYYY-MM-DD
}

// Patient is a patient with its identifying data opened.
type Patient struct {
	ID           uuid.UUID  `json:"id"`
	WardID       *uuid.UUID `json:"ward_id,omitempty"`
	PHI          PatientPHI `json:"phi"`
	AdmittedAt   time.Time  `json:"admitted_at"`
	DischargedAt *time.Time `json:"discharged_at,omitempty"`
	// AdmissionCancelled: the admission was cancelled (ADT^A11, CancelAdmission) — entered in
	// error, never an admission; DischargedAt is then its start.
	AdmissionCancelled bool      `json:"admission_cancelled,omitempty"`
	CreatedAt          time.Time `json:"created_at"`
	UpdatedAt          time.Time `json:"updated_at"`
	// LastRequestID is the request id of the last audited change of the patient (for ADT,
	// "hl7:<facility>:<control id>"): a message re-sent after a lost ACK is recognised by it.
	LastRequestID string `json:"-"`
}

// CareTeamMember ties a clinician to a patient.
type CareTeamMember struct {
	PatientID   uuid.UUID `json:"patient_id"`
	ClinicianID string    `json:"clinician_id"`
	Role        string    `json:"role"` // e.g. "nurse", "physician"
	AddedAt     time.Time `json:"added_at"`
}

func (s *Service) recordIn(ctx context.Context, tx pgx.Tx, by audit.Event, now time.Time, action, objType, objID string, payload any) error {
	ev := by
	ev.Time = now
	ev.Action = action
	ev.Object = audit.Object{Type: objType, ID: objID}
	ev.Outcome = audit.OutcomeSuccess
	ev.Payload = payload
	if ev.Actor.Kind == "" {
		ev.Actor = audit.Actor{Kind: audit.ActorService, ID: "core", AuthMethod: "internal"}
	}
	_, err := s.cfg.Recorder.Record(ctx, tx, ev)
	return err
}

func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

func isFKViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23503"
}

// CreateSite creates a site, audited as "site.created". by carries actor, request id and
// source address (server.EventFor).
func (s *Service) CreateSite(ctx context.Context, by audit.Event, name string) (Site, error) {
	name = strings.TrimSpace(name)
	if name == "" {
		return Site{}, fmt.Errorf("create site: %w: empty name", ErrInvalidRequest)
	}
	site := Site{ID: uuid.Must(uuid.NewV7()), Name: name, CreatedAt: s.cfg.Now().UTC().Truncate(time.Microsecond)}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO core_sites (id, name, created_at) VALUES ($1,$2,$3)", site.ID, site.Name, site.CreatedAt); err != nil {
			return err
		}
		return s.recordIn(ctx, tx, by, site.CreatedAt, "site.created", "site", site.ID.String(), map[string]any{"name": name})
	})
	if isUniqueViolation(err) {
		return Site{}, fmt.Errorf("create site %q: %w: name in use", name, ErrConflict)
	}
	if err != nil {
		return Site{}, fmt.Errorf("create site: %w", err)
	}
	return site, nil
}

// Sites lists every site by name.
func (s *Service) Sites(ctx context.Context) ([]Site, error) {
	rows, err := s.pool.Query(ctx, "SELECT id, name, created_at FROM core_sites ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("list sites: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[Site])
}

// CreateWard creates a ward of a site, audited as "ward.created".
func (s *Service) CreateWard(ctx context.Context, by audit.Event, siteID uuid.UUID, name string) (Ward, error) {
	name = strings.TrimSpace(name)
	if name == "" {
		return Ward{}, fmt.Errorf("create ward: %w: empty name", ErrInvalidRequest)
	}
	w := Ward{ID: uuid.Must(uuid.NewV7()), SiteID: siteID, Name: name, CreatedAt: s.cfg.Now().UTC().Truncate(time.Microsecond)}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO core_wards (id, site_id, name, created_at) VALUES ($1,$2,$3,$4)", w.ID, w.SiteID, w.Name, w.CreatedAt); err != nil {
			return err
		}
		return s.recordIn(ctx, tx, by, w.CreatedAt, "ward.created", "ward", w.ID.String(), map[string]any{"site_id": siteID, "name": name})
	})
	switch {
	case isUniqueViolation(err):
		return Ward{}, fmt.Errorf("create ward %q: %w: name in use at the site", name, ErrConflict)
	case isFKViolation(err):
		return Ward{}, fmt.Errorf("create ward: site %s: %w", siteID, ErrNotFound)
	case err != nil:
		return Ward{}, fmt.Errorf("create ward: %w", err)
	}
	return w, nil
}

// Wards lists the wards of a site (every site when siteID is zero).
func (s *Service) Wards(ctx context.Context, siteID uuid.UUID) ([]Ward, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, site_id, name, created_at FROM core_wards
		WHERE $1::uuid IS NULL OR site_id = $1 ORDER BY name`, nullUUID(siteID))
	if err != nil {
		return nil, fmt.Errorf("list wards: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[Ward])
}

func nullUUID(id uuid.UUID) any {
	if id == uuid.Nil {
		return nil
	}
	return id
}

// NormalizeMRN is the form of an MRN that is indexed: letters and digits only, upper case.
func NormalizeMRN(mrn string) string {
	var b strings.Builder
	for _, r := range mrn {
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			b.WriteRune(unicode.ToUpper(r))
		}
	}
	return b.String()
}

func phiAAD(id uuid.UUID) []byte { return []byte("patient/" + id.String() + "/phi") }

// CreatePatient admits a patient, sealing its identifying data (Config.PHI) and indexing its
// MRN, audited as "patient.created" (the audit payload holds no PHI). ErrConflict if a patient
// with the same MRN exists; ErrNotFound for an unknown ward.
func (s *Service) CreatePatient(ctx context.Context, by audit.Event, phi PatientPHI, wardID *uuid.UUID) (Patient, error) {
	if s.cfg.PHI == nil {
		return Patient{}, fmt.Errorf("create patient: %w", ErrNoPHISealer)
	}
	phi.MRN = strings.TrimSpace(phi.MRN)
	if NormalizeMRN(phi.MRN) == "" {
		return Patient{}, fmt.Errorf("create patient: %w: MRN is required", ErrInvalidRequest)
	}
	if phi.BirthDate != "" {
		if _, err := time.Parse("2006-01-02", phi.BirthDate); err != nil {
			return Patient{}, fmt.Errorf("create patient: %w: birth date must be YYYY-MM-DD", ErrInvalidRequest)
		}
	}
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	p := Patient{ID: uuid.Must(uuid.NewV7()), WardID: wardID, PHI: phi, AdmittedAt: now, CreatedAt: now, UpdatedAt: now}
	plain, err := json.Marshal(phi)
	if err != nil {
		return Patient{}, fmt.Errorf("create patient: %w", err)
	}
	sealed, err := s.cfg.PHI.Seal(ctx, plain, phiAAD(p.ID))
	clear(plain)
	if err != nil {
		return Patient{}, fmt.Errorf("create patient: seal: %w", err)
	}
	idx, err := s.cfg.PHI.BlindIndex(ctx, []byte(NormalizeMRN(phi.MRN)))
	if err != nil {
		return Patient{}, fmt.Errorf("create patient: blind index: %w", err)
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO core_patients (id, ward_id, mrn_index, phi_sealed, admitted_at, created_at, updated_at)
			VALUES ($1,$2,$3,$4,$5,$5,$5)`, p.ID, wardID, idx, sealed, now); err != nil {
			return err
		}
		return s.recordPatient(ctx, tx, by, now, "patient.created", p.ID, map[string]any{"ward_id": wardID})
	})
	switch {
	case isUniqueViolation(err):
		return Patient{}, fmt.Errorf("create patient: %w: a patient with this MRN exists", ErrConflict)
	case isFKViolation(err):
		return Patient{}, fmt.Errorf("create patient: ward: %w", ErrNotFound)
	case err != nil:
		return Patient{}, fmt.Errorf("create patient: %w", err)
	}
	s.patients.Store(p.ID, true)
	return p, nil
}

const patientCols = "id, ward_id, phi_sealed, admitted_at, discharged_at, created_at, updated_at, last_request_id, admission_cancelled"

func (s *Service) scanPatient(ctx context.Context, row pgx.Row) (Patient, error) {
	var p Patient
	var sealed []byte
	if err := row.Scan(&p.ID, &p.WardID, &sealed, &p.AdmittedAt, &p.DischargedAt, &p.CreatedAt, &p.UpdatedAt, &p.LastRequestID, &p.AdmissionCancelled); err != nil {
		return Patient{}, err
	}
	plain, err := s.cfg.PHI.Open(ctx, sealed, phiAAD(p.ID))
	if err != nil {
		return Patient{}, fmt.Errorf("open PHI of patient %s: %w", p.ID, err)
	}
	defer clear(plain)
	if err := json.Unmarshal(plain, &p.PHI); err != nil {
		return Patient{}, fmt.Errorf("decode PHI of patient %s: %w", p.ID, err)
	}
	return p, nil
}

// Patient returns one patient with its PHI opened, or ErrNotFound.
func (s *Service) Patient(ctx context.Context, id uuid.UUID) (Patient, error) {
	if s.cfg.PHI == nil {
		return Patient{}, fmt.Errorf("get patient: %w", ErrNoPHISealer)
	}
	p, err := s.scanPatient(ctx, s.pool.QueryRow(ctx, "SELECT "+patientCols+" FROM core_patients WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return Patient{}, fmt.Errorf("patient %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Patient{}, fmt.Errorf("get patient: %w", err)
	}
	return p, nil
}

// PatientByMRN finds a patient by MRN through its blind index, or ErrNotFound.
func (s *Service) PatientByMRN(ctx context.Context, mrn string) (Patient, error) {
	if s.cfg.PHI == nil {
		return Patient{}, fmt.Errorf("find patient: %w", ErrNoPHISealer)
	}
	idx, err := s.cfg.PHI.BlindIndex(ctx, []byte(NormalizeMRN(mrn)))
	if err != nil {
		return Patient{}, fmt.Errorf("find patient: blind index: %w", err)
	}
	p, err := s.scanPatient(ctx, s.pool.QueryRow(ctx, "SELECT "+patientCols+" FROM core_patients WHERE mrn_index = $1", idx))
	if errors.Is(err, pgx.ErrNoRows) {
		return Patient{}, fmt.Errorf("patient by MRN: %w", ErrNotFound)
	}
	if err != nil {
		return Patient{}, fmt.Errorf("find patient: %w", err)
	}
	return p, nil
}

// PatientFilter selects patients for Patients.
type PatientFilter struct {
	WardID     uuid.UUID // zero: every ward
	Clinician  string    // non-empty: only patients on this clinician's care team
	Discharged bool      // include discharged patients
	Limit      int       // default 100, at most 1000
}

// Patients lists patients, most recently admitted first, with their PHI opened.
func (s *Service) Patients(ctx context.Context, f PatientFilter) ([]Patient, error) {
	if s.cfg.PHI == nil {
		return nil, fmt.Errorf("list patients: %w", ErrNoPHISealer)
	}
	if f.Limit <= 0 {
		f.Limit = 100
	}
	if f.Limit > 1000 {
		f.Limit = 1000
	}
	var clin any
	if f.Clinician != "" {
		clin = f.Clinician
	}
	rows, err := s.pool.Query(ctx, "SELECT "+patientCols+` FROM core_patients p
		WHERE ($1::uuid IS NULL OR ward_id = $1) AND ($2 OR discharged_at IS NULL)
		  AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM core_care_team c WHERE c.patient_id = p.id AND c.clinician_id = $3))
		ORDER BY admitted_at DESC, id LIMIT $4`, nullUUID(f.WardID), f.Discharged, clin, f.Limit)
	if err != nil {
		return nil, fmt.Errorf("list patients: %w", err)
	}
	defer rows.Close()
	var out []Patient
	for rows.Next() {
		p, err := s.scanPatient(ctx, rows)
		if err != nil {
			return nil, fmt.Errorf("list patients: %w", err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list patients: %w", err)
	}
	return out, nil
}

// DischargePatient marks a patient discharged, audited as "patient.discharged", then ends its
// rule monitoring (Config.Release: open alarms resolved, no-data watch ended; a failure there
// is logged, the discharge stands). Ingest keeps accepting its samples (a device may still be
// attached); ErrConflict if already discharged.
func (s *Service) DischargePatient(ctx context.Context, by audit.Event, id uuid.UUID) error {
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	err := s.patientTx(ctx, id, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "UPDATE core_patients SET discharged_at = $2, updated_at = $2 WHERE id = $1 AND discharged_at IS NULL", id, now)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("discharge patient %s: %w: already discharged", id, ErrConflict)
		}
		return s.recordPatient(ctx, tx, by, now, "patient.discharged", id, nil)
	})
	if err != nil || s.cfg.Release == nil {
		return err
	}
	if rerr := s.cfg.Release.ReleasePatient(context.WithoutCancel(ctx), by, id, "patient discharged"); rerr != nil {
		s.cfg.Logger.ErrorContext(ctx, "core: end rule monitoring of a discharged patient",
			slog.String("patient_id", id.String()), slog.String("error", rerr.Error()))
	}
	return nil
}

// MovePatient moves a patient to another ward, audited as "patient.moved".
func (s *Service) MovePatient(ctx context.Context, by audit.Event, id, wardID uuid.UUID) error {
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	err := s.patientTx(ctx, id, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "UPDATE core_patients SET ward_id = $2, updated_at = $3 WHERE id = $1", id, wardID, now); err != nil {
			return err
		}
		return s.recordPatient(ctx, tx, by, now, "patient.moved", id, map[string]any{"ward_id": wardID})
	})
	if isFKViolation(err) {
		return fmt.Errorf("move patient: ward %s: %w", wardID, ErrNotFound)
	}
	return err
}

// patientTx runs fn in a transaction after locking the patient row (ErrNotFound if absent).
func (s *Service) patientTx(ctx context.Context, id uuid.UUID, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var one int
		if err := tx.QueryRow(ctx, "SELECT 1 FROM core_patients WHERE id = $1 FOR UPDATE", id).Scan(&one); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("patient %s: %w", id, ErrNotFound)
			}
			return err
		}
		return fn(tx)
	})
}

// AddCareTeamMember puts a clinician on a patient's care team (or changes the role),
// audited as "care_team.member_added".
func (s *Service) AddCareTeamMember(ctx context.Context, by audit.Event, patientID uuid.UUID, clinicianID, role string) (CareTeamMember, error) {
	return s.addCareTeamMember(ctx, by, patientID, clinicianID, role, false)
}

// JoinCareTeam is AddCareTeamMember that refuses a change changing nothing: ErrAlreadyMember
// when the clinician is already on the team in that role, with nothing stored and nothing
// audited (the caller audits its refusal). The insert itself decides (a conditional upsert on
// the team's primary key), so of concurrent identical adds exactly one is stored and audited
// and the others are refused, whatever the pages they were posted from showed.
func (s *Service) JoinCareTeam(ctx context.Context, by audit.Event, patientID uuid.UUID, clinicianID, role string) (CareTeamMember, error) {
	return s.addCareTeamMember(ctx, by, patientID, clinicianID, role, true)
}

func (s *Service) addCareTeamMember(ctx context.Context, by audit.Event, patientID uuid.UUID, clinicianID, role string, once bool) (CareTeamMember, error) {
	clinicianID, role = strings.TrimSpace(clinicianID), strings.TrimSpace(role)
	if clinicianID == "" || role == "" {
		return CareTeamMember{}, fmt.Errorf("add care team member: %w: clinician id and role are required", ErrInvalidRequest)
	}
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	m := CareTeamMember{PatientID: patientID, ClinicianID: clinicianID, Role: role, AddedAt: now}
	upsert := `INSERT INTO core_care_team (patient_id, clinician_id, role, added_at) VALUES ($1,$2,$3,$4)
			ON CONFLICT (patient_id, clinician_id) DO UPDATE SET role = EXCLUDED.role`
	if once {
		upsert += ` WHERE core_care_team.role IS DISTINCT FROM EXCLUDED.role`
	}
	err := s.patientTx(ctx, patientID, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, upsert, patientID, clinicianID, role, now)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("care team of %s: clinician %q as %s: %w", patientID, clinicianID, role, ErrAlreadyMember)
		}
		return s.recordIn(ctx, tx, by, now, "care_team.member_added", "patient", patientID.String(),
			map[string]any{"clinician_id": clinicianID, "role": role})
	})
	if err != nil {
		return CareTeamMember{}, err
	}
	return m, nil
}

// RemoveCareTeamMember takes a clinician off a patient's care team, audited as
// "care_team.member_removed"; ErrNotFound if not a member.
func (s *Service) RemoveCareTeamMember(ctx context.Context, by audit.Event, patientID uuid.UUID, clinicianID string) error {
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	return s.patientTx(ctx, patientID, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "DELETE FROM core_care_team WHERE patient_id = $1 AND clinician_id = $2", patientID, clinicianID)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("care team of %s: clinician %q: %w", patientID, clinicianID, ErrNotFound)
		}
		return s.recordIn(ctx, tx, by, now, "care_team.member_removed", "patient", patientID.String(),
			map[string]any{"clinician_id": clinicianID})
	})
}

// CareTeam lists a patient's care team.
func (s *Service) CareTeam(ctx context.Context, patientID uuid.UUID) ([]CareTeamMember, error) {
	rows, err := s.pool.Query(ctx, `SELECT patient_id, clinician_id, role, added_at FROM core_care_team
		WHERE patient_id = $1 ORDER BY clinician_id`, patientID)
	if err != nil {
		return nil, fmt.Errorf("care team: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[CareTeamMember])
}

// PatientsOf returns the ids of the patients on a clinician's care team (for filtering SSE
// streams and lists per caller).
func (s *Service) PatientsOf(ctx context.Context, clinicianID string) ([]uuid.UUID, error) {
	rows, err := s.pool.Query(ctx, "SELECT patient_id FROM core_care_team WHERE clinician_id = $1 ORDER BY patient_id", clinicianID)
	if err != nil {
		return nil, fmt.Errorf("patients of clinician: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
}

// SealedPHI is one stored sealed PHI value, for re-wrapping after a key rotation.
type SealedPHI struct {
	ID  string // patient id
	Old []byte // the stored ciphertext
	New []byte // the re-wrapped ciphertext (ReplaceSealedPHI)
}

// NextSealedPHI returns up to limit patients' sealed PHI with an id greater than after ("" for
// the start), in increasing id order; an empty slice at the end. With ReplaceSealedPHI it is
// the store the key ring's RewrapAll walks (keys.RewrapStore, adapted in cmd/vigil).
func (s *Service) NextSealedPHI(ctx context.Context, after string, limit int) ([]SealedPHI, error) {
	from := uuid.Nil
	if after != "" {
		id, err := uuid.Parse(after)
		if err != nil {
			return nil, fmt.Errorf("sealed PHI after %q: %w", after, ErrInvalidRequest)
		}
		from = id
	}
	rows, err := s.pool.Query(ctx, "SELECT id, phi_sealed FROM core_patients WHERE id > $1 ORDER BY id LIMIT $2", from, limit)
	if err != nil {
		return nil, fmt.Errorf("sealed PHI: %w", err)
	}
	out := []SealedPHI{}
	var id uuid.UUID
	var sealed []byte
	if _, err := pgx.ForEachRow(rows, []any{&id, &sealed}, func() error {
		out = append(out, SealedPHI{ID: id.String(), Old: append([]byte(nil), sealed...)})
		return nil
	}); err != nil {
		return nil, fmt.Errorf("sealed PHI: %w", err)
	}
	return out, nil
}

// rewrapStampsPerEvent bounds the rows one "patient.phi_rewrapped" event ties to itself
// (their digests stay well under audit.MaxPayloadBytes).
const rewrapStampsPerEvent = 100

// ReplaceSealedPHI stores each New ciphertext where the stored one still equals Old
// (compare-and-swap: a concurrent change is not undone), in one transaction, audited as
// "patient.phi_rewrapped" with the count; each replaced row is tied to that event with the
// digest of its new content (audit/rowdigest; one event per up to 100 replaced rows).
func (s *Service) ReplaceSealedPHI(ctx context.Context, items []SealedPHI) error {
	now := s.cfg.Now().UTC()
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var replaced []string
		for _, it := range items {
			tag, err := tx.Exec(ctx, "UPDATE core_patients SET phi_sealed = $3 WHERE id = $1 AND phi_sealed = $2", it.ID, it.Old, it.New)
			if err != nil {
				return fmt.Errorf("rewrap PHI of %s: %w", it.ID, err)
			}
			if tag.RowsAffected() > 0 {
				replaced = append(replaced, it.ID)
			}
		}
		for first := true; first || len(replaced) > 0; first = false {
			chunk := replaced[:min(len(replaced), rewrapStampsPerEvent)]
			replaced = replaced[len(chunk):]
			ev := audit.Event{ID: uuid.Must(uuid.NewV7())}
			ds := rowdigest.Digests{}
			for _, id := range chunk {
				if err := ds.Stamp(ctx, tx, rowdigest.Patients, id, ev.ID); err != nil {
					return err
				}
			}
			if err := s.recordIn(ctx, tx, ev, now, "patient.phi_rewrapped", "patient_phi", "core_patients",
				map[string]any{"offered": len(items), "replaced": len(chunk), rowdigest.PayloadKey: ds}); err != nil {
				return err
			}
		}
		return nil
	})
}

// recordPatient records a patient's change in tx, after the change of the patient's row, and
// ties the row to it: the row names the event (last_event_id) and the request that made it
// (last_request_id), and carries the event's id and the digest of its audited content
// (audit/rowdigest: the sealed PHI as its ciphertext, MRN index, ward, admission, discharge),
// which the event's payload (a map, or nil) carries too.
func (s *Service) recordPatient(ctx context.Context, tx pgx.Tx, by audit.Event, now time.Time, action string, id uuid.UUID, payload map[string]any) error {
	ev := by
	evID, err := uuid.NewV7()
	if err != nil {
		return err
	}
	ev.ID = evID
	ev.Time = now
	ev.Action = action
	ev.Object = audit.Object{Type: "patient", ID: id.String()}
	ev.Outcome = audit.OutcomeSuccess
	if ev.Actor.Kind == "" {
		ev.Actor = audit.Actor{Kind: audit.ActorService, ID: "core", AuthMethod: "internal"}
	}
	if _, err := tx.Exec(ctx, "UPDATE core_patients SET last_event_id = $2, last_request_id = $3 WHERE id = $1", id, evID, by.RequestID); err != nil {
		return err
	}
	p := make(map[string]any, len(payload)+1)
	for k, v := range payload {
		p[k] = v
	}
	ds := rowdigest.Digests{}
	if err := ds.Stamp(ctx, tx, rowdigest.Patients, id.String(), evID); err != nil {
		return err
	}
	p[rowdigest.PayloadKey] = ds
	ev.Payload = p
	_, err = s.cfg.Recorder.Record(ctx, tx, ev)
	return err
}

// Refusals of an admission change that does not fit the patient's state. Each wraps
// ErrConflict, and carries a stable code (StateError.Code) for the caller to report.
var (
	// ErrPatientDischarged: the change needs an admitted patient (a transfer, a cancelled admission).
	ErrPatientDischarged = &StateError{Code: "patient_discharged", Text: "the patient is discharged"}
	// ErrPatientNotDischarged: the change needs a discharged patient (a re-admission, a cancelled discharge).
	ErrPatientNotDischarged = &StateError{Code: "patient_not_discharged", Text: "the patient is not discharged"}
	// ErrAdmissionHasObservations: an admission cannot be cancelled once observations were
	// stored for it (they would belong to no admission).
	ErrAdmissionHasObservations = &StateError{Code: "admission_has_observations", Text: "observations were stored since the admission"}
	// ErrAdmissionCancelled: the discharge ended a cancelled admission; there is no discharge to cancel.
	ErrAdmissionCancelled = &StateError{Code: "admission_cancelled", Text: "the admission was cancelled; there is no discharge to cancel"}
	// ErrAlreadyMember: the clinician is already on the care team in that role (JoinCareTeam).
	ErrAlreadyMember = &StateError{Code: "already_member", Text: "the clinician is already on the care team in this role"}
)

// StateError is a refused admission change: Code is stable, Text says why.
type StateError struct{ Code, Text string }

func (e *StateError) Error() string { return e.Text + " (" + e.Code + ")" }

// Is makes every StateError match ErrConflict too.
func (e *StateError) Is(target error) bool { return target == ErrConflict }

// patientState locks the patient's row and returns its admission state.
func patientState(ctx context.Context, tx pgx.Tx, id uuid.UUID) (admitted time.Time, discharged *time.Time, cancelled bool, err error) {
	err = tx.QueryRow(ctx, "SELECT admitted_at, discharged_at, admission_cancelled FROM core_patients WHERE id = $1 FOR UPDATE", id).Scan(&admitted, &discharged, &cancelled)
	if errors.Is(err, pgx.ErrNoRows) {
		err = fmt.Errorf("patient %s: %w", id, ErrNotFound)
	}
	return admitted, discharged, cancelled, err
}

// ReadmitPatient admits a discharged patient again (a new admission of the same patient
// record, from now) on a ward, audited as "patient.readmitted" (payload: the ward).
// ErrPatientNotDischarged if the patient is admitted; ErrNotFound for an unknown patient or
// ward. Rule monitoring resumes with the patient's next observations.
func (s *Service) ReadmitPatient(ctx context.Context, by audit.Event, id, wardID uuid.UUID) error {
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		_, dis, _, err := patientState(ctx, tx, id)
		if err != nil {
			return err
		}
		if dis == nil {
			return fmt.Errorf("readmit patient %s: %w", id, ErrPatientNotDischarged)
		}
		if _, err := tx.Exec(ctx, `UPDATE core_patients SET ward_id = $2, admitted_at = $3, discharged_at = NULL, admission_cancelled = false, updated_at = $3
			WHERE id = $1`, id, wardID, now); err != nil {
			return err
		}
		return s.recordPatient(ctx, tx, by, now, "patient.readmitted", id, map[string]any{"ward_id": wardID})
	})
	if isFKViolation(err) {
		return fmt.Errorf("readmit patient: ward %s: %w", wardID, ErrNotFound)
	}
	return err
}

// UpdatePatientPHI replaces a patient's names and birth date where phi gives them (an empty
// field keeps the stored value; the MRN, which identifies the patient, stays), resealed, audited as "patient.updated" with the names of the fields that
// changed (no PHI). It reports whether anything changed; nothing changed records nothing.
func (s *Service) UpdatePatientPHI(ctx context.Context, by audit.Event, id uuid.UUID, phi PatientPHI) (bool, error) {
	if s.cfg.PHI == nil {
		return false, fmt.Errorf("update patient: %w", ErrNoPHISealer)
	}
	if phi.BirthDate != "" {
		if _, err := time.Parse("2006-01-02", phi.BirthDate); err != nil {
			return false, fmt.Errorf("update patient: %w: birth date must be YYYY-MM-DD", ErrInvalidRequest)
		}
	}
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	changed := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		cur, err := s.scanPatient(ctx, tx.QueryRow(ctx, "SELECT "+patientCols+" FROM core_patients WHERE id = $1 FOR UPDATE", id))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("patient %s: %w", id, ErrNotFound)
		}
		if err != nil {
			return err
		}
		next := cur.PHI
		var fields []string
		for _, f := range []struct {
			name     string
			dst      *string
			from, to string
		}{{"given_name", &next.GivenName, cur.PHI.GivenName, phi.GivenName}, {"family_name", &next.FamilyName, cur.PHI.FamilyName, phi.FamilyName},
			{"birth_date", &next.BirthDate, cur.PHI.BirthDate, phi.BirthDate}} {
			if f.to != "" && f.from != f.to {
				*f.dst = f.to
				fields = append(fields, f.name)
			}
		}
		if len(fields) == 0 {
			return nil
		}
		plain, err := json.Marshal(next)
		if err != nil {
			return err
		}
		sealed, err := s.cfg.PHI.Seal(ctx, plain, phiAAD(id))
		clear(plain)
		if err != nil {
			return fmt.Errorf("seal: %w", err)
		}
		if _, err := tx.Exec(ctx, "UPDATE core_patients SET phi_sealed = $2, updated_at = $3 WHERE id = $1", id, sealed, now); err != nil {
			return err
		}
		changed = true
		return s.recordPatient(ctx, tx, by, now, "patient.updated", id, map[string]any{"fields": fields})
	})
	if err != nil {
		return false, fmt.Errorf("update patient: %w", err)
	}
	return changed, nil
}

// CancelAdmission undoes a patient's current admission (entered in error): the admission
// ends where it began (discharged at the admission time, so its period is empty), audited as
// "patient.admission_cancelled", then rule monitoring ends as at a discharge. Refused with
// ErrPatientDischarged if the patient is not admitted, ErrAdmissionHasObservations if any
// observation was stored for the patient since the admission.
func (s *Service) CancelAdmission(ctx context.Context, by audit.Event, id uuid.UUID) error {
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		adm, dis, _, err := patientState(ctx, tx, id)
		if err != nil {
			return err
		}
		if dis != nil {
			return fmt.Errorf("cancel admission of %s: %w", id, ErrPatientDischarged)
		}
		var some bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM core_uploads WHERE patient_id = $1 AND received_at >= $2 AND stored > 0)`,
			id, adm).Scan(&some); err != nil {
			return err
		}
		if some {
			return fmt.Errorf("cancel admission of %s: %w", id, ErrAdmissionHasObservations)
		}
		if _, err := tx.Exec(ctx, "UPDATE core_patients SET discharged_at = admitted_at, admission_cancelled = true, updated_at = $2 WHERE id = $1", id, now); err != nil {
			return err
		}
		return s.recordPatient(ctx, tx, by, now, "patient.admission_cancelled", id, map[string]any{"admitted_at": adm})
	})
	if err != nil || s.cfg.Release == nil {
		return err
	}
	if rerr := s.cfg.Release.ReleasePatient(context.WithoutCancel(ctx), by, id, "admission cancelled"); rerr != nil {
		s.cfg.Logger.ErrorContext(ctx, "core: end rule monitoring of a patient whose admission was cancelled",
			slog.String("patient_id", id.String()), slog.String("error", rerr.Error()))
	}
	return nil
}

// CancelDischarge undoes a patient's discharge (entered in error): the admission goes on,
// audited as "patient.discharge_cancelled"; rule monitoring resumes with the patient's next
// observations. Refused with ErrPatientNotDischarged if the patient is admitted,
// ErrAdmissionCancelled if the "discharge" was a cancelled admission.
func (s *Service) CancelDischarge(ctx context.Context, by audit.Event, id uuid.UUID) error {
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		_, dis, cancelled, err := patientState(ctx, tx, id)
		if err != nil {
			return err
		}
		switch {
		case dis == nil:
			return fmt.Errorf("cancel discharge of %s: %w", id, ErrPatientNotDischarged)
		case cancelled:
			return fmt.Errorf("cancel discharge of %s: %w", id, ErrAdmissionCancelled)
		}
		if _, err := tx.Exec(ctx, "UPDATE core_patients SET discharged_at = NULL, updated_at = $2 WHERE id = $1", id, now); err != nil {
			return err
		}
		return s.recordPatient(ctx, tx, by, now, "patient.discharge_cancelled", id, map[string]any{"discharged_at": *dis})
	})
}
