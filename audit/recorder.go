package audit

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit/leaf"
)

// Recorder is the one way to record an audit event. Every service receives one in its
// Config; *Outbox is the implementation.
type Recorder interface {
	// Record writes ev inside tx, the action's own transaction: if tx commits the event
	// exists, if tx rolls back it never did. It returns the event's id. Record MUST be
	// called with the action's own transaction, never a separate one, and MUST NOT commit or
	// roll back tx. An event that is not well formed is refused with an error wrapping
	// ErrInvalidEvent and nothing is written.
	Record(ctx context.Context, tx pgx.Tx, ev Event) (uuid.UUID, error)
	// RecordNow records an event that has no transaction of its own (a rejected request,
	// a key operation, a request audited after the fact) and returns once it is committed.
	// Concurrent calls are group-committed: one transaction for many events. Domain code
	// that changes state MUST use Record with its own transaction instead.
	RecordNow(ctx context.Context, ev Event) (uuid.UUID, error)
}

// BatchRecorder is a Recorder that writes many events with one statement (the device upload
// path: one event per upload, hundreds per transaction). *Outbox is one.
type BatchRecorder interface {
	Recorder
	// RecordMany is Record for many events in one statement: either every event is valid
	// and written, or none is. It returns the ids in the order of evs.
	RecordMany(ctx context.Context, tx pgx.Tx, evs []Event) ([]uuid.UUID, error)
}

// RecordAll writes evs inside tx: with one statement when r is a BatchRecorder, else one
// Record at a time. Either every event is written or an error is returned (and the caller
// rolls tx back).
func RecordAll(ctx context.Context, r Recorder, tx pgx.Tx, evs []Event) ([]uuid.UUID, error) {
	if br, ok := r.(BatchRecorder); ok {
		return br.RecordMany(ctx, tx, evs)
	}
	ids := make([]uuid.UUID, len(evs))
	for i, ev := range evs {
		id, err := r.Record(ctx, tx, ev)
		if err != nil {
			return nil, err
		}
		ids[i] = id
	}
	return ids, nil
}

// ErrClosed is returned by RecordNow after the Outbox was closed.
var ErrClosed = errors.New("audit recorder closed")

// Config configures an Outbox. Zero values take the documented defaults.
type Config struct {
	// Pool is the installation's database (the audit_events outbox table). Required.
	Pool *pgxpool.Pool
	// Now is the clock that stamps events recorded without a time. Default time.Now.
	Now func() time.Time
	// MaxGroup is the most events RecordNow commits in one transaction. Default 1000.
	MaxGroup int
	// CommitTimeout bounds one group commit, so that a hung database cannot hang Close.
	// Default 10 s.
	CommitTimeout time.Duration
	// Pushback is when Admit tells callers to push back on new work. Zero fields take the
	// defaults of PushbackPolicy.
	Pushback PushbackPolicy
	// AttestInterval is how often the session attests the counters whose transactions
	// ended (see EnableAuthentication). Default 1s.
	AttestInterval time.Duration
}

// Outbox is the Recorder: it prepares each event (id, time, salt, the commitments that enter
// the log) and writes it into the audit_events outbox table, inside the caller's
// transaction (Record, RecordMany) or group-committed (RecordNow). The audit chain
// (package audit/chain) ships the outbox to the transparency log and reports its backlog
// back (ReportBacklog), from which Admit decides whether callers must push back.
//
// All recording of one process goes through one Outbox: it is where every event is
// prepared, so that what is done to each event at record time is done to all of them. It is
// safe for concurrent use; Close stops its group committer.
type Outbox struct {
	cfg  Config
	gc   *groupCommitter
	sess *session

	attStop, attDone chan struct{} // the attester, once authentication is enabled
	closeOnce        sync.Once

	bmu     sync.Mutex
	backlog Backlog
}

// NewOutbox returns the Recorder over cfg.Pool and starts its group committer.
func NewOutbox(cfg Config) (*Outbox, error) {
	if cfg.Pool == nil {
		return nil, errors.New("audit: Config.Pool is required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxGroup <= 0 {
		cfg.MaxGroup = 1000
	}
	if cfg.CommitTimeout <= 0 {
		cfg.CommitTimeout = 10 * time.Second
	}
	if cfg.AttestInterval <= 0 {
		cfg.AttestInterval = time.Second
	}
	cfg.Pushback.setDefaults()
	sess, err := newSession()
	if err != nil {
		return nil, fmt.Errorf("audit: new session: %w", err)
	}
	o := &Outbox{cfg: cfg, sess: sess}
	o.gc = newGroupCommitter(o)
	return o, nil
}

// Close stops the attester after a last attestation, then the group committer after
// committing what was queued. RecordNow afterwards returns ErrClosed; Record and RecordMany
// keep working (they use the caller's transaction).
func (o *Outbox) Close() {
	o.closeOnce.Do(func() {
		if o.attStop != nil {
			close(o.attStop)
			<-o.attDone
			ctx, cancel := context.WithTimeout(context.Background(), o.cfg.CommitTimeout)
			_ = o.attest(ctx, true)
			cancel()
		}
		o.gc.close()
	})
}

// Record implements Recorder.
func (o *Outbox) Record(ctx context.Context, tx pgx.Tx, ev Event) (uuid.UUID, error) {
	r, err := o.prepare(ev, o.cfg.Now)
	if err != nil {
		return uuid.Nil, fmt.Errorf("record audit event %s: %w", ev.Action, err)
	}
	var xid string
	err = tx.QueryRow(ctx, `INSERT INTO audit_events (`+insertColumnList+`)
		VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23)
		RETURNING pg_current_xact_id()::text`, r.row...).Scan(&xid)
	o.sess.written([]uint64{r.seq}, xid)
	if err != nil {
		return uuid.Nil, fmt.Errorf("record audit event %s: %w", ev.Action, err)
	}
	return r.row[0].(uuid.UUID), nil
}

// RecordMany implements BatchRecorder: one COPY for all of evs. The first invalid event is
// reported with its index and nothing is written.
func (o *Outbox) RecordMany(ctx context.Context, tx pgx.Tx, evs []Event) ([]uuid.UUID, error) {
	ps, err := o.prepareAll(evs)
	if err != nil {
		return nil, err
	}
	if err := o.copyPrepared(ctx, tx, ps); err != nil {
		return nil, err
	}
	ids := make([]uuid.UUID, len(ps))
	for i, r := range ps {
		ids[i] = r.row[0].(uuid.UUID)
	}
	return ids, nil
}

// RecordNow implements Recorder. The event is prepared (and refused when invalid) in the
// caller's goroutine; the group committer only writes rows.
func (o *Outbox) RecordNow(ctx context.Context, ev Event) (uuid.UUID, error) {
	id, _, err := o.recordNowSeq(ctx, ev)
	return id, err
}

func (o *Outbox) recordNowSeq(ctx context.Context, ev Event) (uuid.UUID, uint64, error) {
	r, err := o.prepare(ev, o.cfg.Now)
	if err != nil {
		return uuid.Nil, 0, fmt.Errorf("record audit event %s: %w", ev.Action, err)
	}
	if err := o.gc.commit(ctx, r); err != nil {
		return uuid.Nil, 0, fmt.Errorf("record audit event %s: %w", ev.Action, err)
	}
	return r.row[0].(uuid.UUID), r.seq, nil
}

// prepared is an event ready for the outbox: the values of insertColumns and its counter.
type prepared struct {
	row []any
	seq uint64
}

func (o *Outbox) prepareAll(evs []Event) ([]prepared, error) {
	rows := make([]prepared, len(evs))
	now := o.cfg.Now()
	clock := func() time.Time { return now }
	for i, ev := range evs {
		r, err := o.prepare(ev, clock)
		if err != nil {
			for _, p := range rows[:i] {
				o.sess.written([]uint64{p.seq}, "")
			}
			return nil, fmt.Errorf("record audit events: event %d (%s): %w", i, ev.Action, err)
		}
		rows[i] = r
	}
	return rows, nil
}

// copyPrepared writes ps in tx with one COPY and records the transaction that wrote them
// (or that the write failed) for the session's attestation.
func (o *Outbox) copyPrepared(ctx context.Context, tx pgx.Tx, ps []prepared) error {
	if len(ps) == 0 {
		return nil
	}
	seqs := make([]uint64, len(ps))
	rows := make([][]any, len(ps))
	for i, p := range ps {
		seqs[i], rows[i] = p.seq, p.row
	}
	xid, err := copyRows(ctx, tx, rows)
	if err != nil {
		xid = ""
	}
	o.sess.written(seqs, xid)
	return err
}

func copyRows(ctx context.Context, tx pgx.Tx, rows [][]any) (string, error) {
	var xid string
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid); err != nil {
		return "", fmt.Errorf("record audit events: %w", err)
	}
	n, err := tx.CopyFrom(ctx, pgx.Identifier{"audit_events"}, insertColumns, pgx.CopyFromRows(rows))
	if err != nil {
		return "", fmt.Errorf("record audit events: copy %d events: %w", len(rows), err)
	}
	if int(n) != len(rows) {
		return "", fmt.Errorf("record audit events: copied %d of %d", n, len(rows))
	}
	return xid, nil
}

var insertColumns = []string{"id", "occurred_at", "actor_kind", "actor_id", "actor_auth", "action",
	"object_type", "object_id", "outcome", "reason", "request_id", "source_addr", "payload", "salt",
	"actor_id_c", "object_id_c", "request_id_c", "source_addr_c", "payload_commitment",
	"recorded_at", "session_id", "session_seq", "auth_mac"}

var insertColumnList = strings.Join(insertColumns, ", ")

// prepare validates ev, fills id and time, draws the salt, computes the commitments, numbers
// the event in the session and authenticates it; it returns the values of insertColumns. It
// is the one place an event is made ready for the outbox.
func (o *Outbox) prepare(ev Event, now func() time.Time) (prepared, error) {
	if ev.ID == uuid.Nil {
		id, err := uuid.NewV7()
		if err != nil {
			return prepared{}, fmt.Errorf("new id: %w", err)
		}
		ev.ID = id
	}
	recorded := now().UTC().Truncate(time.Microsecond) // PostgreSQL precision
	if ev.Time.IsZero() {
		ev.Time = recorded
	}
	ev.Time = ev.Time.UTC().Truncate(time.Microsecond)
	if err := ev.Validate(); err != nil {
		return prepared{}, err
	}
	var payload []byte
	if ev.Payload != nil {
		b, err := json.Marshal(ev.Payload)
		if err != nil {
			return prepared{}, fmt.Errorf("%w: payload: %v", ErrInvalidEvent, err)
		}
		payload = capPayload(b)
	}
	salt := make([]byte, 32)
	if _, err := rand.Read(salt); err != nil {
		return prepared{}, fmt.Errorf("salt: %w", err)
	}
	cm := leaf.NewCommitter(salt)
	ac := cm.Commit(leaf.LabelActorID, []byte(ev.Actor.ID))
	oc := cm.Commit(leaf.LabelObjectID, []byte(ev.Object.ID))
	rc := cm.Commit(leaf.LabelRequestID, []byte(ev.RequestID))
	sc := cm.Commit(leaf.LabelSourceAddr, []byte(ev.SourceAddr))
	pc := cm.Commit(leaf.LabelPayload, payload)
	l := leaf.Event{ID: ev.ID, Time: ev.Time, RecordedAt: recorded, ActorKind: string(ev.Actor.Kind), ActorID: ac,
		ActorAuth: ev.Actor.AuthMethod, Action: ev.Action, ObjectType: ev.Object.Type, ObjectID: oc,
		Outcome: string(ev.Outcome), Reason: ev.Reason, RequestID: rc, SourceAddr: sc, PayloadHash: pc}
	mac, err := o.sess.issue(&l)
	if err != nil {
		return prepared{}, err
	}
	var macv any
	if mac != nil {
		macv = mac
	}
	return prepared{seq: l.SessionSeq, row: []any{ev.ID, ev.Time, string(ev.Actor.Kind), ev.Actor.ID, ev.Actor.AuthMethod, ev.Action,
		ev.Object.Type, ev.Object.ID, string(ev.Outcome), ev.Reason, ev.RequestID, ev.SourceAddr,
		nullJSON(payload), salt, ac[:], oc[:], rc[:], sc[:], pc[:], recorded, l.Session, int64(l.SessionSeq), macv}}, nil
}

// PayloadCommitment is the keyed commitment to an event's payload JSON (leaf.Commit with the
// label "payload"): with the salt erased it reveals nothing about the payload; with both,
// anyone can check it.
func PayloadCommitment(salt, payload []byte) [32]byte {
	return leaf.Commit(salt, leaf.LabelPayload, payload)
}

func nullJSON(b []byte) any {
	if b == nil {
		return nil
	}
	return string(b)
}

// groupCommitter writes the events of concurrent RecordNow calls together, with one COPY in
// one transaction, and answers each call once its event is committed.
type groupCommitter struct {
	o    *Outbox
	reqs chan commitReq
	stop chan struct{}
	done chan struct{}
	once sync.Once

	mu     sync.RWMutex // held shared while queueing, exclusively to close
	closed bool
}

type commitReq struct {
	p     prepared
	reply chan error
}

func newGroupCommitter(o *Outbox) *groupCommitter {
	g := &groupCommitter{o: o, reqs: make(chan commitReq, o.cfg.MaxGroup), stop: make(chan struct{}), done: make(chan struct{})}
	go g.loop()
	return g
}

func (g *groupCommitter) loop() {
	defer close(g.done)
	group := make([]commitReq, 0, g.o.cfg.MaxGroup)
	for {
		group = group[:0]
		select {
		case <-g.stop:
			return
		case r := <-g.reqs:
			group = append(group, r)
		}
	drain:
		for len(group) < g.o.cfg.MaxGroup {
			select {
			case r := <-g.reqs:
				group = append(group, r)
			default:
				break drain
			}
		}
		g.write(group)
		clear(group)
	}
}

// write commits a group in one transaction; when that fails and the group has more than one
// event, each is committed on its own, so that one bad row cannot sink the others.
func (g *groupCommitter) write(group []commitReq) {
	ctx, cancel := context.WithTimeout(context.Background(), g.o.cfg.CommitTimeout)
	defer cancel()
	ps := make([]prepared, len(group))
	for i, r := range group {
		ps[i] = r.p
	}
	var xid string
	err := pgx.BeginFunc(ctx, g.o.cfg.Pool, func(tx pgx.Tx) error {
		rows := make([][]any, len(ps))
		for i, p := range ps {
			rows[i] = p.row
		}
		var err error
		xid, err = copyRows(ctx, tx, rows)
		return err
	})
	if err != nil && len(group) > 1 {
		for _, r := range group {
			g.write([]commitReq{r})
		}
		return
	}
	seqs := make([]uint64, len(ps))
	for i, p := range ps {
		seqs[i] = p.seq
	}
	if err != nil {
		xid = ""
	}
	g.o.sess.written(seqs, xid)
	for _, r := range group {
		r.reply <- err
	}
}

// commit queues a prepared row and waits until it is committed.
func (g *groupCommitter) commit(ctx context.Context, p prepared) error {
	r := commitReq{p: p, reply: make(chan error, 1)}
	g.mu.RLock()
	if g.closed {
		g.mu.RUnlock()
		g.o.sess.written([]uint64{p.seq}, "")
		return ErrClosed
	}
	select {
	case g.reqs <- r:
		g.mu.RUnlock()
	case <-ctx.Done():
		g.mu.RUnlock()
		g.o.sess.written([]uint64{p.seq}, "")
		return ctx.Err()
	}
	// Once queued, the event is committed (or fails) whatever ctx does: wait for the answer.
	return <-r.reply
}

func (g *groupCommitter) close() {
	g.once.Do(func() {
		g.mu.Lock()
		g.closed = true
		g.mu.Unlock()
		close(g.stop)
		<-g.done
		// Answer anything queued after the loop stopped.
		for {
			select {
			case r := <-g.reqs:
				g.write([]commitReq{r})
			default:
				return
			}
		}
	})
}
