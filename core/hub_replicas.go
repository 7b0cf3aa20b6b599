package core

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/internal/pglisten"
)

// hubChannel is the NOTIFY channel on which replicas announce new core_hub_events rows.
const hubChannel = "vigil_hub"

// liveChannel is the NOTIFY channel on which replicas announce the observations they stored
// (the live events, which are not persisted as events: the observations are).
const liveChannel = "vigil_hub_live"

// maxLivePayload bounds one live notification's payload (PostgreSQL's limit is 8000 bytes).
const maxLivePayload = 7000

// maxLiveQueue bounds the announcements waiting for the database; beyond it the oldest are
// dropped (live events are not replayed anyway: a chart that misses one reloads).
const maxLiveQueue = 10000

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
	// Listener is the process's shared notification listener (internal/pglisten), on which
	// the relay follows vigil_hub and vigil_hub_live; the caller runs it. Nil: the relay
	// listens on a connection of its own (stopped by Close).
	Listener *pglisten.Listener
}

// HubRelay makes a Hub one stream across the replicas of a database: the events the Hub
// publishes (live observations excepted) are appended to core_hub_events and every replica's
// relay reads them back in id order and delivers them to its own subscribers, with the
// database id as the event id. A stream therefore sees every replica's alarms, in the same
// order everywhere, and resumes on any replica after its Last-Event-ID.
//
// Live observation events (TypeObservations) are not written as events: the replica that
// stored an upload announces it (patient, upload, time range) on NOTIFY vigil_hub_live, and a
// replica with a subscriber to that patient's observations reads them from core_observations
// and delivers them, like its own, without an id of their own and without replay.
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

	token string    // this relay's name in live announcements (its own are skipped)
	live  []liveRef // announcements waiting for the database; guarded by mu

	// What the listener hands the reader (guarded by mu): a catch-up is due (an event was
	// announced, or LISTEN (re)took effect), and the other replicas' live announcements.
	notified bool
	heard    []string
	readWake chan struct{}
}

// maxHeard bounds the live announcements waiting for the reader; beyond it the oldest are
// dropped (as maxLiveQueue: live events are not replayed).
const maxHeard = 1000

// liveRef announces one upload's newly stored observations to the other replicas.
type liveRef struct {
	patient, upload uuid.UUID
	device          string
	at              time.Time // when they were published
	from, to        time.Time // the observations' effective times, first and last
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
	r := &HubRelay{cfg: cfg, hub: hub, wake: make(chan struct{}, 1), readWake: make(chan struct{}, 1), local: map[uint64]bool{}, token: uuid.NewString()}
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
	l := cfg.Listener
	if l == nil {
		l = pglisten.New(cfg.Pool, cfg.Logger)
		r.wg.Add(1)
		go func() { defer r.wg.Done(); _ = l.Run(lctx) }()
	}
	r.listenOn(l)
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
	if err := r.flushLive(ctx); err != nil {
		r.cfg.Logger.WarnContext(ctx, "core: hub relay: live announcements dropped", slog.String("error", err.Error()))
	}
	return r.flush(ctx) // events published during the stop
}

func (r *HubRelay) write(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		}
		if err := r.flushLive(ctx); err != nil && ctx.Err() == nil {
			r.cfg.Logger.WarnContext(ctx, "core: hub relay: live announcements dropped", slog.String("error", err.Error()))
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

// listenOn follows the hub's channels on l. On the listener's goroutine only the reader is
// signalled: an event announced (or LISTEN (re)taking effect: announcements may have been
// missed) makes it catch up, a live announcement is queued for it.
func (r *HubRelay) listenOn(l *pglisten.Listener) {
	signal := func(live string) {
		r.mu.Lock()
		if r.stopped {
			r.mu.Unlock()
			return
		}
		if live == "" {
			r.notified = true
		} else {
			if len(r.heard) >= maxHeard {
				r.heard = r.heard[1:]
			}
			r.heard = append(r.heard, live)
		}
		r.mu.Unlock()
		select {
		case r.readWake <- struct{}{}:
		default:
		}
	}
	catchUp := func() { signal("") }
	l.Handle(hubChannel, pglisten.Handler{Notify: func(string) { catchUp() }, Listening: catchUp})
	own := r.token + "\n" // this relay's own announcements (encodeLive's first line) are skipped
	l.Handle(liveChannel, pglisten.Handler{Notify: func(p string) {
		if p != "" && !strings.HasPrefix(p, own) {
			signal(p)
		}
	}})
}

// read delivers new rows on notification and at least every Poll, and the live
// announcements of the other replicas.
func (r *HubRelay) read(ctx context.Context) {
	var caught time.Time
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.readWake:
		}
		r.mu.Lock()
		notified, heard := r.notified, r.heard
		r.notified, r.heard = false, nil
		r.mu.Unlock()
		for _, p := range heard {
			r.deliverLive(ctx, p)
		}
		// Events on every hub notification and at least every Poll; live announcements
		// (many, one per group of uploads) do not each cost a read of the events.
		if notified || time.Since(caught) >= r.cfg.Poll {
			if err := r.catchUp(ctx); err != nil && ctx.Err() == nil {
				r.cfg.Logger.WarnContext(ctx, "core: hub relay: read", slog.String("error", err.Error()))
			}
			caught = time.Now()
		}
		t.Reset(max(r.cfg.Poll-time.Since(caught), time.Millisecond))
	}
}

// announceObservations tells the other replicas, through the relay if there is one, that
// upload stored obs (not empty) for patient.
func (h *Hub) announceObservations(patient, upload uuid.UUID, obs []Observation) {
	r := h.relay.Load()
	if r == nil {
		return
	}
	ref := liveRef{patient: patient, upload: upload, device: obs[0].DeviceID, at: h.cfg.Now(), from: obs[0].EffectiveAt, to: obs[0].EffectiveAt}
	for _, o := range obs[1:] {
		if o.EffectiveAt.Before(ref.from) {
			ref.from = o.EffectiveAt
		}
		if o.EffectiveAt.After(ref.to) {
			ref.to = o.EffectiveAt
		}
	}
	r.mu.Lock()
	if len(r.live) >= maxLiveQueue {
		r.live = r.live[1:] // the database is away: the oldest live event is lost, as designed
	}
	r.live = append(r.live, ref)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// flushLive sends the queued announcements, as few notifications as fit, in one round trip.
// They are not retried: a live event is not replayed anyway.
func (r *HubRelay) flushLive(ctx context.Context) error {
	r.mu.Lock()
	refs := r.live
	r.live = nil
	r.mu.Unlock()
	if len(refs) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	for _, p := range encodeLive(r.token, refs) {
		b.Queue(`SELECT pg_notify($1, $2)`, liveChannel, p)
	}
	if err := r.cfg.Pool.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("core: hub relay: %d live announcement(s): %w", len(refs), err)
	}
	return nil
}

// encodeLive writes announcements as notification payloads of at most maxLivePayload bytes:
// a first line naming the sender, then one line per upload: patient, upload, published,
// first and last effective time (µs since the epoch), the device id quoted.
func encodeLive(token string, refs []liveRef) []string {
	var out []string
	var sb strings.Builder
	for _, ref := range refs {
		line := fmt.Sprintf("%s %s %d %d %d %s\n", ref.patient, ref.upload, ref.at.UnixMicro(), ref.from.UnixMicro(), ref.to.UnixMicro(),
			strconv.Quote(ref.device))
		if sb.Len() > 0 && sb.Len()+len(line) > maxLivePayload {
			out = append(out, sb.String())
			sb.Reset()
		}
		if sb.Len() == 0 {
			sb.WriteString(token + "\n")
		}
		sb.WriteString(line)
	}
	if sb.Len() > 0 {
		out = append(out, sb.String())
	}
	return out
}

// decodeLive reads a payload of encodeLive; malformed lines are skipped.
func decodeLive(payload string) (token string, refs []liveRef) {
	lines := strings.Split(strings.TrimSuffix(payload, "\n"), "\n")
	token = lines[0]
	for _, l := range lines[1:] {
		f := strings.SplitN(l, " ", 6)
		if len(f) != 6 {
			continue
		}
		var ref liveRef
		var err error
		var us [3]int64
		if ref.patient, err = uuid.Parse(f[0]); err != nil {
			continue
		}
		if ref.upload, err = uuid.Parse(f[1]); err != nil {
			continue
		}
		ok := true
		for i := range us {
			if us[i], err = strconv.ParseInt(f[2+i], 10, 64); err != nil {
				ok = false
			}
		}
		if ref.device, err = strconv.Unquote(f[5]); err != nil || !ok {
			continue
		}
		ref.at, ref.from, ref.to = time.UnixMicro(us[0]).UTC(), time.UnixMicro(us[1]).UTC(), time.UnixMicro(us[2]).UTC()
		refs = append(refs, ref)
	}
	return token, refs
}

// deliverLive delivers the observations another replica announced to this replica's
// subscribers that want them, read from the database in one round trip.
func (r *HubRelay) deliverLive(ctx context.Context, payload string) {
	token, refs := decodeLive(payload)
	if token == r.token {
		return
	}
	var want []liveRef
	b := &pgx.Batch{}
	for _, ref := range refs {
		if !r.hub.wants(TypeObservations, ref.patient, true) {
			continue
		}
		want = append(want, ref)
		// from and to are whole µs (PostgreSQL keeps µs); one more µs for a rounded time.
		b.Queue(`SELECT patient_id, code, value, effective_at, flags & 1 = 1, upload_id FROM core_observations
			WHERE patient_id = $1 AND effective_at >= $2 AND effective_at <= $3 AND upload_id = $4
			ORDER BY effective_at, code`, ref.patient, ref.from, ref.to.Add(time.Microsecond), ref.upload)
	}
	if len(want) == 0 {
		return
	}
	res := r.cfg.Pool.SendBatch(ctx, b)
	defer res.Close()
	for _, ref := range want {
		rows, err := res.Query()
		if err != nil {
			r.cfg.Logger.WarnContext(ctx, "core: hub relay: live observations", slog.String("error", err.Error()))
			return
		}
		obs, err := pgx.CollectRows(rows, scanObservation)
		if err != nil {
			r.cfg.Logger.WarnContext(ctx, "core: hub relay: live observations", slog.String("error", err.Error()))
			return
		}
		if len(obs) == 0 {
			continue
		}
		for i := range obs {
			obs[i].DeviceID = ref.device
		}
		data, err := observationsEventData(ref.upload, obs)
		if err != nil {
			continue
		}
		r.hub.deliver(Event{Type: TypeObservations, PatientID: ref.patient, At: ref.at, Data: data}, 0, true)
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
