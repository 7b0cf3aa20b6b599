package core

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/obsdigest"
)

// This file is the path of one upload through core. Devices owns the upload transaction and
// calls core three times around it:
//
//	p, err := core.Prepare(ctx, batch)        // validate and normalize; nothing written
//	tx := begin
//	stored, err := core.Store(ctx, tx, ps)    // observations, provenance rows and the
//	                                          // upload.accepted audit events, in tx
//	… devices writes its own rows in tx, commits, answers the device …
//	err = core.Publish(ctx, stored)           // live stream + hand-off to the rules
//
// A rejection is the caller's to audit (it knows the transport and the actor). Ingest and
// IngestMany do the same three steps for callers without a transaction of their own, and
// audit their rejections themselves.

// Sample is one measured value as a device sent it (before validation and normalization).
type Sample struct {
	Code  string    // LOINC code, e.g. "8867-4" (heart rate)
	Value float64   // in Unit
	Unit  string    // UCUM unit as sent, e.g. "/min", "[degF]"
	Time  time.Time // effective time of the measurement
}

// Provenance says where a batch came from, so each stored observation can be traced back to
// the signed upload that carried it.
type Provenance struct {
	DeviceID   string    // registry id of the sending device
	KeyID      string    // device key id (with version) that signed the upload
	UploadHash [32]byte  // SHA-256 of the upload's canonical bytes
	Sequence   uint64    // the upload's sequence number
	ReceivedAt time.Time // when the server accepted it
	Transport  string    // "http" or "mqtt"
	RequestID  string    // the transport's request or message id, recorded in the audit event
	SourceAddr string    // the peer address the upload came from, recorded in the audit event
	// ChartedBy is the person who entered the samples by hand (Chart); zero for a device's
	// upload. It is the actor of the upload's audit event.
	ChartedBy audit.Actor
}

// Batch is one verified upload's samples for one patient.
type Batch struct {
	PatientID  uuid.UUID
	Provenance Provenance
	Samples    []Sample
	// AssignedSince is when the sending device was assigned to PatientID (its current
	// assignment); PreviousUntil is when its last assignment to another patient ended. A
	// sample taken before AssignedSince by more than Config.AssignmentSkew, or before
	// PreviousUntil, is refused (outside_assignment): readings are attributed by the time
	// they were taken, never to the device's next patient. Zero: not known to the caller
	// (tools, imports), no check.
	AssignedSince time.Time
	PreviousUntil time.Time
}

// IngestResult says what Store stored for one batch.
type IngestResult struct {
	AuditEventID uuid.UUID // the upload's audit event (in the same transaction) and its upload id
	Stored       int       // observations stored
	Flagged      int       // observations stored but flagged as artifacts
	Duplicates   int       // samples not stored: repeated within the batch, or already stored (first stored wins)
	// OutsideAssignment: samples not stored because they were taken when the device was not
	// the patient's (Batch.AssignedSince, PreviousUntil); the rest of the batch is stored.
	// The upload's audit event names them (index and code outside_assignment).
	OutsideAssignment int
}

// Prepared is a batch that passed Prepare: validated, normalized, its patient known, its
// partitions created. Store writes it.
type Prepared struct {
	batch    Batch
	obs      []Observation // sorted by (code, effective time), in-batch duplicates removed
	received time.Time
	outside  []SampleError // samples refused as outside_assignment
}

// Batch returns the batch as given to Prepare.
func (p *Prepared) Batch() Batch { return p.batch }

// Stored is what Store wrote for one prepared batch: its counts and upload id, and the
// observations newly stored (a sample already stored is not stored again).
type Stored struct {
	IngestResult
	PatientID    uuid.UUID
	Observations []Observation
}

// Prepare validates and normalizes b for Store: every sample is checked (known LOINC code,
// accepted unit, possible value, effective time neither in the future nor past retention)
// and converted to its canonical unit; the patient must exist; the daily partitions the batch
// needs are created (outside any transaction). Nothing is written and nothing is audited: a
// rejection — a *BatchError (ErrInvalidBatch with each bad sample) or a *PatientError
// (ErrUnknownPatient), both with a stable ErrorCode — is the caller's to audit.
//
// Duplicates are handled deterministically: samples of one batch with the same code and
// effective time collapse when equal and reject the batch when they differ.
func (s *Service) Prepare(ctx context.Context, b Batch) (*Prepared, error) {
	now := s.cfg.Now()
	n, err := s.normalize(b, now)
	if err != nil {
		s.stats.rejected.Add(1)
		return nil, err
	}
	if err := s.checkPatients(ctx, []Batch{b}); err != nil {
		var me *IngestManyError
		if errors.As(err, &me) {
			s.stats.rejected.Add(1)
			return nil, me.Err
		}
		return nil, err
	}
	received := b.Provenance.ReceivedAt
	if received.IsZero() {
		received = now
	}
	received = received.UTC().Truncate(time.Microsecond)
	obsDays := map[time.Time]bool{}
	var last time.Time
	for _, o := range n.obs {
		if d := day(o.EffectiveAt); !d.Equal(last) {
			obsDays[d] = true
			last = d
		}
	}
	if err := s.ensurePartitions(ctx, "core_observations", keys(obsDays)); err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	if err := s.ensurePartitions(ctx, "core_uploads", []time.Time{day(received)}); err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	return &Prepared{batch: b, obs: n.obs, received: received, outside: n.outside}, nil
}

// Store writes prepared batches inside tx, the caller's transaction: the observations (one
// COPY), one provenance row per batch (the upload) and one "upload.accepted" audit event per
// batch (Config.Recorder, in tx). It neither commits nor rolls back tx; after tx commits the
// caller MUST hand the result to Publish, which is what brings the observations to the rules.
//
// A sample whose (patient, code, effective time) is already stored is not stored again (the
// first stored wins) and counts in Duplicates; a patient in several batches of ps keeps the
// first batch's sample. Store does not modify ps, so a failed group may be stored again,
// whole or in parts, in a new transaction.
func (s *Service) Store(ctx context.Context, tx pgx.Tx, ps []*Prepared) ([]Stored, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	now := s.cfg.Now()
	norm := make([]normalized, len(ps))
	out := make([]Stored, len(ps))
	for i, p := range ps {
		// Upload id = audit event id, made here so observations can point at it.
		id, err := uuid.NewV7()
		if err != nil {
			return nil, fmt.Errorf("store uploads: upload id: %w", err)
		}
		out[i].AuditEventID, out[i].PatientID = id, p.batch.PatientID
		own := make([]Observation, len(p.obs))
		for k, o := range p.obs {
			o.UploadID = id
			own[k] = o
		}
		norm[i].obs = own
	}
	// A patient in several batches of the group: the first batch's sample wins.
	dropCrossBatchDuplicates(ps, norm)

	// Fast path: plain COPY. If some sample is already stored (a retransmission), the COPY
	// fails on the primary key: back to a savepoint and take the slow path, which skips
	// stored samples.
	sp, err := tx.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("store observations: savepoint: %w", err)
	}
	stored, err := s.insertObservations(ctx, sp, norm, false)
	if errors.Is(err, errAlreadyStored) {
		if err := sp.Rollback(ctx); err != nil {
			return nil, fmt.Errorf("store observations: %w", err)
		}
		stored, err = s.insertObservations(ctx, tx, norm, true)
	} else if err == nil {
		err = sp.Commit(ctx)
	}
	if err != nil {
		return nil, err
	}
	rows := make([][]any, len(ps))
	evs := make([]audit.Event, len(ps))
	for i, p := range ps {
		b := &p.batch
		r := &out[i]
		r.Observations = stored[i]
		r.Stored = len(stored[i])
		for _, o := range stored[i] {
			if o.Artifact {
				r.Flagged++
			}
		}
		r.OutsideAssignment = len(p.outside)
		r.Duplicates = len(b.Samples) - r.Stored - r.OutsideAssignment
		// The stored observations' time range: a feed finds them by (patient, time) through
		// the primary key (interop/hl7/outbound).
		var first, last pgtype.Timestamptz
		for _, o := range stored[i] {
			if !first.Valid || o.EffectiveAt.Before(first.Time) {
				first = pgtype.Timestamptz{Time: o.EffectiveAt, Valid: true}
			}
			if !last.Valid || o.EffectiveAt.After(last.Time) {
				last = pgtype.Timestamptz{Time: o.EffectiveAt, Valid: true}
			}
		}
		rows[i] = []any{pgtype.UUID{Bytes: r.AuditEventID, Valid: true}, p.received, pgtype.UUID{Bytes: b.PatientID, Valid: true}, b.Provenance.DeviceID, b.Provenance.KeyID,
			b.Provenance.UploadHash[:], int64(b.Provenance.Sequence), b.Provenance.Transport,
			len(b.Samples), r.Stored, r.Flagged, r.Duplicates, r.OutsideAssignment, first, last}
		evs[i] = audit.Event{
			ID:         r.AuditEventID,
			Time:       now,
			Actor:      uploadActor(b.Provenance),
			Action:     "upload.accepted",
			Object:     audit.Object{Type: "upload", ID: hex.EncodeToString(b.Provenance.UploadHash[:])},
			Outcome:    audit.OutcomeSuccess,
			RequestID:  b.Provenance.RequestID,
			SourceAddr: b.Provenance.SourceAddr,
			Payload: uploadPayload{PatientID: b.PatientID, KeyID: b.Provenance.KeyID, Sequence: b.Provenance.Sequence,
				Transport: b.Provenance.Transport, Samples: len(b.Samples), Stored: r.Stored, Flagged: r.Flagged,
				Duplicates: r.Duplicates, OutsideAssignment: r.OutsideAssignment, Refused: p.outside,
				Commitment: commitObservations(stored[i])},
		}
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"core_uploads"},
		[]string{"id", "received_at", "patient_id", "device_id", "key_id", "upload_hash", "sequence",
			"transport", "samples", "stored", "flagged", "duplicates", "outside_assignment", "first_effective_at", "last_effective_at"},
		pgx.CopyFromRows(rows)); err != nil {
		return nil, fmt.Errorf("store uploads: %w", err)
	}
	if _, err := audit.RecordAll(ctx, s.cfg.Recorder, tx, evs); err != nil {
		return nil, err
	}
	if err := s.forward(ctx, tx, out); err != nil {
		return nil, err
	}
	return out, nil
}

// Publish hands what a committed Store wrote onward: each batch's new observations to the
// live stream (SSE subscribers who asked for the patient), and each patient's new
// observations, in time order, to the rules engine through Config.Handoff. It MUST be called
// once for every Store whose transaction committed, and only then. When the rules fall
// behind, Publish waits (the hand-off never drops an observation), and so it does, for a
// bounded time, while the observations Config.Forward sent to another replica wait there
// (Pacer); it returns ctx's error if ctx ends first, so callers pass a context that outlives
// their client.
func (s *Service) Publish(ctx context.Context, stored []Stored) error {
	var total, kept, dups int64
	for i := range stored {
		total += int64(stored[i].Stored + stored[i].Duplicates)
		kept += int64(stored[i].Stored)
		dups += int64(stored[i].Duplicates)
	}
	s.stats.batches.Add(int64(len(stored)))
	s.stats.samples.Add(total)
	s.stats.stored.Add(kept)
	s.stats.duplicates.Add(dups)
	s.publishObservations(stored)
	pacer, _ := s.cfg.Forward.(Pacer)
	if s.cfg.Handoff == nil && pacer == nil {
		return nil
	}
	batches := committedByPatient(stored)
	if pacer != nil { // another replica's inbox is deep: wait as for a full hand-off
		pacer.Pace(ctx, batches)
	}
	if s.cfg.Handoff == nil {
		return nil
	}
	return s.cfg.Handoff.Submit(ctx, batches...)
}

// Ingest validates, normalizes and stores one batch in a transaction of its own, then
// publishes it: Prepare, Store, commit, Publish, for callers without a transaction of their
// own (tools, tests). A bad sample rejects the whole batch with a *BatchError (nothing
// stored, the rejection audited as "upload.rejected"); an unknown patient is
// ErrUnknownPatient (audited too). Samples may arrive out of order: storage does not care,
// and the rules receive each patient's new observations in time order. The hand-off to the
// rules happens even if ctx is cancelled once the data is committed.
func (s *Service) Ingest(ctx context.Context, b Batch) (IngestResult, error) {
	res, err := s.IngestMany(ctx, []Batch{b})
	if err != nil {
		var me *IngestManyError
		if errors.As(err, &me) {
			err = me.Err
		}
		return IngestResult{}, err
	}
	return res[0], nil
}

// IngestMany is Ingest for many batches in ONE transaction (group commit); results come back
// in the order of batches. An invalid batch stores nothing of any batch and is returned as
// an *IngestManyError naming it.
func (s *Service) IngestMany(ctx context.Context, batches []Batch) ([]IngestResult, error) {
	if len(batches) == 0 {
		return nil, nil
	}
	ps := make([]*Prepared, len(batches))
	for i, b := range batches {
		p, err := s.Prepare(ctx, b)
		if err != nil {
			var ce interface{ ErrorCode() string }
			if errors.As(err, &ce) {
				s.auditRejection(ctx, b, err)
			}
			return nil, &IngestManyError{Index: i, Err: err}
		}
		ps[i] = p
	}
	var stored []Stored
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		stored, err = s.Store(ctx, tx, ps)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	if err := s.Publish(context.WithoutCancel(ctx), stored); err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	out := make([]IngestResult, len(stored))
	for i := range stored {
		out[i] = stored[i].IngestResult
	}
	return out, nil
}

// publishObservations sends each batch's newly stored observations to the hub as a live
// TypeObservations event, only when some subscriber asked for that patient's observations.
// With several replicas (a HubRelay) each batch is also announced to the other replicas, whose
// subscribers to the patient's observations then read them from the database (hub_replicas.go).
func (s *Service) publishObservations(stored []Stored) {
	for i := range stored {
		st := &stored[i]
		if len(st.Observations) == 0 {
			continue
		}
		s.hub.announceObservations(st.PatientID, st.AuditEventID, st.Observations)
		if !s.hub.Wants(TypeObservations, st.PatientID) {
			continue
		}
		data, err := observationsEventData(st.AuditEventID, st.Observations)
		if err != nil {
			continue
		}
		s.hub.Publish(Event{Type: TypeObservations, PatientID: st.PatientID, Data: data})
	}
}

// observationsEventData is the data of a TypeObservations event: one upload's observations.
func observationsEventData(upload uuid.UUID, obs []Observation) (json.RawMessage, error) {
	return json.Marshal(struct {
		UploadID     uuid.UUID     `json:"upload_id"`
		Observations []Observation `json:"observations"`
	}{upload, obs})
}

type uploadPayload struct {
	PatientID  uuid.UUID `json:"patient_id"`
	KeyID      string    `json:"key_id"`
	Sequence   uint64    `json:"sequence"`
	Transport  string    `json:"transport"`
	Samples    int       `json:"samples"`
	Stored     int       `json:"stored"`
	Flagged    int       `json:"flagged"`
	Duplicates int       `json:"duplicates"`
	// OutsideAssignment and Refused: the samples refused as outside_assignment (the rest of
	// the upload is stored).
	OutsideAssignment int           `json:"outside_assignment,omitempty"`
	Refused           []SampleError `json:"refused,omitempty"`
	// The stored observations' values, committed to (audit/obsdigest): `vigil audit verify
	// --deep` recomputes it from core_observations and names a changed observation.
	obsdigest.Commitment
}

// commitObservations is the commitment of an upload's event to the observations it stored.
func commitObservations(stored []Observation) obsdigest.Commitment {
	rows := make([]obsdigest.Row, len(stored))
	for i, o := range stored {
		rows[i] = obsdigest.Row{PatientID: o.PatientID, Code: o.Code, EffectiveAt: o.EffectiveAt, Value: o.Value}
		if o.Artifact {
			rows[i].Flags = flagArtifact
		}
	}
	return obsdigest.Commit(rows)
}

func keys(m map[time.Time]bool) []time.Time {
	out := make([]time.Time, 0, len(m))
	for d := range m {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	return out
}

type obsKey struct {
	patient uuid.UUID
	code    string
	at      int64
}

// dropCrossBatchDuplicates removes, for a patient present in several batches of one group,
// samples already carried by an earlier batch of the group (same code and time).
func dropCrossBatchDuplicates(ps []*Prepared, norm []normalized) {
	count := map[uuid.UUID]int{}
	for _, p := range ps {
		count[p.batch.PatientID]++
	}
	var seen map[obsKey]bool
	for i, p := range ps {
		if count[p.batch.PatientID] < 2 {
			continue
		}
		if seen == nil {
			seen = map[obsKey]bool{}
		}
		kept := norm[i].obs[:0]
		for _, o := range norm[i].obs {
			k := obsKey{o.PatientID, o.Code, o.EffectiveAt.UnixMicro()}
			if seen[k] {
				continue
			}
			seen[k] = true
			kept = append(kept, o)
		}
		norm[i].obs = kept
	}
}

var obsColumns = []string{"patient_id", "code", "effective_at", "value", "flags", "upload_id"}

// obsSource streams observations of all batches to CopyFrom without building [][]any.
type obsSource struct {
	norm    []normalized
	b, k    int
	started bool
	row     [6]any
}

func (c *obsSource) Next() bool {
	if c.started {
		c.k++
	}
	c.started = true
	for c.b < len(c.norm) && c.k >= len(c.norm[c.b].obs) {
		c.b++
		c.k = 0
	}
	return c.b < len(c.norm)
}

func (c *obsSource) Values() ([]any, error) {
	o := &c.norm[c.b].obs[c.k]
	var flags int16
	if o.Artifact {
		flags = flagArtifact
	}
	// pgtype.UUID, not uuid.UUID: the latter goes through driver.Valuer (format, then parse).
	c.row = [6]any{pgtype.UUID{Bytes: o.PatientID, Valid: true}, o.Code, o.EffectiveAt, o.Value, flags,
		pgtype.UUID{Bytes: o.UploadID, Valid: true}}
	return c.row[:], nil
}

func (c *obsSource) Err() error { return nil }

// errAlreadyStored: the fast path's COPY met a sample already stored.
var errAlreadyStored = errors.New("some samples are already stored")

// insertObservations writes the observations of every batch and returns those stored, per
// batch. Fast path: one COPY; a primary-key violation (some sample already stored) is
// errAlreadyStored and aborts the transaction. Slow path: INSERT … ON CONFLICT DO NOTHING per
// batch, learning which samples were new.
func (s *Service) insertObservations(ctx context.Context, tx pgx.Tx, norm []normalized, slow bool) ([][]Observation, error) {
	out := make([][]Observation, len(norm))
	n := 0
	for i := range norm {
		n += len(norm[i].obs)
	}
	if n == 0 {
		return out, nil
	}
	if !slow {
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"core_observations"}, obsColumns, &obsSource{norm: norm})
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			return nil, errAlreadyStored
		}
		if err != nil {
			return nil, fmt.Errorf("store observations: %w", err)
		}
		for i := range norm {
			out[i] = norm[i].obs
		}
		return out, nil
	}
	// Slow path: some samples are already stored.
	for i := range norm {
		obs := norm[i].obs
		if len(obs) == 0 {
			continue
		}
		pids := make([]uuid.UUID, len(obs))
		codes := make([]string, len(obs))
		ats := make([]time.Time, len(obs))
		vals := make([]float64, len(obs))
		flags := make([]int16, len(obs))
		for k, o := range obs {
			pids[k], codes[k], ats[k], vals[k] = o.PatientID, o.Code, o.EffectiveAt, o.Value
			if o.Artifact {
				flags[k] = flagArtifact
			}
		}
		rows, err := tx.Query(ctx, `INSERT INTO core_observations (patient_id, code, effective_at, value, flags, upload_id)
			SELECT p, c, t, v, f, $6 FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::float8[], $5::int2[]) AS x(p, c, t, v, f)
			ON CONFLICT DO NOTHING RETURNING code, effective_at`, pids, codes, ats, vals, flags, obs[0].UploadID)
		if err != nil {
			return nil, fmt.Errorf("store observations: %w", err)
		}
		inserted := map[obsKey]bool{}
		for rows.Next() {
			var code string
			var at time.Time
			if err := rows.Scan(&code, &at); err != nil {
				rows.Close()
				return nil, fmt.Errorf("store observations: %w", err)
			}
			inserted[obsKey{code: code, at: at.UnixMicro()}] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("store observations: %w", err)
		}
		for _, o := range obs {
			if inserted[obsKey{code: o.Code, at: o.EffectiveAt.UnixMicro()}] {
				out[i] = append(out[i], o)
			}
		}
	}
	return out, nil
}

// checkPatients makes sure every batch's patient exists (ErrUnknownPatient otherwise).
func (s *Service) checkPatients(ctx context.Context, batches []Batch) error {
	var unknown []uuid.UUID
	for i := range batches {
		if _, ok := s.patients.Load(batches[i].PatientID); !ok {
			unknown = append(unknown, batches[i].PatientID)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	rows, err := s.pool.Query(ctx, "SELECT id FROM core_patients WHERE id = ANY($1)", unknown)
	if err != nil {
		return fmt.Errorf("ingest: look up patients: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return fmt.Errorf("ingest: look up patients: %w", err)
	}
	for _, id := range ids {
		s.patients.Store(id, true)
	}
	for i := range batches {
		if _, ok := s.patients.Load(batches[i].PatientID); !ok {
			return &IngestManyError{Index: i, Err: &PatientError{ID: batches[i].PatientID}}
		}
	}
	return nil
}

// PatientError is ErrUnknownPatient with the id (code "unknown_patient").
type PatientError struct{ ID uuid.UUID }

func (e *PatientError) Error() string        { return fmt.Sprintf("unknown patient %s", e.ID) }
func (e *PatientError) ErrorCode() string    { return "unknown_patient" }
func (e *PatientError) Is(target error) bool { return target == ErrUnknownPatient }

// auditRejection records a batch refused by IngestMany (group-committed: nothing else is
// written). The device path audits its rejections itself (devices).
func (s *Service) auditRejection(ctx context.Context, b Batch, cause error) {
	code := "invalid_batch"
	var ce interface{ ErrorCode() string }
	if errors.As(cause, &ce) {
		code = ce.ErrorCode()
	}
	var detail any
	var be *BatchError
	if errors.As(cause, &be) {
		detail = map[string]any{"patient_id": b.PatientID, "samples": len(b.Samples), "errors": be.Samples}
	} else {
		detail = map[string]any{"patient_id": b.PatientID, "samples": len(b.Samples), "error": cause.Error()}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, err := s.cfg.Recorder.RecordNow(ctx, audit.Event{
		Time:    s.cfg.Now(),
		Actor:   audit.Actor{Kind: audit.ActorDevice, ID: b.Provenance.DeviceID, AuthMethod: "device-signature"},
		Action:  "upload.rejected",
		Object:  audit.Object{Type: "upload", ID: hex.EncodeToString(b.Provenance.UploadHash[:])},
		Outcome: audit.OutcomeRejected,
		Reason:  code,
		Payload: detail,
	})
	if err != nil {
		s.cfg.Logger.ErrorContext(ctx, "core: audit of rejected upload failed", slog.String("code", code), slog.String("error", err.Error()))
	}
}

// uploadActor is who an upload's audit event names: the device, or the person who charted.
func uploadActor(p Provenance) audit.Actor {
	if p.ChartedBy.Kind != "" {
		return p.ChartedBy
	}
	return audit.Actor{Kind: audit.ActorDevice, ID: p.DeviceID, AuthMethod: "device-signature"}
}

// Chart stores observations a person enters by hand (a nurse charting the level of
// consciousness, a manual temperature) for a patient, through the same validation, storage,
// audit and hand-off to the rules as a device's upload: the audit event "upload.accepted"
// names by's actor, the upload's device id is "chart:<actor id>" and its transport "chart".
// Rejections are those of Ingest, audited the same way. Times are the samples' own; a zero
// time is refused (invalid_time).
func (s *Service) Chart(ctx context.Context, by audit.Event, patientID uuid.UUID, samples []Sample) (IngestResult, error) {
	actor := by.Actor
	if actor.ID == "" {
		actor.ID = "unknown"
	}
	if actor.Kind == "" {
		actor.Kind = audit.ActorUser
	}
	now := s.cfg.Now()
	h := sha256.New()
	fmt.Fprintf(h, "chart\x00%s\x00%s\x00%s\x00%d", patientID, actor.ID, by.RequestID, now.UnixNano())
	for _, smp := range samples {
		fmt.Fprintf(h, "\x00%s\x00%v\x00%s\x00%d", smp.Code, smp.Value, smp.Unit, smp.Time.UnixNano())
	}
	var hash [32]byte
	copy(hash[:], h.Sum(nil))
	return s.Ingest(ctx, Batch{PatientID: patientID, Samples: samples, Provenance: Provenance{
		DeviceID: "chart:" + actor.ID, KeyID: "user:" + actor.ID, UploadHash: hash, ReceivedAt: now,
		Transport: "chart", RequestID: by.RequestID, SourceAddr: by.SourceAddr, ChartedBy: actor}})
}
