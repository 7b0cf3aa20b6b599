package audit

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
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
	return nil
}

// Record writes ev into the audit outbox inside tx, the transaction of the action it
// describes: if tx commits the event exists, if tx rolls back it never did. It returns the
// event's id. Record MUST be called with the action's own transaction, never a separate one.
func Record(ctx context.Context, tx pgx.Tx, ev Event) (uuid.UUID, error) {
	if ev.ID == uuid.Nil {
		id, err := uuid.NewV7()
		if err != nil {
			return uuid.Nil, fmt.Errorf("record audit event: new id: %w", err)
		}
		ev.ID = id
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Time = ev.Time.UTC().Truncate(time.Microsecond) // PostgreSQL precision
	if err := ev.Validate(); err != nil {
		return uuid.Nil, fmt.Errorf("record audit event %s: %w", ev.Action, err)
	}
	var payload []byte
	if ev.Payload != nil {
		b, err := json.Marshal(ev.Payload)
		if err != nil {
			return uuid.Nil, fmt.Errorf("record audit event %s: %w: payload: %v", ev.Action, ErrInvalidEvent, err)
		}
		payload = b
	}
	salt := make([]byte, 32)
	if _, err := rand.Read(salt); err != nil {
		return uuid.Nil, fmt.Errorf("record audit event: salt: %w", err)
	}
	commit := PayloadCommitment(salt, payload)
	_, err := tx.Exec(ctx, `INSERT INTO audit_events
		(id, occurred_at, actor_kind, actor_id, actor_auth, action, object_type, object_id,
		 outcome, reason, request_id, source_addr, payload, payload_salt, payload_commitment)
		VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)`,
		ev.ID, ev.Time, string(ev.Actor.Kind), ev.Actor.ID, ev.Actor.AuthMethod, ev.Action,
		ev.Object.Type, ev.Object.ID, string(ev.Outcome), ev.Reason, ev.RequestID, ev.SourceAddr,
		nullJSON(payload), salt, commit[:])
	if err != nil {
		return uuid.Nil, fmt.Errorf("record audit event %s: %w", ev.Action, err)
	}
	return ev.ID, nil
}

// PayloadCommitment is SHA-256(salt || payload): a hiding commitment to the payload. With the
// salt erased, the commitment reveals nothing about the payload; with both, anyone can check it.
func PayloadCommitment(salt, payload []byte) [32]byte {
	h := sha256.New()
	h.Write(salt)
	h.Write(payload)
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

func nullJSON(b []byte) any {
	if b == nil {
		return nil
	}
	return string(b)
}
