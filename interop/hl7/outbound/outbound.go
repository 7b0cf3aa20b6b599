// Package outbound delivers HL7 v2 messages (ORU^R01 built by interop/hl7.BuildORU) to one
// destination over MLLP: in order per patient, each message waiting for its ACK before the
// next of that patient is sent; retried with exponential back-off while the destination is
// unreachable, times out or answers AR; dead-lettered in PostgreSQL (sealed, with its audit
// event in the same transaction) when the destination answers AE or the last retry fails;
// every message's outcome audited with its SHA-256, destination and ACK code.
package outbound

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/interop"
	"github.com/vigilhealth/vigil/interop/hl7"
	"github.com/vigilhealth/vigil/interop/mllp"
)

var (
	// ErrClosed: the sender is closed.
	ErrClosed = errors.New("outbound: sender closed")
	// ErrDeadLetterNotFound: no dead letter with that id for this destination.
	ErrDeadLetterNotFound = errors.New("outbound: dead letter not found")
)

// Message is one message to deliver.
type Message struct {
	// PatientKey orders delivery: messages with the same key are delivered one after the
	// other in Enqueue order. Use the Vigil patient id (not PHI).
	PatientKey string
	// ControlID is MSH-10 of Bytes; the ACK's MSA-2 must match it.
	ControlID string
	// Bytes is the message.
	Bytes []byte
	// Finished, when set, is called once the message is finished: delivered and its
	// delivery audited, or dead-lettered. It is not called for a message a Sender with
	// KeepOnClose drops at Close. It MUST NOT block.
	Finished func()
}

// Sealer seals dead-lettered messages, which hold PHI. keys' PHI helper (*keys.PHI)
// satisfies it. Seal MUST bind the ciphertext to aad; Open MUST fail for another aad.
type Sealer interface {
	Seal(ctx context.Context, plaintext, aad []byte) ([]byte, error)
	Open(ctx context.Context, sealed, aad []byte) ([]byte, error)
}

// Config configures a Sender.
type Config struct {
	// Name names the destination in the audit trail and the dead-letter table. Required.
	Name string
	// Addr is the destination's host:port. Required.
	Addr string
	// Pool holds the dead-letter table. Required.
	Pool *pgxpool.Pool
	// Sealer seals dead letters. Required.
	Sealer Sealer
	// Audit records each message's outcome. Required.
	Audit interop.Recorder
	// Lanes is the number of connections used in parallel; a patient's messages always use
	// the same lane. Default 4.
	Lanes int
	// QueueSize bounds the messages waiting per lane; Enqueue blocks (until its context is
	// done) when the lane is full. Default 4096.
	QueueSize int
	// AckTimeout bounds one attempt (connect, send, ACK). Default 30 s.
	AckTimeout time.Duration
	// MaxAttempts is the most deliveries tried before a message is dead-lettered. Default 8.
	MaxAttempts int
	// Backoff is the wait after failed attempt n (1-based). Default 1 s × 2^(n-1), at most
	// 5 minutes.
	Backoff func(attempt int) time.Duration
	// After returns a channel that fires after d (tests inject one that fires at once).
	// Default time.After.
	After func(d time.Duration) <-chan time.Time
	// Dial opens connections. Default net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// KeepOnClose is for messages that come from a durable source (Feed): Close drops the
	// messages still queued or waiting for a retry instead of dead-lettering them, and does
	// not call their Finished; the source sends them again when it resumes.
	KeepOnClose bool
}

// Stats counts what the sender did.
type Stats struct {
	Enqueued, Delivered, DeadLettered, Retries, AuditFailures int64
}

// Sender delivers messages to one destination. Close stops it.
type Sender struct {
	cfg    Config
	lanes  []*lane
	stop   chan struct{}
	audits chan auditJob
	wg     sync.WaitGroup // lanes
	awg    sync.WaitGroup // audit workers

	mu     sync.RWMutex
	closed bool

	// pending counts messages enqueued and not yet finished (delivered or dead-lettered,
	// and audited); Drain waits for zero.
	pmu     sync.Mutex
	pending int
	idle    chan struct{} // closed when pending drops to zero; replaced when it rises

	stats struct{ enqueued, delivered, dead, retries, auditFailures atomic.Int64 }
}

type lane struct {
	q      chan Message
	client *mllp.Client
}

// auditWorkers bounds the audit events recorded concurrently (group-committed together by
// the audit service), so auditing does not hold up delivery. The audit service commits one
// group at a time, so the sender's rate is at most auditWorkers per group commit: with 32 it
// was 32 ÷ commit latency (≈ 3,000 messages/s at an 11 ms commit — a slow WAL flush — and
// every group a small transaction); 256 keeps the rate off the commit latency and groups large
// (docs/benchmarks.md, "ORU sender: audit events in flight").
const auditWorkers = 256

// New starts a sender.
func New(cfg Config) (*Sender, error) {
	if cfg.Name == "" || cfg.Addr == "" || cfg.Pool == nil || cfg.Sealer == nil || cfg.Audit == nil {
		return nil, errors.New("outbound: Name, Addr, Pool, Sealer and Audit are required")
	}
	if cfg.Lanes <= 0 {
		cfg.Lanes = 4
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 4096
	}
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = 30 * time.Second
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 8
	}
	if cfg.Backoff == nil {
		cfg.Backoff = DefaultBackoff
	}
	if cfg.After == nil {
		cfg.After = time.After
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Sender{cfg: cfg, stop: make(chan struct{}), audits: make(chan auditJob, 4*auditWorkers)}
	for i := 0; i < cfg.Lanes; i++ {
		c, err := mllp.NewClient(mllp.ClientConfig{Addr: cfg.Addr, Dial: cfg.Dial})
		if err != nil {
			return nil, err
		}
		s.lanes = append(s.lanes, &lane{q: make(chan Message, cfg.QueueSize), client: c})
	}
	for i := 0; i < auditWorkers; i++ {
		s.awg.Add(1)
		go s.auditLoop()
	}
	for _, l := range s.lanes {
		s.wg.Add(1)
		go s.run(l)
	}
	return s, nil
}

// DefaultBackoff is 1 s × 2^(attempt-1), at most 5 minutes.
func DefaultBackoff(attempt int) time.Duration {
	d := time.Second << min(attempt-1, 20)
	return min(d, 5*time.Minute)
}

// Enqueue queues m for delivery. It blocks while m's lane is full, until ctx is done.
func (s *Sender) Enqueue(ctx context.Context, m Message) error {
	if m.ControlID == "" || len(m.Bytes) == 0 {
		return errors.New("outbound: message without control id or bytes")
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	h := fnv.New32a()
	h.Write([]byte(m.PatientKey))
	l := s.lanes[h.Sum32()%uint32(len(s.lanes))]
	s.track(1)
	select {
	case l.q <- m:
		s.stats.enqueued.Add(1)
		return nil
	case <-ctx.Done():
		s.track(-1)
		return ctx.Err()
	}
}

func (s *Sender) track(n int) {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	if s.idle == nil {
		s.idle = make(chan struct{})
		if s.pending == 0 {
			close(s.idle)
		}
	}
	was := s.pending
	s.pending += n
	switch {
	case was == 0 && s.pending > 0:
		s.idle = make(chan struct{})
	case was > 0 && s.pending == 0:
		close(s.idle)
	}
}

// Drain waits until every message enqueued so far has been delivered or dead-lettered and
// its outcome audited, or ctx is done.
func (s *Sender) Drain(ctx context.Context) error {
	s.track(0)
	s.pmu.Lock()
	idle := s.idle
	s.pmu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stats returns the counters.
func (s *Sender) Stats() Stats {
	return Stats{Enqueued: s.stats.enqueued.Load(), Delivered: s.stats.delivered.Load(), DeadLettered: s.stats.dead.Load(),
		Retries: s.stats.retries.Load(), AuditFailures: s.stats.auditFailures.Load()}
}

// Close stops accepting messages, lets each lane finish its current attempt, dead-letters
// (reason "not_sent_before_close") every message still queued so none is lost, waits for
// the audit events in flight, and closes the connections. ctx bounds the wait for attempts
// in flight. Enqueue calls blocked on a full lane are waited for (each is bounded by its own
// context) before closing starts.
func (s *Sender) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.stop)
	for _, l := range s.lanes {
		close(l.q)
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		for _, l := range s.lanes {
			_ = l.client.Close() // aborts attempts in flight
		}
		<-done
		err = ctx.Err()
	}
	close(s.audits)
	s.awg.Wait()
	for _, l := range s.lanes {
		_ = l.client.Close()
	}
	return err
}

func (s *Sender) stopping() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

func (s *Sender) run(l *lane) {
	defer s.wg.Done()
	for m := range l.q {
		if s.stopping() {
			if s.cfg.KeepOnClose {
				s.track(-1)
				continue
			}
			s.deadLetter(m, "not_sent_before_close", "", "", 0)
			continue
		}
		s.deliver(l, m)
	}
}

// deliver tries m until it is acknowledged, refused or out of attempts.
func (s *Sender) deliver(l *lane, m Message) {
	var lastAck, lastErr string
	for attempt := 1; ; attempt++ {
		ack, err := s.attempt(l, m)
		switch {
		case err == nil && ack == hl7.AA:
			s.stats.delivered.Add(1)
			s.audits <- auditJob{ev: s.event(m, "hl7.oru.delivered", audit.OutcomeSuccess, "", string(ack), "", attempt), done: m.Finished}
			return
		case err == nil && ack == hl7.AE:
			// The destination refuses the content: re-sending it unchanged cannot help.
			s.deadLetter(m, "refused_ae", string(ack), "", attempt)
			return
		case err == nil:
			lastAck, lastErr = string(ack), ""
		default:
			lastAck, lastErr = "", err.Error()
		}
		if attempt >= s.cfg.MaxAttempts {
			s.deadLetter(m, "max_attempts", lastAck, lastErr, attempt)
			return
		}
		s.stats.retries.Add(1)
		select {
		case <-s.cfg.After(s.cfg.Backoff(attempt)):
		case <-s.stop:
			if s.cfg.KeepOnClose {
				s.track(-1)
				return
			}
			s.deadLetter(m, "not_sent_before_close", lastAck, lastErr, attempt)
			return
		}
	}
}

// errAckMismatch: the ACK acknowledges another message.
var errAckMismatch = errors.New("outbound: ACK for another control id")

func (s *Sender) attempt(l *lane, m Message) (hl7.AckCode, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.AckTimeout)
	defer cancel()
	reply, err := l.client.Send(ctx, m.Bytes)
	if err != nil {
		return "", err
	}
	code, ctl, _, err := hl7.ParseAck(reply)
	if err != nil {
		return "", fmt.Errorf("outbound: unreadable ACK: %w", err)
	}
	if ctl != m.ControlID {
		// The connection is out of step with us: start over on a fresh one.
		l.client.Reset()
		return "", fmt.Errorf("%w: %q", errAckMismatch, ctl)
	}
	return code, nil
}

// auditPayload holds no PHI: the message is represented by its SHA-256.
type auditPayload struct {
	SHA256      string `json:"sha256"`
	Destination string `json:"destination"`
	Addr        string `json:"addr"`
	ControlID   string `json:"control_id"`
	Ack         string `json:"ack,omitempty"`
	Attempts    int    `json:"attempts"`
	Error       string `json:"error,omitempty"`
	DeadLetter  int64  `json:"dead_letter_id,omitempty"`
}

func (s *Sender) event(m Message, action string, outcome audit.Outcome, reason, ack, errText string, attempts int) audit.Event {
	sum := sha256.Sum256(m.Bytes)
	return audit.Event{Time: s.cfg.Now(), Actor: audit.Actor{Kind: audit.ActorService, ID: "hl7-outbound", AuthMethod: "internal"},
		Action: action, Object: audit.Object{Type: "hl7_message", ID: m.ControlID}, Outcome: outcome, Reason: reason,
		Payload: auditPayload{SHA256: hex.EncodeToString(sum[:]), Destination: s.cfg.Name, Addr: s.cfg.Addr,
			ControlID: m.ControlID, Ack: ack, Attempts: attempts, Error: errText}}
}

type auditJob struct {
	ev   audit.Event
	done func()
}

func (s *Sender) auditLoop() {
	defer s.awg.Done()
	for j := range s.audits {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if _, err := s.cfg.Audit.RecordNow(ctx, j.ev); err != nil {
			s.stats.auditFailures.Add(1)
		}
		cancel()
		if j.done != nil {
			j.done()
		}
		s.track(-1)
	}
}

func deadLetterAAD(dest, ctl string) []byte { return []byte("hl7-dead-letter/" + dest + "/" + ctl) }

// deadLetter stores m sealed with its audit event in one transaction. If that fails the
// failure is counted (AuditFailures) and the message is lost to this process: the event
// cannot be recorded either, which `vigil audit verify` cannot see, so Stats must be watched.
func (s *Sender) deadLetter(m Message, reason, ack, errText string, attempts int) {
	defer s.track(-1)
	if m.Finished != nil {
		defer m.Finished()
	}
	s.stats.dead.Add(1)
	ev := s.event(m, "hl7.oru.dead_lettered", audit.OutcomeFailure, reason, ack, errText, attempts)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := func() error {
		sealed, err := s.cfg.Sealer.Seal(ctx, m.Bytes, deadLetterAAD(s.cfg.Name, m.ControlID))
		if err != nil {
			return err
		}
		sum := sha256.Sum256(m.Bytes)
		return pgx.BeginFunc(ctx, s.cfg.Pool, func(tx pgx.Tx) error {
			var id int64
			if err := tx.QueryRow(ctx, `INSERT INTO interop_hl7_dead_letters (destination, patient_key, control_id,
				message_sealed, message_sha256, reason, last_ack, last_error, attempts, created_at)
				VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) RETURNING id`, s.cfg.Name, m.PatientKey, m.ControlID, sealed, sum[:],
				reason, ack, errText, attempts, ev.Time).Scan(&id); err != nil {
				return err
			}
			p := ev.Payload.(auditPayload)
			p.DeadLetter = id
			ev.Payload = p
			_, err := s.cfg.Audit.Record(ctx, tx, ev)
			return err
		})
	}()
	if err != nil {
		s.stats.auditFailures.Add(1)
	}
}

// DeadLetter is a message that was not delivered.
type DeadLetter struct {
	ID         int64
	PatientKey string
	ControlID  string
	Message    []byte // opened
	Reason     string // refused_ae, max_attempts, not_sent_before_close
	LastAck    string
	LastError  string
	Attempts   int
	CreatedAt  time.Time
}

// DeadLetters returns up to limit dead letters of this destination, oldest first, opened.
func (s *Sender) DeadLetters(ctx context.Context, limit int) ([]DeadLetter, error) {
	rows, err := s.cfg.Pool.Query(ctx, `SELECT id, patient_key, control_id, message_sealed, reason, last_ack, last_error,
		attempts, created_at FROM interop_hl7_dead_letters WHERE destination = $1 ORDER BY id LIMIT $2`, s.cfg.Name, limit)
	if err != nil {
		return nil, fmt.Errorf("outbound: dead letters of %s: %w", s.cfg.Name, err)
	}
	defer rows.Close()
	var out []DeadLetter
	for rows.Next() {
		var d DeadLetter
		var sealed []byte
		if err := rows.Scan(&d.ID, &d.PatientKey, &d.ControlID, &sealed, &d.Reason, &d.LastAck, &d.LastError, &d.Attempts, &d.CreatedAt); err != nil {
			return nil, fmt.Errorf("outbound: dead letters of %s: %w", s.cfg.Name, err)
		}
		if d.Message, err = s.cfg.Sealer.Open(ctx, sealed, deadLetterAAD(s.cfg.Name, d.ControlID)); err != nil {
			return nil, fmt.Errorf("outbound: open dead letter %d: %w", d.ID, err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// Requeue moves dead letter id back into the queue (audited "hl7.oru.requeued" by actor by,
// in the transaction that deletes the row). The message is re-sent as it was (same control
// id: the destination may recognise a duplicate).
func (s *Sender) Requeue(ctx context.Context, by audit.Actor, id int64) error {
	var d DeadLetter
	var sealed []byte
	err := pgx.BeginFunc(ctx, s.cfg.Pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `DELETE FROM interop_hl7_dead_letters WHERE id = $1 AND destination = $2
			RETURNING patient_key, control_id, message_sealed`, id, s.cfg.Name).Scan(&d.PatientKey, &d.ControlID, &sealed)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrDeadLetterNotFound
		}
		if err != nil {
			return err
		}
		if d.Message, err = s.cfg.Sealer.Open(ctx, sealed, deadLetterAAD(s.cfg.Name, d.ControlID)); err != nil {
			return err
		}
		m := Message{PatientKey: d.PatientKey, ControlID: d.ControlID, Bytes: d.Message}
		ev := s.event(m, "hl7.oru.requeued", audit.OutcomeSuccess, "", "", "", 0)
		ev.Actor = by
		p := ev.Payload.(auditPayload)
		p.DeadLetter = id
		ev.Payload = p
		if _, err := s.cfg.Audit.Record(ctx, tx, ev); err != nil {
			return err
		}
		// Queue before commit: if queueing fails the row stays.
		return s.Enqueue(ctx, m)
	})
	if err != nil {
		return fmt.Errorf("outbound: requeue dead letter %s: %w", strconv.FormatInt(id, 10), err)
	}
	return nil
}
