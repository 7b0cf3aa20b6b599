package outbound

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/internal/leader"
	"github.com/vigilhealth/vigil/interop/hl7"
	"github.com/vigilhealth/vigil/interop/storedfeed"
)

// Leader says whether this process leads the feed of a destination (internal/leader's
// Elector satisfies it). Step MUST take part in the election once (a follower tries to
// lead, a leader checks it still does); Leader MUST report the outcome; Close MUST give the
// leadership up.
type Leader interface {
	Step(ctx context.Context) error
	Leader() bool
	Close(ctx context.Context)
}

// FeedConfig configures a Feed.
type FeedConfig struct {
	// Core is the clinical core: its patients give PID and PV1. Required.
	Core *core.Service
	// Pool is the installation's database: the stored uploads, observations and alarms the
	// feed reads, and its cursor (interop_hl7_feed_cursors). Required.
	Pool *pgxpool.Pool
	// Sender delivers the messages; its Config.Name names the destination (the cursor's
	// key). Required. It should have KeepOnClose, so that messages not delivered when it
	// closes are sent again at the next start instead of dead-lettered.
	Sender *Sender
	// Facility is MSH-4; ReceivingApplication and ReceivingFacility MSH-5 and MSH-6.
	Facility, ReceivingApplication, ReceivingFacility string
	// Leader elects the one replica that feeds the destination. Default: an
	// internal/leader Elector named "hl7-oru:<destination>", stepped every LeaderInterval.
	Leader Leader
	// LeaderInterval is how often the election is stepped. Default 2 s.
	LeaderInterval time.Duration
	// PollInterval is how long the feed waits after a pass that found less than Batch
	// rows. Default 200 ms.
	PollInterval time.Duration
	// Batch bounds the rows read per pass. Default 1000.
	Batch int
	// HandOverWait bounds how long the feed waits, when it stops or loses the leadership,
	// for the messages in flight to be finished before it saves its cursor. Default 10 s.
	HandOverWait time.Duration
	// Logger receives what the feed could not send. Default slog.Default().
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Feed sends every stored upload's observations, and every change of an alarm's state or
// severity, as one ORU^R01 of its patient through the Sender (ordered per patient, ACKed,
// retried, dead-lettered, audited). It is a durable cursor over the stored rows, in the
// order their transactions committed (core_uploads.txid, alarms.feed_txid: migration
// 00371), read through interop/storedfeed (storedfeed.AlarmChanges): it reads only rows whose transaction is older than every transaction still
// running, so a row that commits late is never skipped; it saves, per destination, the
// position up to which every message is finished (delivered or dead-lettered), and resumes
// there after a restart or on another replica. Delivery is at least once: messages in
// flight when the process dies, or when the leadership moves, are sent again, with the same
// MSH-10 (derived from the row), so the receiver can recognise them.
//
// It runs on one replica per database and destination: the one that leads
// "hl7-oru:<destination>" (internal/leader); the others wait and take over when the leader
// goes.
type Feed struct {
	cfg     FeedConfig
	dest    string
	owned   bool // cfg.Leader made here
	skipped atomic.Int64

	ready     chan struct{}
	readyOnce sync.Once

	// The cursor: next is the position of the last row enqueued; pending the positions
	// enqueued and not yet finished, in order; saved the last position written.
	mu      sync.Mutex
	gen     int
	active  bool
	next    storedfeed.Position
	pending []*pendingPos
	done    storedfeed.Position // every position up to here is finished
	saved   storedfeed.Position

	// Patients opened in earlier passes, reused while their row's updated_at is unchanged
	// (only the feed's goroutine uses it).
	pcache map[uuid.UUID]core.Patient
}

type pendingPos struct {
	pos      storedfeed.Position
	finished bool
}

// NewFeed returns a feed; Run starts it.
func NewFeed(cfg FeedConfig) (*Feed, error) {
	if cfg.Core == nil || cfg.Sender == nil || cfg.Pool == nil {
		return nil, errors.New("outbound: FeedConfig.Core, Pool and Sender are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.LeaderInterval <= 0 {
		cfg.LeaderInterval = 2 * time.Second
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 200 * time.Millisecond
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 1000
	}
	if cfg.HandOverWait <= 0 {
		cfg.HandOverWait = 10 * time.Second
	}
	f := &Feed{cfg: cfg, dest: cfg.Sender.cfg.Name, ready: make(chan struct{})}
	if cfg.Leader == nil {
		el, err := leader.New(leader.Config{Pool: cfg.Pool, Name: "hl7-oru:" + f.dest, Interval: cfg.LeaderInterval, Logger: cfg.Logger})
		if err != nil {
			return nil, err
		}
		f.cfg.Leader, f.owned = el, true
	}
	return f, nil
}

// Skipped counts the rows the feed could not turn into a message (an unknown patient, a
// patient without an MRN); they are passed over.
func (f *Feed) Skipped() int64 { return f.skipped.Load() }

// Ready is closed once this feed leads and has its cursor: rows committed from then on are
// sent.
func (f *Feed) Ready() <-chan struct{} { return f.ready }

// Leading reports whether this feed leads its destination now.
func (f *Feed) Leading() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.active
}

// Run feeds the destination until ctx ends: while this process leads, it reads what follows
// its cursor, enqueues it and saves the cursor; when it stops leading (or ctx ends) it waits
// up to HandOverWait for the messages in flight and saves the cursor. It returns nil when
// ctx ends.
func (f *Feed) Run(ctx context.Context) error {
	bg := context.WithoutCancel(ctx)
	if f.owned {
		defer f.cfg.Leader.Close(bg)
	}
	var stepped time.Time
	for {
		if stepped.IsZero() || time.Since(stepped) >= f.cfg.LeaderInterval {
			stepped = time.Now()
			if err := f.cfg.Leader.Step(ctx); err != nil && ctx.Err() == nil {
				f.cfg.Logger.WarnContext(ctx, "ORU feed: leader election", slog.String("destination", f.dest), slog.String("error", err.Error()))
			}
		}
		full := false
		switch leading := f.cfg.Leader.Leader(); {
		case leading && !f.Leading():
			if err := f.start(ctx); err != nil && ctx.Err() == nil {
				f.cfg.Logger.ErrorContext(ctx, "ORU feed: load the cursor", slog.String("destination", f.dest), slog.String("error", err.Error()))
			}
		case !leading && f.Leading():
			f.handOver(bg)
		}
		if f.Leading() {
			n, err := f.pass(ctx)
			if err != nil && ctx.Err() == nil {
				f.cfg.Logger.ErrorContext(ctx, "ORU feed: read the stored rows", slog.String("destination", f.dest), slog.String("error", err.Error()))
			}
			full = n >= f.cfg.Batch
			if err := f.save(ctx); err != nil && ctx.Err() == nil {
				f.cfg.Logger.ErrorContext(ctx, "ORU feed: save the cursor", slog.String("destination", f.dest), slog.String("error", err.Error()))
			}
		}
		if full && ctx.Err() == nil {
			continue
		}
		select {
		case <-ctx.Done():
			if f.Leading() {
				f.handOver(bg)
			}
			return nil
		case <-time.After(f.cfg.PollInterval):
		}
	}
}

// start loads the destination's cursor, creating it at the present when there is none (a
// new destination gets what is committed from now on, not the history), audited as
// "hl7.oru.feed_started".
func (f *Feed) start(ctx context.Context) error {
	var p storedfeed.Position
	var txid string
	err := pgx.BeginFunc(ctx, f.cfg.Pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO interop_hl7_feed_cursors (destination, txid, kind, source_id, updated_at)
			VALUES ($1, pg_snapshot_xmin(pg_current_snapshot()), -1, $2, $3) ON CONFLICT (destination) DO NOTHING`,
			f.dest, uuid.Nil, f.cfg.Now())
		if err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `SELECT txid::text, kind, source_id FROM interop_hl7_feed_cursors WHERE destination = $1`,
			f.dest).Scan(&txid, &p.Kind, &p.ID); err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return nil
		}
		_, err = f.cfg.Sender.cfg.Audit.Record(ctx, tx, audit.Event{Time: f.cfg.Now(),
			Actor:  audit.Actor{Kind: audit.ActorService, ID: "hl7-outbound", AuthMethod: "internal"},
			Action: "hl7.oru.feed_started", Object: audit.Object{Type: "hl7_destination", ID: f.dest}, Outcome: audit.OutcomeSuccess,
			Payload: map[string]any{"destination": f.dest, "addr": f.cfg.Sender.cfg.Addr, "txid": txid}})
		return err
	})
	if err != nil {
		return err
	}
	if p.TxID, err = strconv.ParseUint(txid, 10, 64); err != nil {
		return fmt.Errorf("cursor txid %q: %w", txid, err)
	}
	f.mu.Lock()
	f.gen++
	f.active, f.next, f.done, f.saved, f.pending = true, p, p, p, nil
	f.mu.Unlock()
	f.readyOnce.Do(func() { close(f.ready) })
	f.cfg.Logger.InfoContext(ctx, "ORU feed: leading", slog.String("destination", f.dest), slog.String("txid", txid))
	return nil
}

// handOver stops feeding: it waits (bounded) for the messages in flight, saves the cursor
// and forgets its state (a later leadership starts again from the saved cursor).
func (f *Feed) handOver(ctx context.Context) {
	wctx, cancel := context.WithTimeout(ctx, f.cfg.HandOverWait)
	_ = f.cfg.Sender.Drain(wctx)
	cancel()
	if err := f.save(ctx); err != nil {
		f.cfg.Logger.ErrorContext(ctx, "ORU feed: save the cursor", slog.String("destination", f.dest), slog.String("error", err.Error()))
	}
	f.mu.Lock()
	f.gen++
	f.active, f.pending = false, nil
	f.mu.Unlock()
	f.cfg.Logger.InfoContext(ctx, "ORU feed: no longer leading", slog.String("destination", f.dest))
}

// save writes the finished position, never moving the stored cursor back.
func (f *Feed) save(ctx context.Context) error {
	f.mu.Lock()
	p, saved := f.done, f.saved
	f.mu.Unlock()
	if !saved.Less(p) {
		return nil
	}
	_, err := f.cfg.Pool.Exec(ctx, `UPDATE interop_hl7_feed_cursors SET txid = $2::text::xid8, kind = $3, source_id = $4, updated_at = $5
		WHERE destination = $1 AND (txid, kind, source_id) < ($2::text::xid8, $3, $4)`,
		f.dest, strconv.FormatUint(p.TxID, 10), p.Kind, p.ID, f.cfg.Now())
	if err != nil {
		return err
	}
	f.mu.Lock()
	if f.saved.Less(p) {
		f.saved = p
	}
	f.mu.Unlock()
	return nil
}

// track notes an enqueued position and returns the function that marks it finished.
func (f *Feed) track(p storedfeed.Position) func() {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := &pendingPos{pos: p}
	f.pending = append(f.pending, e)
	gen := f.gen
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if gen != f.gen {
			return
		}
		e.finished = true
		f.advance()
	}
}

// skip notes a position with nothing to send as finished at once.
func (f *Feed) skip(p storedfeed.Position) { f.track(p)() }

// advance moves done over the finished prefix of pending (f.mu held).
func (f *Feed) advance() {
	i := 0
	for ; i < len(f.pending) && f.pending[i].finished; i++ {
		f.done = f.pending[i].pos
	}
	if i > 0 {
		f.pending = append(f.pending[:0], f.pending[i:]...)
	}
}

// pass reads up to Batch rows after the cursor, in commit order, and enqueues their
// messages. It returns the number of rows read.
func (f *Feed) pass(ctx context.Context) (int, error) {
	f.mu.Lock()
	from, gen := f.next, f.gen
	f.mu.Unlock()
	rows, err := storedfeed.Read(ctx, f.cfg.Pool, from, f.cfg.Batch, storedfeed.AlarmChanges)
	if err != nil {
		return 0, err
	}
	if err := storedfeed.Observations(ctx, f.cfg.Pool, rows); err != nil {
		return 0, err
	}
	patients, err := f.patients(ctx, rows)
	if err != nil {
		return 0, err
	}
	for i := range rows {
		r := &rows[i]
		f.mu.Lock()
		stale := gen != f.gen
		f.mu.Unlock()
		if stale {
			return i, nil
		}
		m, err := f.message(patients[r.Patient], r)
		if err != nil {
			f.skipped.Add(1)
			f.cfg.Logger.WarnContext(ctx, "ORU feed: row not sent", slog.String("patient_id", r.Patient.String()),
				slog.String("id", r.Pos.ID.String()), slog.String("error", err.Error()))
		}
		f.mu.Lock()
		f.next = r.Pos
		f.mu.Unlock()
		if err != nil || m.ControlID == "" {
			f.skip(r.Pos)
			continue
		}
		m.Finished = f.track(r.Pos)
		if err := f.cfg.Sender.Enqueue(ctx, m); err != nil {
			// Not enqueued: read it again from here next time.
			// (Messages of this pass already enqueued are sent, and sent again from the
			// cursor: their completions no longer count.)
			f.mu.Lock()
			if gen == f.gen {
				f.gen++
				f.next, f.pending = f.done, nil
			}
			f.mu.Unlock()
			return i, err
		}
	}
	return len(rows), nil
}

// maxCachedPatients bounds the patients kept opened between passes.
const maxCachedPatients = 20000

// patients returns the rows' patients opened (nil for one that does not exist), reusing
// those opened before whose row has not changed since (same updated_at).
func (f *Feed) patients(ctx context.Context, rows []storedfeed.Row) (map[uuid.UUID]*core.Patient, error) {
	out := map[uuid.UUID]*core.Patient{}
	var ids []uuid.UUID
	for _, r := range rows {
		if _, ok := out[r.Patient]; !ok {
			out[r.Patient] = nil
			ids = append(ids, r.Patient)
		}
	}
	if f.pcache == nil || len(f.pcache) > maxCachedPatients {
		f.pcache = map[uuid.UUID]core.Patient{}
	}
	rs, err := f.cfg.Pool.Query(ctx, `SELECT id, updated_at FROM core_patients WHERE id = ANY($1)`, ids)
	if err != nil {
		return nil, err
	}
	changed := map[uuid.UUID]time.Time{}
	var id uuid.UUID
	var upd time.Time
	if _, err := pgx.ForEachRow(rs, []any{&id, &upd}, func() error { changed[id] = upd; return nil }); err != nil {
		return nil, err
	}
	for id, upd := range changed {
		if p, ok := f.pcache[id]; ok && p.UpdatedAt.Equal(upd) {
			out[id] = &p
			continue
		}
		p, err := f.cfg.Core.Patient(ctx, id)
		switch {
		case errors.Is(err, core.ErrNotFound):
			continue
		case err != nil:
			return nil, err
		}
		f.pcache[id] = p
		out[id] = &p
	}
	return out, nil
}

var controlIDEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// ControlID is the MSH-10 of the message of a stored row: the same for every attempt, after
// a restart and on every replica ("VU" for an upload, "VA" for an alarm's change, then 80
// bits of a SHA-256 of the row's identity; 18 characters, within v2.5.1's 20).
func ControlID(kind, identity string) string {
	sum := sha256.Sum256([]byte(kind + "/" + identity))
	p := "VU"
	if kind == "alarm" {
		p = "VA"
	}
	return p + controlIDEncoding.EncodeToString(sum[:10])
}

// message builds the ORU of one row; a zero Message when there is nothing to send.
func (f *Feed) message(p *core.Patient, r *storedfeed.Row) (Message, error) {
	if p == nil {
		return Message{}, fmt.Errorf("patient %s: %w", r.Patient, core.ErrNotFound)
	}
	if r.Pos.Kind == storedfeed.KindUpload {
		if len(r.Obs) == 0 {
			return Message{}, nil // its observations are gone (retention)
		}
		return f.build(*p, ControlID("upload", r.Pos.ID.String()), r.At, r.Obs, nil)
	}
	ctl := ControlID("alarm", r.Pos.ID.String()+"/"+strconv.FormatUint(r.Pos.TxID, 10))
	return f.build(*p, ctl, r.At, nil, []hl7.ORUAlarm{{ID: r.Pos.ID.String(), Rule: r.Text,
		Severity: alarms.Severity(r.Severity).String(), State: r.State, Message: r.Message, Time: r.At}})
}

// Build writes the ORU^R01 of one patient's observations, with control id ctl and message
// time at.
func (f *Feed) Build(p core.Patient, ctl string, at time.Time, obs []core.Observation) (Message, error) {
	return f.build(p, ctl, at, obs, nil)
}

func (f *Feed) build(p core.Patient, ctl string, at time.Time, obs []core.Observation, als []hl7.ORUAlarm) (Message, error) {
	o := hl7.ORU{ControlID: ctl, Time: at, SendingFacility: f.cfg.Facility,
		ReceivingApplication: f.cfg.ReceivingApplication, ReceivingFacility: f.cfg.ReceivingFacility,
		Patient: hl7.ORUPatient{ID: p.ID.String(), MRN: p.PHI.MRN, FamilyName: p.PHI.FamilyName, GivenName: p.PHI.GivenName,
			BirthDate: p.PHI.BirthDate}}
	if p.WardID != nil {
		o.Patient.Ward = p.WardID.String()
	}
	for _, ob := range obs {
		ci, _ := core.LookupCode(ob.Code)
		o.Observations = append(o.Observations, hl7.ORUObservation{Code: ob.Code, Display: ci.Display, Value: ob.Value,
			Unit: ob.Unit, Time: ob.EffectiveAt, DeviceID: ob.DeviceID, Artifact: ob.Artifact})
	}
	o.Alarms = als
	b, err := hl7.BuildORU(o)
	if err != nil {
		return Message{}, err
	}
	return Message{PatientKey: p.ID.String(), ControlID: ctl, Bytes: b}, nil
}
