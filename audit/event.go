package audit

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// ActorKind says what kind of principal acted.
type ActorKind string

// Actor kinds.
const (
	ActorUser    ActorKind = "user"
	ActorDevice  ActorKind = "device"
	ActorService ActorKind = "service"
)

// Unauthenticated is the actor of a request refused before anyone was authenticated: a
// failed sign-in, a request without a session, a rejected request. Nobody is attributed; the
// event's request id and source address say where it came from, and its object names the
// account a sign-in claimed. Every action a person or device takes after authentication
// carries that principal instead.
var Unauthenticated = Actor{Kind: ActorUser, ID: "unauthenticated", AuthMethod: "none"}

// Actor is who acted and how they proved it (e.g. "password+totp", "device-signature",
// "mtls", "internal", "none" for an unauthenticated request).
//
// Its JSON form uses the casing of the rest of the API: {"kind","id","auth_method"}. (The log
// leaf has its own binary encoding, audit/leaf; this form is for answers and payloads.)
type Actor struct {
	Kind       ActorKind `json:"kind"`
	ID         string    `json:"id"`
	AuthMethod string    `json:"auth_method,omitempty"`
}

// Object is what was acted on.
type Object struct {
	Type string `json:"type"` // e.g. "upload", "patient", "alarm", "rule", "key", "http"
	ID   string `json:"id,omitempty"`
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
