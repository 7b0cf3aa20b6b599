package core

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// hubChannel is the NOTIFY channel on which replicas announce new core_hub_events rows.
const hubChannel = "vigil_hub"

// hubWriteLock is the advisory lock held by the writer of core_hub_events until it commits,
// so that ids commit in increasing order and a reader that has id n never misses a smaller one.
const hubWriteLock = 7466110

// HubRelayConfig configures a HubRelay. Zero values take the documented defaults.
type HubRelayConfig struct {
	// Pool is the installation's database. Required.
	Pool *pgxpool.Pool
	// Poll is how often the relay reads new events when no notification came. Default 1 s.
	Poll time.Duration
	// Keep is how long events stay in core_hub_events. Default 24 h.
	Keep time.Duration
	// Logger reports failures. Default slog.Default().
	Logger *slog.Logger
}

// HubRelay makes a Hub one stream across the replicas of a database: the events the Hub
// publishes (live observations excepted) are appended to core_hub_events and every replica's
// relay reads them back in id order and delivers them to its own subscribers, with the
// database id as the event id. A stream therefore sees every replica's alarms, in the same
// order everywhere, and resumes on any replica after its Last-Event-ID. Live observation
// events stay on the replica that stored them.
type HubRelay struct {
	cfg HubRelayConfig
	hub *Hub

	wmu     sync.Mutex // a flush, from its transaction to marking its ids local, excludes a read
	mu      sync.Mutex
	queue   []Event
	wake    chan struct{}
	local   map[uint64]bool // ids this replica wrote and has not read back yet
	stop    context.CancelFunc
	wg      sync.WaitGroup
	pruned  time.Time
	stopped bool
}

// StartHubRelay loads the most recent events into the Hub's replay buffer (so that streams
// resume across a restart or on another replica), then relays until Close.
func StartHubRelay(ctx context.Context, hub *Hub, cfg HubRelayConfig) (*HubRelay, error) {
	if cfg.Pool == nil || hub == nil {
		return nil, errors.New("core: HubRelayConfig.Pool and a Hub are required")
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	if cfg.Keep <= 0 {
		cfg.Keep = 24 * time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &HubRelay{cfg: cfg, hub: hub, wake: make(chan struct{}, 1), local: map[uint64]bool{}}
	rows, err := cfg.Pool.Query(ctx, `SELECT id, type, patient_id, at, data FROM
		(SELECT id, type, patient_id, at, data FROM core_hub_events ORDER BY id DESC LIMIT $1) t ORDER BY id`, hub.cfg.Replay)
	if err != nil {
		return nil, fmt.Errorf("core: hub relay: %w", err)
	}
	evs, err := collectHubEvents(rows)
	if err != nil {
		return nil, fmt.Errorf("core: hub relay: %w", err)
	}
	var last uint64
	if err := cfg.Pool.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM core_hub_events`).Scan(&last); err != nil {
		return nil, fmt.Errorf("core: hub relay: %w", err)
	}
	// From now on the Hub's ids are the database's.
	hub.mu.Lock()
	hub.ring, hub.head = nil, 0
	hub.seq.Store(0)
	hub.mu.Unlock()
	for _, ev := range evs {
		hub.deliver(ev, ev.ID, true)
	}
	if hub.seq.Load() < last {
		hub.seq.Store(last)
	}
	hub.relay.Store(r)
	lctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	r.stop = stop
	r.wg.Add(2)
	go func() { defer r.wg.Done(); r.write(lctx) }()
	go func() { defer r.wg.Done(); r.read(lctx) }()
	return r, nil
}

// send queues ev for the database (Publish never blocks).
func (r *HubRelay) send(ev Event) {
	r.mu.Lock()
	r.queue = append(r.queue, ev)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Close writes what is queued, stops relaying and detaches from the Hub.
func (r *HubRelay) Close(ctx context.Context) error {
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		return nil
	}
	r.stopped = true
	r.mu.Unlock()
	r.stop()
	r.wg.Wait()
	r.hub.relay.CompareAndSwap(r, nil)
	return r.flush(ctx) // events published during the stop
}

func (r *HubRelay) write(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		}
		for {
			err := r.flush(ctx)
			if err == nil || ctx.Err() != nil {
				break
			}
			r.cfg.Logger.WarnContext(ctx, "core: hub relay: write", slog.String("error", err.Error()))
			select {
			case <-ctx.Done():
				return
			case <-time.After(r.cfg.Poll):
			}
		}
	}
}

// flush appends the queued events in one transaction under the write lock.
func (r *HubRelay) flush(ctx context.Context) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.mu.Lock()
	evs := r.queue
	r.queue = nil
	r.mu.Unlock()
	if len(evs) == 0 {
		return nil
	}
	var ids []uint64
	err := pgx.BeginFunc(ctx, r.cfg.Pool, func(tx pgx.Tx) error {
		ids = ids[:0]
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, hubWriteLock); err != nil {
			return err
		}
		for _, ev := range evs {
			var id uint64
			if err := tx.QueryRow(ctx, `INSERT INTO core_hub_events (type, patient_id, at, data) VALUES ($1,$2,$3,$4) RETURNING id`,
				ev.Type, ev.PatientID, ev.At, nullJSON(ev.Data)).Scan(&id); err != nil {
				return err
			}
			ids = append(ids, id)
		}
		_, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, hubChannel)
		return err
	})
	if err != nil {
		r.mu.Lock()
		r.queue = append(evs, r.queue...) // retried, in order
		r.mu.Unlock()
		return fmt.Errorf("core: hub relay: %w", err)
	}
	r.mu.Lock()
	for _, id := range ids {
		r.local[id] = true
	}
	r.mu.Unlock()
	select { // read them back at once
	case r.wake <- struct{}{}:
	default:
	}
	return nil
}

func nullJSON(b json.RawMessage) any {
	if len(b) == 0 {
		return nil
	}
	return string(b)
}

// read delivers new rows on notification and at least every Poll.
func (r *HubRelay) read(ctx context.Context) {
	for ctx.Err() == nil {
		if err := r.listen(ctx); err != nil && ctx.Err() == nil {
			r.cfg.Logger.WarnContext(ctx, "core: hub relay: listen", slog.String("error", err.Error()))
			select {
			case <-ctx.Done():
			case <-time.After(r.cfg.Poll):
			}
		}
	}
}

func (r *HubRelay) listen(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, r.cfg.Pool.Config().ConnConfig.Copy())
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+hubChannel); err != nil {
		return err
	}
	for {
		if err := r.catchUp(ctx); err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, r.cfg.Poll)
		_, err := conn.WaitForNotification(wctx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
	}
}

// catchUp delivers the rows after the last id the Hub has, in id order.
func (r *HubRelay) catchUp(ctx context.Context) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	for {
		rows, err := r.cfg.Pool.Query(ctx, `SELECT id, type, patient_id, at, data FROM core_hub_events WHERE id > $1 ORDER BY id LIMIT 1000`,
			int64(r.hub.seq.Load()))
		if err != nil {
			return err
		}
		evs, err := collectHubEvents(rows)
		if err != nil {
			return err
		}
		for _, ev := range evs {
			r.mu.Lock()
			mine := r.local[ev.ID]
			delete(r.local, ev.ID)
			r.mu.Unlock()
			r.hub.deliver(ev, ev.ID, !mine)
		}
		if len(evs) < 1000 {
			break
		}
	}
	if time.Since(r.pruned) > 10*time.Minute {
		r.pruned = time.Now()
		if _, err := r.cfg.Pool.Exec(ctx, `DELETE FROM core_hub_events WHERE created_at < now() - make_interval(secs => $1)`, r.cfg.Keep.Seconds()); err != nil {
			return err
		}
	}
	return nil
}

func collectHubEvents(rows pgx.Rows) ([]Event, error) {
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var ev Event
		var id int64
		var pid uuid.UUID
		var data []byte
		if err := rows.Scan(&id, &ev.Type, &pid, &ev.At, &data); err != nil {
			return nil, err
		}
		ev.ID, ev.PatientID, ev.Data = uint64(id), pid, data
		ev.At = ev.At.UTC()
		out = append(out, ev)
	}
	return out, rows.Err()
}
