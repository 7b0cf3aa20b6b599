// Package leaf is the wire format of Vigil's audit log: the canonical, versioned encoding of
// one audit event, of the batch leaf that Trillian stores, the commitments that keep PHI out
// of both, and the RFC 6962 batch tree that ties events to their batch leaf. It holds no
// logic beyond encoding and hashing; docs/audit.md is its specification.
package leaf

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"time"
	"unicode/utf8"
)

// Version is the version byte of the batch leaf encoding.
const Version = 1

// EventVersion is the version byte of the event encoding. Version 2 added the record time,
// the writer session and its counter (docs/audit.md "Encoding version 2").
const EventVersion = 2

// HashSize is the size of every hash and commitment (SHA-256).
const HashSize = sha256.Size

// Hash is a SHA-256 value.
type Hash = [HashSize]byte

// ErrMalformed is returned by the decoders for input that is not a valid encoding.
var ErrMalformed = errors.New("malformed audit leaf encoding")

// Commitment labels: each identifier gets its own label, so equal values in different
// fields give unrelated commitments.
const (
	LabelActorID    = "actor_id"
	LabelObjectID   = "object_id"
	LabelRequestID  = "request_id"
	LabelSourceAddr = "source_addr"
	LabelPayload    = "payload"
)

// Commit is the keyed commitment HMAC-SHA256(key = salt, "vigil-audit-commit-v1" 0x00 label
// 0x00 value). The salt is 32 random bytes per event, stored next to the values in PostgreSQL
// and erased with them: without the salt the commitment reveals nothing, not even for
// low-entropy values such as IPv4 addresses; with it anyone can check the value.
func Commit(salt []byte, label string, value []byte) Hash {
	m := hmac.New(sha256.New, salt)
	m.Write([]byte("vigil-audit-commit-v1\x00"))
	m.Write([]byte(label))
	m.Write([]byte{0})
	m.Write(value)
	var out Hash
	copy(out[:], m.Sum(nil))
	return out
}

// Committer computes the commitments of one salt (Commit, without setting up the HMAC key
// again for every field). It is not safe for concurrent use.
type Committer struct{ m hash.Hash }

// NewCommitter returns the committer of salt.
func NewCommitter(salt []byte) *Committer { return &Committer{m: hmac.New(sha256.New, salt)} }

// Commit is Commit(salt, label, value).
func (c *Committer) Commit(label string, value []byte) Hash {
	c.m.Reset()
	c.m.Write([]byte("vigil-audit-commit-v1\x00"))
	c.m.Write([]byte(label))
	c.m.Write([]byte{0})
	c.m.Write(value)
	var out Hash
	c.m.Sum(out[:0])
	return out
}

// Event is the PHI-free content of one audit event as it is hashed into the log (encoding
// version 2). Identifiers that may point at a person (actor id, object id, request id,
// source address) and the payload appear only as commitments; the rest are codes chosen by
// Vigil's own code, never by a client or a patient.
type Event struct {
	ID          [16]byte  // UUIDv7
	Time        time.Time // when the action occurred; encoded at microsecond precision, UTC
	RecordedAt  time.Time // when the writer recorded the event (its clock); microseconds, UTC
	Session     [16]byte  // the writer session (audit_sessions) whose key authenticates the event
	SessionSeq  uint64    // the event's number in its session: 1, 2, 3, … with no gap
	ActorKind   string    // user, device, service
	ActorID     Hash      // Commit(salt, LabelActorID, actor id)
	ActorAuth   string    // how the actor authenticated
	Action      string    // dotted verb
	ObjectType  string
	ObjectID    Hash // Commit(salt, LabelObjectID, object id)
	Outcome     string
	Reason      string
	RequestID   Hash // Commit(salt, LabelRequestID, request id)
	SourceAddr  Hash // Commit(salt, LabelSourceAddr, source address)
	PayloadHash Hash // Commit(salt, LabelPayload, payload JSON) (empty payload when none)
}

// MaxString is the longest string field an encoding may carry.
const MaxString = 1<<16 - 1

// Encode returns the canonical encoding (see docs/audit.md): version byte, then the fields
// in order, strings as 2-byte big-endian length + UTF-8, hashes as 32 raw bytes, times as
// 8-byte big-endian signed microseconds since the Unix epoch, the session counter as 8-byte
// big-endian unsigned.
func (e *Event) Encode() ([]byte, error) {
	b := make([]byte, 0, 1+16+8+8+16+8+5*HashSize+64)
	b = append(b, EventVersion)
	b = append(b, e.ID[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(e.Time.UnixMicro()))
	b = binary.BigEndian.AppendUint64(b, uint64(e.RecordedAt.UnixMicro()))
	b = append(b, e.Session[:]...)
	b = binary.BigEndian.AppendUint64(b, e.SessionSeq)
	var err error
	put := func(s string) {
		if err != nil {
			return
		}
		if len(s) > MaxString || !utf8.ValidString(s) {
			err = fmt.Errorf("%w: string field of %d bytes (or not UTF-8)", ErrMalformed, len(s))
			return
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
		b = append(b, s...)
	}
	put(e.ActorKind)
	b = append(b, e.ActorID[:]...)
	put(e.ActorAuth)
	put(e.Action)
	put(e.ObjectType)
	b = append(b, e.ObjectID[:]...)
	put(e.Outcome)
	put(e.Reason)
	b = append(b, e.RequestID[:]...)
	b = append(b, e.SourceAddr[:]...)
	b = append(b, e.PayloadHash[:]...)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// DecodeEvent parses a canonical event encoding. It accepts only what Encode produces.
func DecodeEvent(b []byte) (Event, error) {
	var e Event
	r := reader{b: b}
	if v := r.byte(); v != EventVersion {
		return e, fmt.Errorf("%w: event version %d", ErrMalformed, v)
	}
	copy(e.ID[:], r.n(16))
	e.Time = time.UnixMicro(int64(binary.BigEndian.Uint64(r.n(8)))).UTC()
	e.RecordedAt = time.UnixMicro(int64(binary.BigEndian.Uint64(r.n(8)))).UTC()
	copy(e.Session[:], r.n(16))
	e.SessionSeq = binary.BigEndian.Uint64(r.n(8))
	e.ActorKind = r.str()
	e.ActorID = r.hash()
	e.ActorAuth = r.str()
	e.Action = r.str()
	e.ObjectType = r.str()
	e.ObjectID = r.hash()
	e.Outcome = r.str()
	e.Reason = r.str()
	e.RequestID = r.hash()
	e.SourceAddr = r.hash()
	e.PayloadHash = r.hash()
	if r.err != nil {
		return Event{}, r.err
	}
	if len(r.b) != 0 {
		return Event{}, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(r.b))
	}
	return e, nil
}

// MACSize is the size of an event's authentication tag (form v3, written since
// 2026-12-03): HMAC-SHA256 truncated to its first 128 bits (RFC 2104 section 5; the
// HMAC-SHA-256-128 of RFC 4868), as strong as the 128-bit security level of the log's
// Ed25519 checkpoint signatures and SHA-256 collision resistance.
const MACSize = 16

// MACSizeV2 is the size of the tags of form v2 (the whole HMAC-SHA256), written before
// form v3; verifiers accept both, telling them apart by length (and their labels differ, so
// one cannot be made from the other).
const MACSizeV2 = sha256.Size

const (
	macLabelV3 = "vigil-audit-event-mac-v3\x00"
	macLabelV2 = "vigil-audit-event-mac-v2\x00"
)

// EventMAC is the event's authentication tag (form v3): the first 16 bytes of
// HMAC-SHA256(key = the session key, "vigil-audit-event-mac-v3" 0x00 || the event's
// canonical encoding). The encoding holds the record time, the session and the counter, so a
// valid tag pins all of them. The session key never leaves the writer and the key ring (it
// is stored only wrapped): whoever can write to the database but not use the key ring cannot
// make a valid tag.
func EventMAC(key, encoded []byte) [MACSize]byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(macLabelV3))
	m.Write(encoded)
	var out [MACSize]byte
	copy(out[:], m.Sum(nil))
	return out
}

// EventMACV2 is the tag of form v2: HMAC-SHA256(key = the session key,
// "vigil-audit-event-mac-v2" 0x00 || the event's canonical encoding), all 32 bytes. Only
// verifiers use it (events tagged before form v3).
func EventMACV2(key, encoded []byte) [MACSizeV2]byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(macLabelV2))
	m.Write(encoded)
	var out [MACSizeV2]byte
	copy(out[:], m.Sum(nil))
	return out
}

// CheckEventMAC reports whether mac is a valid tag of the encoded event under key, of form
// v3 (16 bytes) or v2 (32 bytes), in constant time for a given length.
func CheckEventMAC(key, encoded, mac []byte) bool {
	switch len(mac) {
	case MACSize:
		want := EventMAC(key, encoded)
		return hmac.Equal(want[:], mac)
	case MACSizeV2:
		want := EventMACV2(key, encoded)
		return hmac.Equal(want[:], mac)
	}
	return false
}

// EventMACer computes EventMAC under one key without setting the key up for every event. It
// is not safe for concurrent use.
type EventMACer struct {
	m   hash.Hash
	sum [sha256.Size]byte
}

// NewEventMACer returns the EventMAC computer of key.
func NewEventMACer(key []byte) *EventMACer { return &EventMACer{m: hmac.New(sha256.New, key)} }

// MAC is EventMAC(key, encoded).
func (e *EventMACer) MAC(encoded []byte) [MACSize]byte {
	e.m.Reset()
	e.m.Write([]byte(macLabelV3))
	e.m.Write(encoded)
	var out [MACSize]byte
	copy(out[:], e.m.Sum(e.sum[:0]))
	return out
}

// LeafHash is the RFC 6962 leaf hash SHA-256(0x00 || data): the hash of an event encoding in
// its batch tree, and of a batch leaf in the Trillian log.
func LeafHash(data []byte) Hash {
	h := sha256.New()
	h.Write([]byte{0})
	h.Write(data)
	var out Hash
	copy(out[:], h.Sum(nil))
	return out
}

// Batch is the Trillian leaf of one sealed batch of events (encoding version 1).
type Batch struct {
	ID    [16]byte // UUIDv7 of the batch
	Count uint32   // number of events in the batch (the batch tree's size), ≥ 1
	Root  Hash     // RFC 6962 root over the events' leaf hashes, in batch order
}

// BatchLeafSize is the length of an encoded batch leaf.
const BatchLeafSize = 1 + 16 + 4 + HashSize

// Encode returns version byte, batch id, count (4-byte big-endian), root.
func (l *Batch) Encode() []byte {
	b := make([]byte, 0, BatchLeafSize)
	b = append(b, Version)
	b = append(b, l.ID[:]...)
	b = binary.BigEndian.AppendUint32(b, l.Count)
	return append(b, l.Root[:]...)
}

// IdentityHash is the leaf identity hash given to Trillian: SHA-256("vigil-audit-batch-v1"
// 0x00 batch id). It depends on the batch id only, so a batch sent twice (a retry after a
// timeout, a restart) is one leaf, whatever else happens.
func (l *Batch) IdentityHash() Hash {
	return sha256.Sum256(append([]byte("vigil-audit-batch-v1\x00"), l.ID[:]...))
}

// DecodeBatch parses a batch leaf.
func DecodeBatch(b []byte) (Batch, error) {
	var l Batch
	if len(b) != BatchLeafSize || b[0] != Version {
		return l, fmt.Errorf("%w: batch leaf of %d bytes", ErrMalformed, len(b))
	}
	copy(l.ID[:], b[1:17])
	l.Count = binary.BigEndian.Uint32(b[17:21])
	copy(l.Root[:], b[21:])
	if l.Count == 0 {
		return Batch{}, fmt.Errorf("%w: empty batch", ErrMalformed)
	}
	return l, nil
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) n(k int) []byte {
	if r.err != nil {
		return make([]byte, k)
	}
	if len(r.b) < k {
		r.err = fmt.Errorf("%w: truncated", ErrMalformed)
		return make([]byte, k)
	}
	out := r.b[:k]
	r.b = r.b[k:]
	return out
}

func (r *reader) byte() byte { return r.n(1)[0] }

func (r *reader) str() string {
	n := binary.BigEndian.Uint16(r.n(2))
	s := string(r.n(int(n)))
	if r.err == nil && !utf8.ValidString(s) {
		r.err = fmt.Errorf("%w: string is not UTF-8", ErrMalformed)
	}
	return s
}

func (r *reader) hash() Hash {
	var h Hash
	copy(h[:], r.n(HashSize))
	return h
}
