package core

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/vigilhealth/vigil/audit"
)

// This file is the meeting point of core and devices: devices verifies a signed upload and
// hands core a Batch; core validates, normalizes and stores it with its audit event in one
// transaction, then runs the clinical rules.

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
}

// Batch is one verified upload's samples for one patient.
type Batch struct {
	PatientID  uuid.UUID
	Provenance Provenance
	Samples    []Sample
}

// TxHook runs inside the ingest transaction after the samples and the upload's audit event are
// written and before commit; devices uses it to advance the device's sequence number and store
// the upload's receipt atomically with the data. An error from the hook rolls everything back.
type TxHook func(ctx context.Context, tx pgx.Tx, r IngestResult) error

// IngestResult says what Ingest stored.
type IngestResult struct {
	AuditEventID uuid.UUID // the upload's audit event (in the same transaction)
	Stored       int       // observations stored
	Flagged      int       // observations stored but flagged as artifacts
	Duplicates   int       // samples not stored: repeated within the batch, or already stored (first stored wins)
}

// Ingest validates, normalizes and stores one batch: the observations (pgx CopyFrom), the
// upload's provenance row and its audit event ("upload.accepted") are written in one
// transaction, then hook runs in that transaction, then it commits, then the rules run on the
// new observations. A bad sample rejects the whole batch with a *BatchError (nothing stored,
// the rejection audited as "upload.rejected"); an unknown patient is ErrUnknownPatient.
//
// Duplicates are handled deterministically: samples of one batch with the same code and
// effective time collapse when equal and reject the batch when they differ; a sample whose
// (patient, code, effective time) is already stored is not stored again (the first stored
// wins) and is counted in IngestResult.Duplicates. Samples may arrive out of order: storage
// does not care, and the rules receive each patient's new observations in time order.
func (s *Service) Ingest(ctx context.Context, b Batch, hook TxHook) (IngestResult, error) {
	res, err := s.IngestMany(ctx, []Batch{b}, []TxHook{hook})
	if err != nil {
		var me *IngestManyError
		if errors.As(err, &me) {
			err = me.Err
		}
		return IngestResult{}, err
	}
	return res[0], nil
}

// IngestMany is Ingest for many batches in ONE transaction (group commit): hooks[i] (may be
// nil) belongs to batches[i]; results come back in the same order. Any invalid batch or hook
// error rolls back all of them and is returned as an *IngestManyError naming the batch.
func (s *Service) IngestMany(ctx context.Context, batches []Batch, hooks []TxHook) ([]IngestResult, error) {
	if len(hooks) != 0 && len(hooks) != len(batches) {
		return nil, fmt.Errorf("ingest: %w: %d hooks for %d batches", ErrInvalidRequest, len(hooks), len(batches))
	}
	if len(batches) == 0 {
		return nil, nil
	}
	now := s.cfg.Now()
	norm := make([]normalized, len(batches))
	for i := range batches {
		n, err := s.normalize(batches[i], now)
		if err != nil {
			s.stats.rejected.Add(1)
			s.auditRejection(ctx, batches[i], now, err)
			return nil, &IngestManyError{Index: i, Err: err}
		}
		norm[i] = n
	}
	if err := s.checkPatients(ctx, batches); err != nil {
		var me *IngestManyError
		if errors.As(err, &me) {
			s.stats.rejected.Add(1)
			s.auditRejection(ctx, batches[me.Index], now, me.Err)
		}
		return nil, err
	}
	// Partitions for every day touched (created outside the ingest transaction).
	obsDays, upDays := map[time.Time]bool{}, map[time.Time]bool{}
	received := make([]time.Time, len(batches))
	for i := range batches {
		received[i] = batches[i].Provenance.ReceivedAt
		if received[i].IsZero() {
			received[i] = now
		}
		received[i] = received[i].UTC().Truncate(time.Microsecond)
		upDays[day(received[i])] = true
		var last time.Time
		for _, o := range norm[i].obs {
			if d := day(o.EffectiveAt); !d.Equal(last) {
				obsDays[d] = true
				last = d
			}
		}
	}
	if err := s.ensurePartitions(ctx, "core_observations", keys(obsDays)); err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	if err := s.ensurePartitions(ctx, "core_uploads", keys(upDays)); err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}

	// Upload ids = audit event ids, made here so observations can point at them.
	results := make([]IngestResult, len(batches))
	for i := range batches {
		id, err := uuid.NewV7()
		if err != nil {
			return nil, fmt.Errorf("ingest: upload id: %w", err)
		}
		results[i].AuditEventID = id
		for k := range norm[i].obs {
			norm[i].obs[k].UploadID = id
		}
	}
	// A patient in several batches of the group: the first batch's sample wins.
	dropCrossBatchDuplicates(batches, norm)

	var stored [][]Observation
	// Fast path: plain COPY. If some sample is already stored (a retransmission), the COPY
	// fails on the primary key and the whole transaction is redone on the slow path, which
	// skips stored samples. Nothing else has run in the transaction at that point.
	slow := false
	tx := func(tx pgx.Tx) error {
		var err error
		stored, err = s.insertObservations(ctx, tx, norm, slow)
		if err != nil {
			return err
		}
		rows := make([][]any, len(batches))
		for i := range batches {
			b := &batches[i]
			r := &results[i]
			r.Flagged = 0
			r.Stored = len(stored[i])
			for _, o := range stored[i] {
				if o.Artifact {
					r.Flagged++
				}
			}
			r.Duplicates = len(b.Samples) - r.Stored
			rows[i] = []any{pgtype.UUID{Bytes: r.AuditEventID, Valid: true}, received[i], pgtype.UUID{Bytes: b.PatientID, Valid: true}, b.Provenance.DeviceID, b.Provenance.KeyID,
				b.Provenance.UploadHash[:], int64(b.Provenance.Sequence), b.Provenance.Transport,
				len(b.Samples), r.Stored, r.Flagged, r.Duplicates}
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"core_uploads"},
			[]string{"id", "received_at", "patient_id", "device_id", "key_id", "upload_hash", "sequence",
				"transport", "samples", "stored", "flagged", "duplicates"}, pgx.CopyFromRows(rows)); err != nil {
			return fmt.Errorf("store uploads: %w", err)
		}
		evs := make([]audit.Event, len(batches))
		for i := range batches {
			b := &batches[i]
			r := results[i]
			evs[i] = audit.Event{
				ID:         r.AuditEventID,
				Time:       now,
				Actor:      audit.Actor{Kind: audit.ActorDevice, ID: b.Provenance.DeviceID, AuthMethod: "device-signature"},
				Action:     "upload.accepted",
				Object:     audit.Object{Type: "upload", ID: hex.EncodeToString(b.Provenance.UploadHash[:])},
				Outcome:    audit.OutcomeSuccess,
				RequestID:  b.Provenance.RequestID,
				SourceAddr: b.Provenance.SourceAddr,
				Payload: uploadPayload{PatientID: b.PatientID, KeyID: b.Provenance.KeyID, Sequence: b.Provenance.Sequence,
					Transport: b.Provenance.Transport, Samples: len(b.Samples), Stored: r.Stored, Flagged: r.Flagged,
					Duplicates: r.Duplicates},
			}
		}
		if _, err := audit.RecordAll(ctx, s.cfg.Recorder, tx, evs); err != nil {
			return err
		}
		for i := range hooks {
			if hooks[i] == nil {
				continue
			}
			if err := hooks[i](ctx, tx, results[i]); err != nil {
				return &IngestManyError{Index: i, Err: err}
			}
		}
		return nil
	}
	err := pgx.BeginFunc(ctx, s.pool, tx)
	if errors.Is(err, errAlreadyStored) {
		slow = true
		err = pgx.BeginFunc(ctx, s.pool, tx)
	}
	if err != nil {
		var me *IngestManyError
		if errors.As(err, &me) {
			return nil, err
		}
		return nil, fmt.Errorf("ingest: %w", err)
	}
	var total, kept, dups int64
	for i := range batches {
		total += int64(len(batches[i].Samples))
		kept += int64(results[i].Stored)
		dups += int64(results[i].Duplicates)
	}
	s.stats.batches.Add(int64(len(batches)))
	s.stats.samples.Add(total)
	s.stats.stored.Add(kept)
	s.stats.duplicates.Add(dups)
	s.publishObservations(batches, stored, results)
	s.evaluate(ctx, batches, stored)
	return results, nil
}

// publishObservations sends each batch's newly stored observations to the hub as a live
// TypeObservations event, only when some subscriber asked for that patient's observations.
func (s *Service) publishObservations(batches []Batch, stored [][]Observation, results []IngestResult) {
	for i := range batches {
		if len(stored[i]) == 0 || !s.hub.Wants(TypeObservations, batches[i].PatientID) {
			continue
		}
		data, err := json.Marshal(struct {
			UploadID     uuid.UUID     `json:"upload_id"`
			Observations []Observation `json:"observations"`
		}{results[i].AuditEventID, stored[i]})
		if err != nil {
			continue
		}
		s.hub.Publish(Event{Type: TypeObservations, PatientID: batches[i].PatientID, Data: data})
	}
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
func dropCrossBatchDuplicates(batches []Batch, norm []normalized) {
	count := map[uuid.UUID]int{}
	for i := range batches {
		count[batches[i].PatientID]++
	}
	var seen map[obsKey]bool
	for i := range batches {
		if count[batches[i].PatientID] < 2 {
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

// auditRejection records a rejected upload in its own transaction (nothing else is written).
func (s *Service) auditRejection(ctx context.Context, b Batch, now time.Time, cause error) {
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
		Time:    now,
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

// evaluate runs the rules on the committed observations, one patient at a time, in time
// order. It runs even if the caller's context is cancelled: the data is committed and its
// alarms must not be lost. A failure is retried once, then logged and counted.
func (s *Service) evaluate(ctx context.Context, batches []Batch, stored [][]Observation) {
	if s.cfg.Rules == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	byPatient := map[uuid.UUID][]Observation{}
	var order []uuid.UUID
	for i := range batches {
		for _, o := range stored[i] {
			if _, ok := byPatient[o.PatientID]; !ok {
				order = append(order, o.PatientID)
			}
			byPatient[o.PatientID] = append(byPatient[o.PatientID], o)
		}
	}
	run := func(p uuid.UUID) {
		obs := byPatient[p]
		sort.SliceStable(obs, func(i, j int) bool { return obs[i].EffectiveAt.Before(obs[j].EffectiveAt) })
		err := s.cfg.Rules.Evaluate(ctx, p, obs)
		if err != nil {
			err = s.cfg.Rules.Evaluate(ctx, p, obs)
		}
		if err != nil {
			s.stats.ruleErrors.Add(1)
			s.cfg.Logger.ErrorContext(ctx, "core: rules failed on committed observations",
				slog.String("patient_id", p.String()), slog.Int("observations", len(obs)), slog.String("error", err.Error()))
		}
	}
	// Patients are independent: evaluate them on a few goroutines, so that one patient's alarm
	// transaction (a commit) does not delay the alarms of the others in the group.
	workers := min(s.cfg.RuleWorkers, len(order))
	if workers <= 1 {
		for _, p := range order {
			run(p)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(order) {
					return
				}
				run(order[i])
			}
		}()
	}
	wg.Wait()
}
