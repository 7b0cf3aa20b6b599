package audit

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit/leaf"
)

// ActorKind says what kind of principal acted.
type ActorKind string

// Actor kinds.
const (
	ActorUser    ActorKind = "user"
	ActorDevice  ActorKind = "device"
	ActorService ActorKind = "service"
)

// Actor is who acted and how they proved it (e.g. "password+totp", "device-signature",
// "mtls", "internal", "none" for an unauthenticated request).
type Actor struct {
	Kind       ActorKind
	ID         string
	AuthMethod string
}

// Object is what was acted on.
type Object struct {
	Type string // e.g. "upload", "patient", "alarm", "rule", "key", "http"
	ID   string
}

// Outcome of the action.
type Outcome string

// Outcomes.
const (
	OutcomeSuccess  Outcome = "success"  // the action took effect
	OutcomeRejected Outcome = "rejected" // refused on bad input or policy; nothing was changed
	OutcomeFailure  Outcome = "failure"  // attempted and failed for an internal reason
)

// Event is one audited action. Fields other than Payload are metadata (no PHI may be put in
// them: use ids, never names or values). Payload holds the details of the action and may hold
// PHI; it stays in PostgreSQL and only a salted SHA-256 commitment to it enters the log, so it
// can be erased later while every proof stays valid.
type Event struct {
	ID         uuid.UUID // UUIDv7; assigned by Record when zero
	Time       time.Time // assigned by Record (from the Recorder clock) when zero
	Actor      Actor
	Action     string // dotted verb, e.g. "upload.accepted", "auth.login.failed"
	Object     Object
	Outcome    Outcome
	Reason     string // stable machine code for a rejection or failure, e.g. "invalid_signature"
	RequestID  string
	SourceAddr string
	Payload    any // JSON-marshalable details; nil for none
}

// ErrInvalidEvent is returned by Record for an event that is not well formed; nothing is written.
var ErrInvalidEvent = errors.New("invalid audit event")

// maxField is the longest text field an event may carry (identifiers and codes, not prose).
const maxField = 1024

var actionRE = regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$`)

// Validate reports whether the event is well formed.
func (e *Event) Validate() error {
	switch e.Actor.Kind {
	case ActorUser, ActorDevice, ActorService:
	default:
		return fmt.Errorf("%w: actor kind %q", ErrInvalidEvent, e.Actor.Kind)
	}
	if !actionRE.MatchString(e.Action) {
		return fmt.Errorf("%w: action %q is not a dotted verb", ErrInvalidEvent, e.Action)
	}
	switch e.Outcome {
	case OutcomeSuccess, OutcomeRejected, OutcomeFailure:
	default:
		return fmt.Errorf("%w: outcome %q", ErrInvalidEvent, e.Outcome)
	}
	if e.Object.Type == "" {
		return fmt.Errorf("%w: object type is empty", ErrInvalidEvent)
	}
	for name, v := range map[string]string{"actor id": e.Actor.ID, "actor auth": e.Actor.AuthMethod,
		"object type": e.Object.Type, "object id": e.Object.ID, "reason": e.Reason,
		"request id": e.RequestID, "source address": e.SourceAddr, "action": e.Action} {
		if len(v) > maxField || !utf8.ValidString(v) || strings.ContainsRune(v, 0) {
			return fmt.Errorf("%w: %s is longer than %d bytes or not valid text", ErrInvalidEvent, name, maxField)
		}
	}
	return nil
}

// Record writes ev into the audit outbox inside tx, the transaction of the action it
// describes: if tx commits the event exists, if tx rolls back it never did. It returns the
// event's id. Record MUST be called with the action's own transaction, never a separate one.
func Record(ctx context.Context, tx pgx.Tx, ev Event) (uuid.UUID, error) {
	r, err := prepare(ev, time.Now)
	if err != nil {
		return uuid.Nil, fmt.Errorf("record audit event %s: %w", ev.Action, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO audit_events (`+insertColumnList+`)
		VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19)`, r...); err != nil {
		return uuid.Nil, fmt.Errorf("record audit event %s: %w", ev.Action, err)
	}
	return r[0].(uuid.UUID), nil
}

// RecordMany writes many events into the outbox inside tx with one COPY: the bulk path of
// the device upload pipeline. Either every event is valid and written, or none is (the first
// invalid one is reported with its index). It returns the ids in the order of evs.
func RecordMany(ctx context.Context, tx pgx.Tx, evs []Event) ([]uuid.UUID, error) {
	rows := make([][]any, len(evs))
	ids := make([]uuid.UUID, len(evs))
	now := time.Now()
	clock := func() time.Time { return now }
	for i, ev := range evs {
		r, err := prepare(ev, clock)
		if err != nil {
			return nil, fmt.Errorf("record audit events: event %d (%s): %w", i, ev.Action, err)
		}
		rows[i] = r
		ids[i] = r[0].(uuid.UUID)
	}
	if len(rows) == 0 {
		return ids, nil
	}
	n, err := tx.CopyFrom(ctx, pgx.Identifier{"audit_events"}, insertColumns, pgx.CopyFromRows(rows))
	if err != nil {
		return nil, fmt.Errorf("record audit events: copy %d events: %w", len(rows), err)
	}
	if int(n) != len(rows) {
		return nil, fmt.Errorf("record audit events: copied %d of %d", n, len(rows))
	}
	return ids, nil
}

var insertColumns = []string{"id", "occurred_at", "actor_kind", "actor_id", "actor_auth", "action",
	"object_type", "object_id", "outcome", "reason", "request_id", "source_addr", "payload", "salt",
	"actor_id_c", "object_id_c", "request_id_c", "source_addr_c", "payload_commitment"}

var insertColumnList = strings.Join(insertColumns, ", ")

// prepare validates ev, fills id and time, draws the salt and computes the commitments; it
// returns the values of insertColumns.
func prepare(ev Event, now func() time.Time) ([]any, error) {
	if ev.ID == uuid.Nil {
		id, err := uuid.NewV7()
		if err != nil {
			return nil, fmt.Errorf("new id: %w", err)
		}
		ev.ID = id
	}
	if ev.Time.IsZero() {
		ev.Time = now()
	}
	ev.Time = ev.Time.UTC().Truncate(time.Microsecond) // PostgreSQL precision
	if err := ev.Validate(); err != nil {
		return nil, err
	}
	var payload []byte
	if ev.Payload != nil {
		b, err := json.Marshal(ev.Payload)
		if err != nil {
			return nil, fmt.Errorf("%w: payload: %v", ErrInvalidEvent, err)
		}
		payload = capPayload(b)
	}
	salt := make([]byte, 32)
	if _, err := rand.Read(salt); err != nil {
		return nil, fmt.Errorf("salt: %w", err)
	}
	ac := leaf.Commit(salt, leaf.LabelActorID, []byte(ev.Actor.ID))
	oc := leaf.Commit(salt, leaf.LabelObjectID, []byte(ev.Object.ID))
	rc := leaf.Commit(salt, leaf.LabelRequestID, []byte(ev.RequestID))
	sc := leaf.Commit(salt, leaf.LabelSourceAddr, []byte(ev.SourceAddr))
	pc := PayloadCommitment(salt, payload)
	return []any{ev.ID, ev.Time, string(ev.Actor.Kind), ev.Actor.ID, ev.Actor.AuthMethod, ev.Action,
		ev.Object.Type, ev.Object.ID, string(ev.Outcome), ev.Reason, ev.RequestID, ev.SourceAddr,
		nullJSON(payload), salt, ac[:], oc[:], rc[:], sc[:], pc[:]}, nil
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
