package chain

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit/leaf"
)

// StoredEvent is an audit event as it is stored in the outbox, with its commitments and its
// place in the log. Identifiers and payload are nil once erased under a retention policy.
type StoredEvent struct {
	ID         uuid.UUID       `json:"id"`
	Seq        int64           `json:"seq"`
	Time       time.Time       `json:"time"`
	RecordedAt time.Time       `json:"recorded_at"`
	ActorKind  string          `json:"actor_kind"`
	ActorID    *string         `json:"actor_id"`
	ActorAuth  string          `json:"actor_auth"`
	Action     string          `json:"action"`
	ObjectType string          `json:"object_type"`
	ObjectID   *string         `json:"object_id"`
	Outcome    string          `json:"outcome"`
	Reason     string          `json:"reason"`
	RequestID  *string         `json:"request_id"`
	SourceAddr *string         `json:"source_addr"`
	Payload    json.RawMessage `json:"payload,omitempty"`
	Salt       []byte          `json:"-"`
	BatchID    *uuid.UUID      `json:"batch_id"`
	BatchIndex *int32          `json:"batch_index"`
	Session    uuid.UUID       `json:"session_id"`  // the writer session (nil UUID when the row has none)
	SessionSeq int64           `json:"session_seq"` // the event's number in its session
	AuthMAC    []byte          `json:"-"`           // the session's authentication tag

	ActorIDC, ObjectIDC, RequestIDC, SourceAddrC, PayloadC leaf.Hash `json:"-"`
}

const eventColumns = `id, seq, occurred_at, recorded_at, actor_kind, actor_id, actor_auth, action,
	object_type, object_id, outcome, reason, request_id, source_addr, payload, salt,
	actor_id_c, object_id_c, request_id_c, source_addr_c, payload_commitment, batch_id, batch_index,
	session_id, session_seq, auth_mac`

func scanStoredEvent(row pgx.CollectableRow) (StoredEvent, error) { return scanStoredEventExtra(row) }

// scanStoredEventExtra scans eventColumns followed by the extra destinations.
func scanStoredEventExtra(row interface{ Scan(...any) error }, extra ...any) (StoredEvent, error) {
	var e StoredEvent
	var payload *string
	var ac, oc, rc, sc, pc []byte
	var sess *uuid.UUID
	var sseq *int64
	dest := []any{&e.ID, &e.Seq, &e.Time, &e.RecordedAt, &e.ActorKind, &e.ActorID, &e.ActorAuth, &e.Action,
		&e.ObjectType, &e.ObjectID, &e.Outcome, &e.Reason, &e.RequestID, &e.SourceAddr, &payload, &e.Salt,
		&ac, &oc, &rc, &sc, &pc, &e.BatchID, &e.BatchIndex, &sess, &sseq, &e.AuthMAC}
	err := row.Scan(append(dest, extra...)...)
	if err != nil {
		return e, err
	}
	if sess != nil {
		e.Session = *sess
	}
	if sseq != nil {
		e.SessionSeq = *sseq
	}
	e.RecordedAt = e.RecordedAt.UTC()
	if payload != nil {
		e.Payload = json.RawMessage(*payload)
	}
	e.Time = e.Time.UTC()
	for _, c := range []struct {
		dst *leaf.Hash
		src []byte
	}{{&e.ActorIDC, ac}, {&e.ObjectIDC, oc}, {&e.RequestIDC, rc}, {&e.SourceAddrC, sc}, {&e.PayloadC, pc}} {
		if len(c.src) != leaf.HashSize {
			return e, fmt.Errorf("event %s: commitment of %d bytes", e.ID, len(c.src))
		}
		copy(c.dst[:], c.src)
	}
	return e, nil
}

// Leaf returns the PHI-free leaf form of the event (commitments only).
func (e *StoredEvent) Leaf() leaf.Event {
	return leaf.Event{
		ID: e.ID, Time: e.Time, RecordedAt: e.RecordedAt, Session: e.Session, SessionSeq: uint64(e.SessionSeq),
		ActorKind: e.ActorKind, ActorID: e.ActorIDC, ActorAuth: e.ActorAuth,
		Action: e.Action, ObjectType: e.ObjectType, ObjectID: e.ObjectIDC, Outcome: e.Outcome,
		Reason: e.Reason, RequestID: e.RequestIDC, SourceAddr: e.SourceAddrC, PayloadHash: e.PayloadC,
	}
}

// LeafHash is the RFC 6962 leaf hash of the event's canonical encoding in its batch tree.
func (e *StoredEvent) LeafHash() (leaf.Hash, error) {
	l := e.Leaf()
	b, err := l.Encode()
	if err != nil {
		return leaf.Hash{}, err
	}
	return leaf.LeafHash(b), nil
}

// errCommitment reports plaintext that does not match its commitment.
var errCommitment = errors.New("plaintext does not match its commitment")

// CheckCommitments checks every plaintext value still present against its commitment. After
// erasure (salt removed) no plaintext may remain.
func (e *StoredEvent) CheckCommitments() error {
	type field struct {
		label string
		value []byte
		set   bool
		c     leaf.Hash
	}
	str := func(p *string) ([]byte, bool) {
		if p == nil {
			return nil, false
		}
		return []byte(*p), true
	}
	a, aok := str(e.ActorID)
	o, ook := str(e.ObjectID)
	r, rok := str(e.RequestID)
	s, sok := str(e.SourceAddr)
	fields := []field{
		{leaf.LabelActorID, a, aok, e.ActorIDC},
		{leaf.LabelObjectID, o, ook, e.ObjectIDC},
		{leaf.LabelRequestID, r, rok, e.RequestIDC},
		{leaf.LabelSourceAddr, s, sok, e.SourceAddrC},
		{leaf.LabelPayload, e.Payload, true, e.PayloadC},
	}
	if e.Salt == nil {
		for _, f := range fields {
			if f.set && len(f.value) > 0 {
				return fmt.Errorf("%w: %s present but the salt is erased", errCommitment, f.label)
			}
		}
		return nil
	}
	cm := leaf.NewCommitter(e.Salt)
	for _, f := range fields {
		if !f.set {
			continue
		}
		if c := cm.Commit(f.label, f.value); !bytes.Equal(c[:], f.c[:]) {
			return fmt.Errorf("%w: %s", errCommitment, f.label)
		}
	}
	return nil
}

// leafColumns are the columns a leaf is made of, and the authentication tag (scanLeafEvent).
const leafColumns = `id, occurred_at, actor_kind, actor_id_c, actor_auth, action, object_type, object_id_c,
	outcome, reason, request_id_c, source_addr_c, payload_commitment, recorded_at, session_id, session_seq, auth_mac`

// leafRow is the leaf form of an event row and its authentication tag.
type leafRow struct {
	leaf.Event
	mac []byte
}

// scanLeafEvent scans leafColumns into the leaf form of an event.
func scanLeafEvent(row pgx.CollectableRow) (leafRow, error) {
	var lr leafRow
	e := &lr.Event
	var id uuid.UUID
	var ac, oc, rc, sc, pc []byte
	var sess *uuid.UUID
	var sseq *int64
	if err := row.Scan(&id, &e.Time, &e.ActorKind, &ac, &e.ActorAuth, &e.Action, &e.ObjectType, &oc,
		&e.Outcome, &e.Reason, &rc, &sc, &pc, &e.RecordedAt, &sess, &sseq, &lr.mac); err != nil {
		return lr, err
	}
	e.ID = id
	e.Time = e.Time.UTC()
	e.RecordedAt = e.RecordedAt.UTC()
	if sess != nil {
		e.Session = *sess
	}
	if sseq != nil {
		e.SessionSeq = uint64(*sseq)
	}
	for _, c := range []struct {
		dst *leaf.Hash
		src []byte
	}{{&e.ActorID, ac}, {&e.ObjectID, oc}, {&e.RequestID, rc}, {&e.SourceAddr, sc}, {&e.PayloadHash, pc}} {
		if len(c.src) != leaf.HashSize {
			return lr, fmt.Errorf("event %s: commitment of %d bytes", id, len(c.src))
		}
		copy(c.dst[:], c.src)
	}
	return lr, nil
}
