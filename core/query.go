package core

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Query limits.
const (
	MaxRawPoints = 100000 // most observations one raw range query returns
	MaxBuckets   = 20000  // most buckets one downsampled query returns
)

// RangeQuery selects one patient's observations of one code in [From, To).
type RangeQuery struct {
	PatientID uuid.UUID
	Code      string
	From, To  time.Time
	// Artifacts includes observations flagged as artifacts (default: excluded).
	Artifacts bool
	// Limit bounds a raw query (default and maximum MaxRawPoints).
	Limit int
}

func (q *RangeQuery) check() error {
	if q.PatientID == uuid.Nil {
		return fmt.Errorf("%w: patient id is required", ErrInvalidRequest)
	}
	if _, ok := catalog[q.Code]; !ok {
		return fmt.Errorf("%w: unknown LOINC code %q", ErrInvalidRequest, q.Code)
	}
	if q.From.IsZero() || q.To.IsZero() || !q.From.Before(q.To) {
		return fmt.Errorf("%w: the range needs from < to", ErrInvalidRequest)
	}
	return nil
}

// Observations returns the observations of a range in ascending effective time (at most
// Limit: the oldest ones; ObservationsPage says whether the answer was cut). An unknown
// patient is ErrNotFound, never an empty answer.
func (s *Service) Observations(ctx context.Context, q RangeQuery) ([]Observation, error) {
	out, _, err := s.ObservationsPage(ctx, q)
	return out, err
}

// ObservationsPage is Observations, also reporting whether more observations of the range
// exist after the ones returned (the answer was cut at Limit): the caller continues from the
// last one's time, or narrows the range.
func (s *Service) ObservationsPage(ctx context.Context, q RangeQuery) (obs []Observation, truncated bool, err error) {
	if err := q.check(); err != nil {
		return nil, false, err
	}
	if err := s.patientExists(ctx, q.PatientID); err != nil {
		return nil, false, err
	}
	if q.Limit <= 0 || q.Limit > MaxRawPoints {
		q.Limit = MaxRawPoints
	}
	rows, err := s.pool.Query(ctx, `SELECT patient_id, code, value, effective_at, flags & 1 = 1, upload_id
		FROM core_observations WHERE patient_id = $1 AND code = $2 AND effective_at >= $3 AND effective_at < $4
		AND ($5 OR flags & 1 = 0) ORDER BY effective_at LIMIT $6`, q.PatientID, q.Code, q.From, q.To, q.Artifacts, q.Limit+1)
	if err != nil {
		return nil, false, fmt.Errorf("query observations: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanObservation)
	if err != nil {
		return nil, false, fmt.Errorf("query observations: %w", err)
	}
	if len(out) > q.Limit {
		return out[:q.Limit], true, nil
	}
	return out, false, nil
}

// patientExists is nil for a known patient, ErrNotFound otherwise.
func (s *Service) patientExists(ctx context.Context, id uuid.UUID) error {
	var ok bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM core_patients WHERE id = $1)`, id).Scan(&ok); err != nil {
		return fmt.Errorf("look up patient: %w", err)
	}
	if !ok {
		return fmt.Errorf("patient %s: %w", id, ErrNotFound)
	}
	return nil
}

// Bucket is one downsampled interval [Start, Start+bucket) of a series.
type Bucket struct {
	Start time.Time `json:"start"`
	Min   float64   `json:"min"`
	Max   float64   `json:"max"`
	Mean  float64   `json:"mean"`
	Count int64     `json:"count"`
}

// Series returns the range downsampled into buckets of width bucket (aligned to multiples of
// bucket since the Unix epoch, UTC), with min, max, mean and count per bucket; empty buckets
// are omitted. A range of several days at one-minute buckets is a few thousand rows computed
// by PostgreSQL from the (patient, code, time) index.
func (s *Service) Series(ctx context.Context, q RangeQuery, bucket time.Duration) ([]Bucket, error) {
	if err := q.check(); err != nil {
		return nil, err
	}
	if err := s.patientExists(ctx, q.PatientID); err != nil {
		return nil, err
	}
	if bucket < time.Second {
		return nil, fmt.Errorf("%w: bucket must be at least 1s", ErrInvalidRequest)
	}
	if n := q.To.Sub(q.From) / bucket; n > MaxBuckets {
		return nil, fmt.Errorf("%w: %d buckets, at most %d: use a wider bucket", ErrInvalidRequest, n, MaxBuckets)
	}
	rows, err := s.pool.Query(ctx, `SELECT date_bin($5 * interval '1 microsecond', effective_at, timestamptz '1970-01-01 00:00:00+00') AS b,
			min(value), max(value), avg(value), count(*)
		FROM core_observations WHERE patient_id = $1 AND code = $2 AND effective_at >= $3 AND effective_at < $4
		AND ($6 OR flags & 1 = 0) GROUP BY b ORDER BY b`,
		q.PatientID, q.Code, q.From, q.To, bucket.Microseconds(), q.Artifacts)
	if err != nil {
		return nil, fmt.Errorf("query series: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Bucket, error) {
		var b Bucket
		err := r.Scan(&b.Start, &b.Min, &b.Max, &b.Mean, &b.Count)
		b.Start = b.Start.UTC()
		return b, err
	})
	if err != nil {
		return nil, fmt.Errorf("query series: %w", err)
	}
	return out, nil
}

// ObservationsSince returns the patient's stored observations with effective time strictly
// after since, ascending (ties by code), artifacts included and flagged, with the sending
// device; at most limit (the newest) when limit > 0. It is what the rules engine replays to
// rebuild a patient's state after a restart. An unknown patient is an empty answer.
func (s *Service) ObservationsSince(ctx context.Context, patientID uuid.UUID, since time.Time, limit int) ([]Observation, error) {
	if limit <= 0 || limit > MaxRawPoints {
		limit = MaxRawPoints
	}
	rows, err := s.pool.Query(ctx, `SELECT patient_id, code, value, effective_at, flags & 1 = 1, upload_id FROM (
			SELECT * FROM core_observations WHERE patient_id = $1 AND effective_at > $2
			ORDER BY effective_at DESC, code DESC LIMIT $3) o ORDER BY effective_at, code`, patientID, since, limit)
	if err != nil {
		return nil, fmt.Errorf("observations since: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanObservation)
	if err != nil {
		return nil, fmt.Errorf("observations since: %w", err)
	}
	if len(out) == 0 {
		return out, nil
	}
	// The device of each upload. An upload is received no earlier than its samples' time
	// minus the allowed future skew, which prunes the upload partitions searched.
	ids := make([]uuid.UUID, 0, 8)
	for _, o := range out {
		if !slices.Contains(ids, o.UploadID) {
			ids = append(ids, o.UploadID)
		}
	}
	rows, err = s.pool.Query(ctx, "SELECT id, device_id FROM core_uploads WHERE id = ANY($1) AND received_at >= $2",
		ids, out[0].EffectiveAt.Add(-s.cfg.MaxFutureSkew-time.Second))
	if err != nil {
		return nil, fmt.Errorf("observations since: devices: %w", err)
	}
	dev := map[uuid.UUID]string{}
	var id uuid.UUID
	var d string
	if _, err := pgx.ForEachRow(rows, []any{&id, &d}, func() error { dev[id] = d; return nil }); err != nil {
		return nil, fmt.Errorf("observations since: devices: %w", err)
	}
	for i := range out {
		out[i].DeviceID = dev[out[i].UploadID]
	}
	return out, nil
}

// Upload is the provenance of one accepted upload.
type Upload struct {
	ID         uuid.UUID `json:"id"` // = its audit event id
	ReceivedAt time.Time `json:"received_at"`
	PatientID  uuid.UUID `json:"patient_id"`
	DeviceID   string    `json:"device_id"`
	KeyID      string    `json:"key_id"`
	UploadHash []byte    `json:"upload_hash"`
	Sequence   int64     `json:"sequence"`
	Transport  string    `json:"transport"`
	Samples    int       `json:"samples"`
	Stored     int       `json:"stored"`
	Flagged    int       `json:"flagged"`
	Duplicates int       `json:"duplicates"`
}

// UploadByID returns an upload's provenance, or ErrNotFound.
func (s *Service) UploadByID(ctx context.Context, id uuid.UUID) (Upload, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, received_at, patient_id, device_id, key_id, upload_hash, sequence,
		transport, samples, stored, flagged, duplicates FROM core_uploads WHERE id = $1`, id)
	if err != nil {
		return Upload{}, fmt.Errorf("get upload: %w", err)
	}
	u, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Upload])
	if err != nil {
		if err == pgx.ErrNoRows {
			return Upload{}, fmt.Errorf("upload %s: %w", id, ErrNotFound)
		}
		return Upload{}, fmt.Errorf("get upload: %w", err)
	}
	return u, nil
}

// Latest returns the patient's most recent observation of each code within the window before
// now (Config.Now), ordered by code: the current vital signs of a patient overview. A value
// flagged as an artifact is returned flagged (artifact true), never replaced by an older
// plausible one (a sustained extreme value must be seen); a sample stamped after now (a
// device clock ahead) is not current yet and is left out. window ≤ 0 means 24 hours. An
// unknown patient is ErrNotFound.
func (s *Service) Latest(ctx context.Context, patientID uuid.UUID, window time.Duration) ([]Observation, error) {
	if window <= 0 {
		window = 24 * time.Hour
	}
	if err := s.patientExists(ctx, patientID); err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT ON (code) patient_id, code, value, effective_at, flags & 1 = 1, upload_id
		FROM core_observations WHERE patient_id = $1 AND effective_at > $2 AND effective_at <= $3
		ORDER BY code, effective_at DESC`, patientID, now.Add(-window), now)
	if err != nil {
		return nil, fmt.Errorf("latest observations: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanObservation)
	if err != nil {
		return nil, fmt.Errorf("latest observations: %w", err)
	}
	return out, nil
}

// scanObservation reads a row of (patient_id, code, value, effective_at, artifact, upload_id),
// the column list every observation query selects, with the code's canonical unit.
func scanObservation(r pgx.CollectableRow) (Observation, error) {
	var o Observation
	err := r.Scan(&o.PatientID, &o.Code, &o.Value, &o.EffectiveAt, &o.Artifact, &o.UploadID)
	o.EffectiveAt = o.EffectiveAt.UTC()
	o.Unit = catalog[o.Code].Unit
	return o, err
}
