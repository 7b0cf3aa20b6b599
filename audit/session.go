package audit

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit/leaf"
	"github.com/vigilhealth/vigil/keys"
)

// Event authentication (docs/audit.md "Event authentication").
//
// Each Outbox is one writer session: a random id, a counter that numbers every event it
// writes (1, 2, 3, … with no gap), and, once EnableAuthentication was called, a random 32-byte
// session key stored in audit_sessions only wrapped by the key ring (keys.Encrypter). Every
// event carries leaf.EventMAC(session key, its canonical encoding): record time, session and
// counter included. Whoever can write to the database but cannot use the key ring can
// neither forge nor back-date nor renumber an event.
//
// A counter whose event is missing is a deleted action unless the session says why: the
// Outbox periodically records an "audit.session.attested" event stating the highest counter
// whose transaction has ended (as PostgreSQL's commit log says: pg_xact_status) and the
// counters of that range that were rolled back (their events never existed). Verify reports
// any other counter up to the attested one without an event as a deleted action.

// ActionSessionAttested is the action of a session's attestation event.
const ActionSessionAttested = "audit.session.attested"

// ObjectSession is the object type of a session's attestation event (object id = session id).
const ObjectSession = "audit_session"

// Attestation is the payload of an ActionSessionAttested event.
type Attestation struct {
	// Through is the highest counter of the session whose transaction has ended: every
	// counter ≤ Through has an event row unless listed in RolledBack.
	Through uint64 `json:"through"`
	// RolledBack lists the counters ≤ Through (and above the previous attestation's Through)
	// whose transaction rolled back or whose write failed.
	RolledBack []uint64 `json:"rolled_back,omitempty"`
	// Final is set on the attestation made when the Outbox closes.
	Final bool `json:"final,omitempty"`
}

// ErrUnknownSession is returned by SessionKeys.Key for a session with no (valid) key row.
var ErrUnknownSession = errors.New("audit session key not found or not unwrappable")

// sessionKeyAAD binds a wrapped session key to its session id.
func sessionKeyAAD(id uuid.UUID) []byte {
	return append([]byte("vigil-audit-session-key-v1\x00"), id[:]...)
}

// RowQuerier is the one query method SessionKeys needs (a pool, a transaction).
type RowQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// SessionKeys unwraps and caches the session keys of the writer sessions, for the shipper
// and for verify. It is safe for concurrent use.
type SessionKeys struct {
	enc   keys.Encrypter
	mu    sync.Mutex
	cache map[uuid.UUID][]byte
}

// NewSessionKeys returns the session key cache over the key ring's encrypter.
func NewSessionKeys(enc keys.Encrypter) *SessionKeys {
	return &SessionKeys{enc: enc, cache: map[uuid.UUID][]byte{}}
}

// Key returns the key of session id, unwrapping it from audit_sessions on first use. A
// session with no key row, or a key row the key ring does not open (forged, or bound to
// another session), gives an error wrapping ErrUnknownSession.
func (k *SessionKeys) Key(ctx context.Context, q RowQuerier, id uuid.UUID) ([]byte, error) {
	k.mu.Lock()
	key, ok := k.cache[id]
	k.mu.Unlock()
	if ok {
		return key, nil
	}
	if q == nil {
		return nil, fmt.Errorf("session %s: %w: no key row", id, ErrUnknownSession)
	}
	var wrapped []byte
	err := q.QueryRow(ctx, `SELECT wrapped_key FROM audit_sessions WHERE id = $1`, id).Scan(&wrapped)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("session %s: %w: no key row", id, ErrUnknownSession)
	}
	if err != nil {
		return nil, fmt.Errorf("session %s key: %w", id, err)
	}
	key, err = k.enc.Decrypt(ctx, wrapped, sessionKeyAAD(id))
	if errors.Is(err, keys.ErrDecrypt) {
		return nil, fmt.Errorf("session %s: %w: %v", id, ErrUnknownSession, err)
	}
	if err != nil {
		return nil, fmt.Errorf("session %s key: %w", id, err)
	}
	k.mu.Lock()
	k.cache[id] = key
	k.mu.Unlock()
	return key, nil
}

// Load unwraps the keys of every session in audit_sessions into the cache; a key row the
// key ring does not open is left out (its events are then unauthenticated). Verify loads
// once, then checks with a nil querier (its snapshot's connection is busy reading events).
func (k *SessionKeys) Load(ctx context.Context, q interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}) error {
	rows, err := q.Query(ctx, `SELECT id, wrapped_key FROM audit_sessions`)
	if err != nil {
		return fmt.Errorf("load session keys: %w", err)
	}
	type row struct {
		id      uuid.UUID
		wrapped []byte
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		return x, r.Scan(&x.id, &x.wrapped)
	})
	if err != nil {
		return fmt.Errorf("load session keys: %w", err)
	}
	for _, x := range list {
		k.mu.Lock()
		_, ok := k.cache[x.id]
		k.mu.Unlock()
		if ok {
			continue
		}
		key, err := k.enc.Decrypt(ctx, x.wrapped, sessionKeyAAD(x.id))
		if errors.Is(err, keys.ErrDecrypt) {
			continue
		}
		if err != nil {
			return fmt.Errorf("session %s key: %w", x.id, err)
		}
		k.mu.Lock()
		k.cache[x.id] = key
		k.mu.Unlock()
	}
	return nil
}

// Check reports whether mac is the valid tag of the event e under its session's key: nil,
// an error wrapping ErrUnauthenticated (no tag, bad tag, unknown session), or another error
// (the key ring or the database failed: nothing is known). With a nil q only keys already
// in the cache (Load) are used.
func (k *SessionKeys) Check(ctx context.Context, q RowQuerier, e *leaf.Event, mac []byte) error {
	if len(mac) == 0 {
		return fmt.Errorf("%w: no authentication tag", ErrUnauthenticated)
	}
	key, err := k.Key(ctx, q, e.Session)
	if errors.Is(err, ErrUnknownSession) {
		return fmt.Errorf("%w: %v", ErrUnauthenticated, err)
	}
	if err != nil {
		return err
	}
	enc, err := e.Encode()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnauthenticated, err)
	}
	if !leaf.CheckEventMAC(key, enc, mac) {
		return fmt.Errorf("%w: the tag does not match the event", ErrUnauthenticated)
	}
	return nil
}

// ErrUnauthenticated means an event has no valid authentication tag: it was not written by
// a Vigil writer session (forged, back-dated, renumbered or altered in the database).
var ErrUnauthenticated = errors.New("audit event not authenticated")

// session is the Outbox's writer session: its id, counter, key and the state of every
// counter not yet attested.
type session struct {
	id uuid.UUID

	mu       sync.Mutex
	key      []byte // nil until EnableAuthentication
	macer    *leaf.EventMACer
	enc      keys.Encrypter // the key ring's encrypter given to EnableAuthentication
	next     uint64         // last counter issued
	attested uint64         // Through of the last attestation
	lastAtt  uint64         // the counter of the last attestation event itself
	// state of counters > attested: "" issued (write in flight), "void" (never written),
	// or the xid (pg_current_xact_id) of the transaction that wrote it.
	state map[uint64]string
	// unauth holds the encodings of events written before the key existed, to be
	// authenticated by EnableAuthentication (bounded).
	unauth map[uint64]unauthRow
}

type unauthRow struct {
	id  uuid.UUID
	enc []byte
}

const maxUnauth = 10000

const stateVoid = "void"

func newSession() (*session, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return nil, err
	}
	return &session{id: id, state: map[uint64]string{}, unauth: map[uint64]unauthRow{}}, nil
}

// issue numbers one event and returns its tag (nil before the key exists).
func (s *session) issue(e *leaf.Event) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	e.Session = s.id
	e.SessionSeq = s.next
	s.state[s.next] = ""
	enc, err := e.Encode()
	if err != nil {
		s.state[s.next] = stateVoid
		return nil, fmt.Errorf("%w: %v", ErrInvalidEvent, err)
	}
	if s.key == nil {
		if len(s.unauth) < maxUnauth {
			s.unauth[s.next] = unauthRow{id: e.ID, enc: enc}
		}
		return nil, nil
	}
	mac := s.macer.MAC(enc)
	return mac[:], nil
}

// written records the outcome of writing the events numbered seqs: the writing
// transaction's xid, or "" when the write failed (the events were never written).
func (s *session) written(seqs []uint64, xid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if xid == "" {
		xid = stateVoid
	}
	for _, n := range seqs {
		if n > s.attested {
			s.state[n] = xid
		}
	}
}

// EnableAuthentication gives the Outbox its session key: a random key, wrapped by enc (the
// key ring's encrypter: Vault Transit or the local key ring) and stored in audit_sessions.
// From then on every event carries its tag; the events this Outbox wrote before (the key
// ring's own events, recorded while the ring opened) are authenticated now from the content
// the Outbox prepared, not from what the database holds. It also starts the periodic
// attestation (Config.AttestInterval). Calling it twice is an error.
func (o *Outbox) EnableAuthentication(ctx context.Context, enc keys.Encrypter) error {
	s := o.sess
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("audit session key: %w", err)
	}
	wrapped, err := enc.Encrypt(ctx, key, sessionKeyAAD(s.id))
	if err != nil {
		return fmt.Errorf("audit session key: wrap: %w", err)
	}
	if _, err := o.cfg.Pool.Exec(ctx, `INSERT INTO audit_sessions (id, started_at, wrapped_key) VALUES ($1,$2,$3)`,
		s.id, o.cfg.Now().UTC(), wrapped); err != nil {
		return fmt.Errorf("audit session: %w", err)
	}
	s.mu.Lock()
	if s.key != nil {
		s.mu.Unlock()
		return errors.New("audit: authentication already enabled")
	}
	s.key = key
	s.macer = leaf.NewEventMACer(key)
	s.enc = enc
	late := s.unauth
	s.unauth = nil
	s.mu.Unlock()
	if len(late) > 0 {
		ids := make([]uuid.UUID, 0, len(late))
		macs := make([][]byte, 0, len(late))
		seqs := make([]int64, 0, len(late))
		for n, r := range late {
			m := leaf.EventMAC(key, r.enc)
			ids = append(ids, r.id)
			macs = append(macs, m[:])
			seqs = append(seqs, int64(n))
		}
		// Only rows still carrying this session's number and no tag: a row changed since is
		// left unauthenticated (and reported).
		if _, err := o.cfg.Pool.Exec(ctx, `UPDATE audit_events e SET auth_mac = u.mac
			FROM unnest($1::uuid[], $2::bytea[], $3::bigint[]) AS u(id, mac, n)
			WHERE e.id = u.id AND e.session_id = $4 AND e.session_seq = u.n AND e.auth_mac IS NULL`,
			ids, macs, seqs, s.id); err != nil {
			return fmt.Errorf("audit: authenticate the events recorded before the key: %w", err)
		}
	}
	o.startAttesting()
	return nil
}

// EventKeys returns the key ring's encrypter given to EnableAuthentication (nil before): the
// audit chain unwraps the session keys with it (chain.Config.EventKeys).
func (o *Outbox) EventKeys() keys.Encrypter {
	o.sess.mu.Lock()
	defer o.sess.mu.Unlock()
	return o.sess.enc
}

// Session is the id of the Outbox's writer session.
func (o *Outbox) Session() uuid.UUID { return o.sess.id }

// Authenticated reports whether EnableAuthentication has given the Outbox its key.
func (o *Outbox) Authenticated() bool {
	o.sess.mu.Lock()
	defer o.sess.mu.Unlock()
	return o.sess.key != nil
}

func (o *Outbox) startAttesting() {
	o.attStop = make(chan struct{})
	o.attDone = make(chan struct{})
	go func() {
		defer close(o.attDone)
		t := time.NewTicker(o.cfg.AttestInterval)
		defer t.Stop()
		for {
			select {
			case <-o.attStop:
				return
			case <-t.C:
				ctx, cancel := context.WithTimeout(context.Background(), o.cfg.CommitTimeout)
				_ = o.Attest(ctx) // retried at the next tick
				cancel()
			}
		}
	}()
}

// Attest records an attestation event for the counters whose transactions have ended since
// the last one (nothing when there are none). The background attester calls it every
// Config.AttestInterval and Close once more; tests call it directly.
func (o *Outbox) Attest(ctx context.Context) error { return o.attest(ctx, false) }

func (o *Outbox) attest(ctx context.Context, final bool) error {
	s := o.sess
	s.mu.Lock()
	if s.key == nil {
		s.mu.Unlock()
		return nil
	}
	from := s.attested
	var xids []string
	var seqs []uint64
	for n := from + 1; n <= s.next; n++ {
		st := s.state[n]
		if st == "" {
			break // write in flight
		}
		seqs = append(seqs, n)
		xids = append(xids, st)
	}
	recorded := s.next > 0
	s.mu.Unlock()
	if len(seqs) == 0 && (!final || !recorded) {
		return nil
	}
	// Ask PostgreSQL's commit log how each transaction ended.
	status := map[string]string{}
	var ask []string
	for _, x := range xids {
		if x != stateVoid {
			ask = append(ask, x)
		}
	}
	if len(ask) > 0 {
		rows, err := o.cfg.Pool.Query(ctx, `SELECT x, coalesce(pg_xact_status(x::xid8), 'committed')
			FROM unnest($1::text[]) AS x`, ask)
		if err != nil {
			return fmt.Errorf("audit attest: %w", err)
		}
		for rows.Next() {
			var x, st string
			if err := rows.Scan(&x, &st); err != nil {
				rows.Close()
				return fmt.Errorf("audit attest: %w", err)
			}
			status[x] = st
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("audit attest: %w", err)
		}
	}
	att := Attestation{Final: final}
	for i, n := range seqs {
		x := xids[i]
		switch {
		case x == stateVoid || status[x] == "aborted":
			att.RolledBack = append(att.RolledBack, n)
		case status[x] == "in progress":
			goto done
		}
		att.Through = n
	}
done:
	// A final attestation is recorded even when nothing is new since the last one (say the
	// last event was itself a periodic attestation, after the last shipping): the writer's
	// stop in order must cover every event it recorded, or verify reports them as pending.
	if final && att.Through < from {
		att.Through = from
	}
	if att.Through == 0 && !final {
		return nil
	}
	s.mu.Lock()
	lastAtt := s.lastAtt
	s.mu.Unlock()
	// Nothing new but the previous attestation itself: no attestation of an attestation.
	if att.Through == lastAtt && !final && len(att.RolledBack) == 0 {
		s.mu.Lock()
		for n := from + 1; n <= att.Through; n++ {
			delete(s.state, n)
		}
		s.attested = att.Through
		s.mu.Unlock()
		return nil
	}
	sort.Slice(att.RolledBack, func(i, j int) bool { return att.RolledBack[i] < att.RolledBack[j] })
	id, seq, err := o.recordNowSeq(ctx, Event{Actor: Actor{Kind: ActorService, ID: "vigil-audit", AuthMethod: "internal"},
		Action: ActionSessionAttested, Object: Object{Type: ObjectSession, ID: s.id.String()}, Outcome: OutcomeSuccess, Payload: att})
	if err != nil {
		return fmt.Errorf("audit attest: %w", err)
	}
	_ = id
	s.mu.Lock()
	for n := from + 1; n <= att.Through; n++ {
		delete(s.state, n)
	}
	s.attested = max(s.attested, att.Through)
	s.lastAtt = seq
	s.mu.Unlock()
	return nil
}
