package chain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/leaf"
)

// ShipperConfig configures the shipper. Zero values take the documented defaults.
type ShipperConfig struct {
	// Pool is the installation's database. Required.
	Pool *pgxpool.Pool
	// Log is the Trillian log to ship to. Required.
	Log *Log
	// BatchSize is the most events sealed into one batch. Default 5000.
	BatchSize int
	// Window is how often the shipper seals the pending events into batches (the batching
	// window). Default 200ms.
	Window time.Duration
	// PollInterval is how often the shipper looks for the integration of submitted batches
	// (Trillian's sequencer integrates them on its own schedule). Default 50ms.
	PollInterval time.Duration
	// MaxBackoff bounds the wait between retries while the log or database fails. The wait
	// starts at Window and doubles. Default 10s.
	MaxBackoff time.Duration
	// RequeueAfter resubmits a batch not integrated after this long (harmless: a batch is one
	// leaf however often it is sent). Default 30s.
	RequeueAfter time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Logger receives failures and recoveries. Default slog.Default().
	Logger *slog.Logger
	// Backlog receives the backlog after every pass (the audit.Outbox). Optional.
	Backlog BacklogSink
	// Keys checks each event's authentication tag before it is sealed: an event without a
	// valid one is never logged (it is marked refused, and an incident is raised). Nil ships
	// without checking (load tools only; Service always sets it when Config.EventKeys is set).
	Keys *audit.SessionKeys
}

// BacklogSink receives the shipper's view of the outbox's backlog after every pass;
// *audit.Outbox is one (it decides from it when callers must push back).
type BacklogSink interface {
	// ReportBacklog MUST return quickly and MUST NOT call back into the shipper.
	ReportBacklog(audit.Backlog)
}

// ShipperStats is the shipper's view of its backlog, as of its last pass.
type ShipperStats struct {
	PendingEvents       int64         `json:"pending_events"`        // in the outbox, not yet sealed
	OldestPendingAge    time.Duration `json:"oldest_pending_age_ns"` // age of the oldest of them
	UnintegratedBatches int64         `json:"unintegrated_batches"`  // sealed, not yet in the log
	OldestBatchAge      time.Duration `json:"oldest_batch_age_ns"`   // age of the oldest of them
	ShippedEvents       int64         `json:"shipped_events"`        // integrated by this process
	LastPass            time.Time     `json:"last_pass"`
	LastError           string        `json:"last_error,omitempty"`
	ConsecutiveFailures int           `json:"consecutive_failures"`
}

// Lag is how far behind the log is: the age of the oldest event not yet integrated.
func (s ShipperStats) Lag() time.Duration { return max(s.OldestPendingAge, s.OldestBatchAge) }

// Shipper moves outbox rows into the Trillian log: it seals the pending events of each
// window into batches (one Trillian leaf each), submits them, and stores the leaf index and
// log root each batch was integrated under. It is idempotent and safe to run in several
// processes at once (rows are claimed with SKIP LOCKED; a batch is one leaf however often
// it is sent).
type Shipper struct {
	cfg ShipperConfig

	mu    sync.Mutex
	stats ShipperStats

	stop   context.CancelFunc
	done   chan struct{}
	wake   chan struct{}
	closed sync.Once

	lastFull atomic.Bool // the last pass sealed a full batch
}

// NewShipper checks cfg and returns a stopped shipper: call Start, or drive it with Step.
func NewShipper(cfg ShipperConfig) (*Shipper, error) {
	if cfg.Pool == nil || cfg.Log == nil {
		return nil, errors.New("audit shipper: Pool and Log are required")
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 5000
	}
	if cfg.Window <= 0 {
		cfg.Window = 200 * time.Millisecond
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 50 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 10 * time.Second
	}
	if cfg.RequeueAfter <= 0 {
		cfg.RequeueAfter = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Shipper{cfg: cfg, wake: make(chan struct{}, 1)}, nil
}

// Start runs the shipper in the background until Close.
func (s *Shipper) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	s.done = make(chan struct{})
	go s.loop(ctx)
}

// Kick asks a started shipper for a pass now rather than at the end of its window.
func (s *Shipper) Kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Close stops the background loop and waits for it. Events not yet shipped stay in the
// outbox for the next start.
func (s *Shipper) Close(ctx context.Context) error {
	s.closed.Do(func() {
		if s.stop == nil {
			return
		}
		s.stop()
		select {
		case <-s.done:
		case <-ctx.Done():
		}
	})
	return nil
}

// Stats returns the backlog as of the last pass.
func (s *Shipper) Stats() ShipperStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

func (s *Shipper) loop(ctx context.Context) {
	defer close(s.done)
	wait := s.cfg.Window
	for {
		busy, err := s.Step(ctx)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil:
			wait = min(max(wait*2, s.cfg.Window), s.cfg.MaxBackoff)
			s.cfg.Logger.WarnContext(ctx, "audit shipper pass failed; retrying", slog.String("error", err.Error()),
				slog.Duration("retry_in", wait))
		case busy && s.lastFull.Load():
			wait = 0 // a full batch was sealed: more may wait, next pass at once
		case busy:
			wait = min(s.cfg.PollInterval, s.cfg.Window) // batches wait for the sequencer
		default:
			wait = s.cfg.Window
		}
		if wait == 0 {
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-s.wake:
			t.Stop()
		}
	}
}

// Step is one pass of the shipper: seal pending events into batches, submit the batches
// not yet in the log, and record the integration of those that now are. It reports whether
// work remained (a full batch was sealed, or batches wait for integration). The background
// loop calls it every window; tests call it directly.
func (s *Shipper) Step(ctx context.Context) (busy bool, err error) {
	defer func() { s.finishPass(ctx, err) }()
	full, err := s.seal(ctx)
	s.lastFull.Store(full)
	if err != nil {
		return false, err
	}
	if err := s.submit(ctx); err != nil {
		return false, err
	}
	waiting, err := s.integrate(ctx)
	if err != nil {
		return false, err
	}
	return full || waiting > 0, nil
}

// seal claims up to BatchSize pending events per batch, for at most a few batches, and
// reports whether the last batch was full (more may be waiting).
func (s *Shipper) seal(ctx context.Context) (full bool, err error) {
	for range 8 {
		n, err := s.sealOne(ctx)
		if err != nil {
			return false, err
		}
		if n < s.cfg.BatchSize {
			return false, nil
		}
	}
	return true, nil
}

func (s *Shipper) sealOne(ctx context.Context) (int, error) {
	var n int
	err := pgx.BeginFunc(ctx, s.cfg.Pool, func(tx pgx.Tx) error {
		// Only what the leaf is made of: no plaintext, no payload.
		rows, err := tx.Query(ctx, `SELECT `+leafColumns+` FROM audit_events WHERE batch_id IS NULL
			AND refused_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED`, s.cfg.BatchSize)
		if err != nil {
			return fmt.Errorf("select pending events: %w", err)
		}
		all, err := pgx.CollectRows(rows, scanLeafEvent)
		if err != nil {
			return fmt.Errorf("read pending events: %w", err)
		}
		n = len(all)
		evs, err := s.authentic(ctx, tx, all)
		if err != nil {
			return err
		}
		if len(evs) == 0 {
			return nil
		}
		n2 := len(evs)
		bid, err := uuid.NewV7()
		if err != nil {
			return err
		}
		hashes := make([]leaf.Hash, n2)
		ids := make([]byte, 0, 16*n2)
		hashBytes := make([]byte, 0, leaf.HashSize*n2)
		idList := make([]uuid.UUID, n2)
		idx := make([]int32, n2)
		for i := range evs {
			ev := &evs[i]
			enc, err := ev.Encode()
			if err != nil {
				return fmt.Errorf("event %s: %w", uuid.UUID(ev.ID), err)
			}
			h := leaf.LeafHash(enc)
			hashes[i] = h
			ids = append(ids, ev.ID[:]...)
			hashBytes = append(hashBytes, h[:]...)
			idList[i] = ev.ID
			idx[i] = int32(i)
		}
		root, err := leaf.RootOf(hashes)
		if err != nil {
			return err
		}
		bl := leaf.Batch{ID: bid, Count: uint32(n2), Root: root}
		if _, err := tx.Exec(ctx, `INSERT INTO audit_batches (id, sealed_at, count, root, event_ids, event_hashes, leaf_value)
			VALUES ($1,$2,$3,$4,$5,$6,$7)`, bid, s.cfg.Now(), n2, root[:], ids, hashBytes, bl.Encode()); err != nil {
			return fmt.Errorf("insert batch: %w", err)
		}
		if _, err := tx.Exec(ctx, `UPDATE audit_events e SET batch_id = $1, batch_index = u.idx
			FROM unnest($2::uuid[], $3::int[]) AS u(id, idx) WHERE e.id = u.id`, bid, idList, idx); err != nil {
			return fmt.Errorf("assign events to batch: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("audit shipper: seal batch: %w", err)
	}
	return n, nil
}

// authentic returns the events of evs whose authentication tag is valid. The others are
// marked refused (never logged) and raise one incident per pass; verify names each of them.
func (s *Shipper) authentic(ctx context.Context, tx pgx.Tx, evs []leafRow) ([]leafRow, error) {
	if s.cfg.Keys == nil {
		return evs, nil
	}
	ok := evs[:0:0]
	var refused []uuid.UUID
	var first string
	for i := range evs {
		err := s.cfg.Keys.Check(ctx, tx, &evs[i].Event, evs[i].mac)
		switch {
		case err == nil:
			ok = append(ok, evs[i])
		case errors.Is(err, audit.ErrUnauthenticated):
			if first == "" {
				first = fmt.Sprintf("event %s: %v", uuid.UUID(evs[i].ID), err)
			}
			refused = append(refused, evs[i].ID)
		default:
			return nil, fmt.Errorf("check event authentication: %w", err)
		}
	}
	if len(refused) == 0 {
		return ok, nil
	}
	now := s.cfg.Now()
	if _, err := tx.Exec(ctx, `UPDATE audit_events SET refused_at = $1 WHERE id = ANY($2)`, now, refused); err != nil {
		return nil, fmt.Errorf("refuse unauthenticated events: %w", err)
	}
	detail := fmt.Sprintf("%d event(s) without a valid authentication tag refused (never logged); first: %s", len(refused), first)
	if _, err := tx.Exec(ctx, `INSERT INTO audit_incidents (at, kind, detail) VALUES ($1, 'unauthenticated_event', $2)`, now, detail); err != nil {
		return nil, fmt.Errorf("record incident: %w", err)
	}
	s.cfg.Logger.ErrorContext(ctx, "audit shipper: refused unauthenticated events (forged or altered in the database)",
		slog.Int("events", len(refused)), slog.String("first", first))
	return ok, nil
}

// submit queues every batch not yet in the log that was never sent, or was sent longer than
// RequeueAfter ago.
func (s *Shipper) submit(ctx context.Context) error {
	now := s.cfg.Now()
	rows, err := s.cfg.Pool.Query(ctx, `SELECT id, leaf_value FROM audit_batches WHERE leaf_index IS NULL
		AND (queued_at IS NULL OR queued_at < $1) ORDER BY seq LIMIT 1000`, now.Add(-s.cfg.RequeueAfter))
	if err != nil {
		return fmt.Errorf("audit shipper: select batches to submit: %w", err)
	}
	type pending struct {
		id    uuid.UUID
		value []byte
	}
	ps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (pending, error) {
		var p pending
		return p, r.Scan(&p.id, &p.value)
	})
	if err != nil {
		return fmt.Errorf("audit shipper: read batches to submit: %w", err)
	}
	var sent []uuid.UUID
	var qerr error
	for _, p := range ps {
		bl, err := leaf.DecodeBatch(p.value)
		if err != nil {
			return fmt.Errorf("audit shipper: batch %s: %w", p.id, err)
		}
		if err := s.cfg.Log.Queue(ctx, bl); err != nil {
			qerr = fmt.Errorf("audit shipper: submit batch %s: %w", p.id, err)
			break
		}
		sent = append(sent, p.id)
	}
	if len(sent) > 0 {
		if _, err := s.cfg.Pool.Exec(ctx, `UPDATE audit_batches SET queued_at = $1 WHERE id = ANY($2)`, now, sent); err != nil {
			return fmt.Errorf("audit shipper: mark batches submitted: %w", err)
		}
	}
	return qerr
}

// integrate reads the log's new leaves since the last integrated one, and stores for each of
// our batches its leaf index and the root it was integrated under. It returns how many
// batches still wait for integration.
func (s *Shipper) integrate(ctx context.Context) (int64, error) {
	var waiting, next int64
	if err := s.cfg.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM audit_batches WHERE leaf_index IS NULL),
		(SELECT coalesce(max(leaf_index)+1, 0) FROM audit_batches)`).Scan(&waiting, &next); err != nil {
		return 0, fmt.Errorf("audit shipper: read integration state: %w", err)
	}
	if waiting == 0 {
		return 0, nil
	}
	root, err := s.cfg.Log.LatestRoot(ctx)
	if err != nil {
		return waiting, fmt.Errorf("audit shipper: %w", err)
	}
	if uint64(next) >= root.Size {
		return waiting, nil
	}
	values, err := s.cfg.Log.Leaves(ctx, next, int64(root.Size)-next)
	if err != nil {
		return waiting, fmt.Errorf("audit shipper: %w", err)
	}
	ids := make([]uuid.UUID, 0, len(values))
	idx := make([]int64, 0, len(values))
	for i, v := range values {
		bl, err := leaf.DecodeBatch(v)
		if err != nil {
			s.cfg.Logger.ErrorContext(ctx, "audit shipper: foreign leaf in the audit log", slog.Int64("leaf_index", next+int64(i)))
			continue
		}
		ids = append(ids, bl.ID)
		idx = append(idx, next+int64(i))
	}
	tag, err := s.cfg.Pool.Exec(ctx, `UPDATE audit_batches b SET leaf_index = u.idx, integrated_at = $1,
			tree_size = $2, tree_root = $3
		FROM unnest($4::uuid[], $5::bigint[]) AS u(id, idx) WHERE b.id = u.id AND b.leaf_index IS NULL`,
		s.cfg.Now(), int64(root.Size), root.Hash[:], ids, idx)
	if err != nil {
		return waiting, fmt.Errorf("audit shipper: store integration: %w", err)
	}
	var events int64
	_ = s.cfg.Pool.QueryRow(ctx, `SELECT coalesce(sum(count),0) FROM audit_batches WHERE id = ANY($1)`, ids).Scan(&events)
	s.mu.Lock()
	s.stats.ShippedEvents += events
	s.mu.Unlock()
	return waiting - tag.RowsAffected(), nil
}

func (s *Shipper) finishPass(ctx context.Context, passErr error) {
	var st ShipperStats
	now := s.cfg.Now()
	var oldestEv, oldestBatch *time.Time
	err := s.cfg.Pool.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM audit_events WHERE batch_id IS NULL AND refused_at IS NULL),
		(SELECT recorded_at FROM audit_events WHERE batch_id IS NULL AND refused_at IS NULL ORDER BY seq LIMIT 1),
		(SELECT count(*) FROM audit_batches WHERE leaf_index IS NULL),
		(SELECT sealed_at FROM audit_batches WHERE leaf_index IS NULL ORDER BY seq LIMIT 1)`).Scan(
		&st.PendingEvents, &oldestEv, &st.UnintegratedBatches, &oldestBatch)
	if err == nil {
		if oldestEv != nil {
			st.OldestPendingAge = max(now.Sub(*oldestEv), 0)
		}
		if oldestBatch != nil {
			st.OldestBatchAge = max(now.Sub(*oldestBatch), 0)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.stats
	st.ShippedEvents = prev.ShippedEvents
	st.LastPass = now
	if passErr == nil {
		passErr = err
	}
	if passErr != nil {
		st.LastError = passErr.Error()
		st.ConsecutiveFailures = prev.ConsecutiveFailures + 1
	} else if prev.ConsecutiveFailures > 0 {
		s.cfg.Logger.InfoContext(ctx, "audit shipper recovered", slog.Int("failed_passes", prev.ConsecutiveFailures))
	}
	if err != nil { // the backlog could not be read: keep the previous figures
		st.PendingEvents, st.OldestPendingAge = prev.PendingEvents, prev.OldestPendingAge
		st.UnintegratedBatches, st.OldestBatchAge = prev.UnintegratedBatches, prev.OldestBatchAge
	}
	s.stats = st
	if s.cfg.Backlog != nil {
		s.cfg.Backlog.ReportBacklog(st.Backlog())
	}
}

// Backlog is the part of the stats that decides push-back (audit.PushbackPolicy).
func (s ShipperStats) Backlog() audit.Backlog {
	return audit.Backlog{PendingEvents: s.PendingEvents, OldestPendingAge: s.OldestPendingAge,
		OldestBatchAge: s.OldestBatchAge, ConsecutiveFailures: s.ConsecutiveFailures, LastPass: s.LastPass}
}
