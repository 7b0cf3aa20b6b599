package alarms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
)

// Severity of an alarm. The zero value is invalid; higher is more severe.
type Severity int

// Severities, in increasing order.
const (
	SeverityLow      Severity = 1
	SeverityMedium   Severity = 2
	SeverityHigh     Severity = 3
	SeverityCritical Severity = 4
)

var severityNames = map[Severity]string{
	SeverityLow: "low", SeverityMedium: "medium", SeverityHigh: "high", SeverityCritical: "critical",
}

// String returns "low", "medium", "high" or "critical" ("invalid(N)" otherwise).
func (s Severity) String() string {
	if n, ok := severityNames[s]; ok {
		return n
	}
	return fmt.Sprintf("invalid(%d)", int(s))
}

// Valid reports whether s is one of the four severities.
func (s Severity) Valid() bool { _, ok := severityNames[s]; return ok }

// ParseSeverity parses the String form of a severity.
func ParseSeverity(name string) (Severity, error) {
	for s, n := range severityNames {
		if n == name {
			return s, nil
		}
	}
	return 0, fmt.Errorf("%w: unknown severity %q", ErrInvalidRequest, name)
}

// MarshalText encodes the severity by name (JSON "high").
func (s Severity) MarshalText() ([]byte, error) {
	if !s.Valid() {
		return nil, fmt.Errorf("marshal severity %d: invalid", int(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText decodes a severity name.
func (s *Severity) UnmarshalText(b []byte) error {
	v, err := ParseSeverity(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MarshalJSON encodes the severity by name ("high"), and the zero value — a severity not
// known — as null, so that a value holding one (an alarm, a transition) still encodes
// whole; any other invalid value is an error.
func (s Severity) MarshalJSON() ([]byte, error) {
	if s == 0 {
		return []byte("null"), nil
	}
	b, err := s.MarshalText()
	if err != nil {
		return nil, err
	}
	return json.Marshal(string(b))
}

// UnmarshalJSON decodes a severity name; null leaves the zero value (not known).
func (s *Severity) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*s = 0
		return nil
	}
	var name string
	if err := json.Unmarshal(b, &name); err != nil {
		return fmt.Errorf("%w: severity %s: want a name", ErrInvalidRequest, b)
	}
	return s.UnmarshalText([]byte(name))
}

// State of an alarm.
type State string

// States. An alarm is open while it is active or acknowledged; resolved is final.
const (
	StateActive       State = "active"       // raised and not acknowledged
	StateAcknowledged State = "acknowledged" // a clinician has taken responsibility
	StateResolved     State = "resolved"     // closed, automatically or by hand; final
)

// Alarm is one alarm of one patient for one rule.
type Alarm struct {
	ID              uuid.UUID       `json:"id"`
	PatientID       uuid.UUID       `json:"patient_id"`
	RuleID          string          `json:"rule_id"`
	RuleVersion     int             `json:"rule_version"` // version of the rule that last triggered it
	State           State           `json:"state"`
	Severity        Severity        `json:"severity"`      // current severity
	PeakSeverity    Severity        `json:"peak_severity"` // highest severity reached (JSON null if not known)
	Message         string          `json:"message"`       // human-readable cause (may hold PHI)
	Detail          json.RawMessage `json:"detail,omitempty"`
	OpenedAt        time.Time       `json:"opened_at"`
	LastTriggeredAt time.Time       `json:"last_triggered_at"`
	TriggerCount    int             `json:"trigger_count"`
	// Tier is the escalation tier: 0 is the primary team; each unacknowledged escalation
	// interval adds one, up to Config.MaxTier.
	Tier           int        `json:"tier"`
	AckedBy        string     `json:"acked_by,omitempty"`
	AckedAt        *time.Time `json:"acked_at,omitempty"`
	SilencedBy     string     `json:"silenced_by,omitempty"`
	SilencedUntil  *time.Time `json:"silenced_until,omitempty"`
	SilenceReason  string     `json:"silence_reason,omitempty"`
	NextEscalation *time.Time `json:"next_escalation_at,omitempty"`
	NextReminder   *time.Time `json:"next_reminder_at,omitempty"`
	ReminderCount  int        `json:"reminder_count"`
	ResolvedAt     *time.Time `json:"resolved_at,omitempty"`
	ResolvedBy     string     `json:"resolved_by,omitempty"`
	ResolveReason  string     `json:"resolve_reason,omitempty"`
	UpdatedAt      time.Time  `json:"updated_at"`
	Revision       int64      `json:"revision"` // increases by one with every transition
}

// Open reports whether the alarm is not resolved.
func (a *Alarm) Open() bool { return a.State != StateResolved }

// Silenced reports whether the alarm is silenced at time t.
func (a *Alarm) Silenced(t time.Time) bool {
	return a.SilencedUntil != nil && t.Before(*a.SilencedUntil)
}

// TransitionKind names one step of the lifecycle; it is also the suffix of the audit action
// ("alarm.opened", "alarm.acknowledged", …).
type TransitionKind string

// Transition kinds.
const (
	Opened             TransitionKind = "opened"               // a new alarm
	Retriggered        TransitionKind = "retriggered"          // condition raised again on an open alarm, same severity
	SeverityEscalated  TransitionKind = "severity_escalated"   // severity went up (an acknowledged alarm becomes active again)
	SeverityDeescalate TransitionKind = "severity_deescalated" // severity went down
	Acknowledged       TransitionKind = "acknowledged"         // by a person, who and when recorded
	Silenced           TransitionKind = "silenced"             // reminders muted until an expiry, with a reason
	SilenceExpired     TransitionKind = "silence_expired"      // the silence ran out
	Escalated          TransitionKind = "escalated"            // unacknowledged too long: next tier notified
	Reminded           TransitionKind = "reminder"             // unacknowledged: reminder sent
	Resolved           TransitionKind = "resolved"             // closed (automatically or by hand)
	// Worsened: the condition got worse within the same severity (a higher NEWS2, a value
	// further past the limit); an acknowledged alarm becomes active again, the message is
	// the current one.
	Worsened TransitionKind = "worsened"
)

// Transition is one committed change of an alarm, as given to the Notifier.
type Transition struct {
	Kind         TransitionKind `json:"kind"`
	Alarm        Alarm          `json:"alarm"` // the alarm after the transition
	At           time.Time      `json:"at"`
	Actor        audit.Actor    `json:"actor"`
	Reason       string         `json:"reason,omitempty"`
	AuditEventID uuid.UUID      `json:"audit_event_id"`
	// Readable is the alarm as a clinician reads it (the rule's name, priority, limit and
	// measured values in words and human units), set by Notify when an explainer is
	// installed (Service.SetExplainer; the rules engine installs its own). It holds no patient
	// identity: streams and webhooks name the patient by id only.
	Readable any `json:"readable,omitempty"`
}

// Notifier receives transitions after they commit. It is owned by this package and satisfied
// by the notification hub (SSE, webhooks).
//
// AlarmTransition MUST be safe for concurrent use, MUST NOT block for long (it runs on the
// ingest path: queue and return), and MUST NOT call back into the Service synchronously. It is
// called at most once per committed transition and never for a rolled-back one; a transition
// lost in a crash between commit and notify is still in the database and the audit trail.
type Notifier interface {
	AlarmTransition(ctx context.Context, t Transition)
}

// NotifierFunc adapts a function to Notifier.
type NotifierFunc func(ctx context.Context, t Transition)

// AlarmTransition calls f.
func (f NotifierFunc) AlarmTransition(ctx context.Context, t Transition) { f(ctx, t) }

// Signal is what a rule reports about its condition for one patient.
type Signal struct {
	PatientID   uuid.UUID
	RuleID      string
	RuleVersion int
	// Raise true: the condition holds (opens an alarm, or re-triggers / changes the severity of
	// the open one). Raise false: the condition has cleared (resolves the open alarm, if any).
	Raise    bool
	Severity Severity // required when Raise
	Message  string
	Detail   any // JSON-marshalable; stored with the alarm
	At       time.Time
	// Sustain (with Raise): the condition still holds, nothing changed. When the rule's alarm
	// is open nothing is written; when there is none (it was resolved by hand while the
	// condition held) a new alarm is opened: a manual resolve never silences a condition
	// that persists.
	Sustain bool
	// Worse (with Raise): the condition is worse than when last signalled, at the same
	// severity; the open alarm is re-alerted (Worsened) with the new message.
	Worse bool
}

// Filter selects alarms for List. Zero fields select everything.
type Filter struct {
	PatientID uuid.UUID
	RuleID    string
	States    []State // e.g. open alarms: StateActive, StateAcknowledged
	Limit     int     // default 100, at most 1000
}

// Errors callers branch on.
var (
	// ErrNotFound: no alarm with that id.
	ErrNotFound = errors.New("alarm not found")
	// ErrConflict: the alarm's state does not allow the action (e.g. acknowledging a resolved alarm).
	ErrConflict = errors.New("alarm state conflict")
	// ErrInvalidRequest: the request is malformed (empty reason, silence without expiry, …).
	ErrInvalidRequest = errors.New("invalid alarm request")
)

// RefusalError is a manual action (Acknowledge, Silence, Resolve) the lifecycle refused
// (ErrNotFound, ErrConflict or ErrInvalidRequest, which it wraps) whose rejection event
// (alarm.acknowledged, … with outcome rejected and Code as its reason) is committed. A refusal
// whose event could not be recorded is returned as the bare refusal joined with the audit
// failure, never as a RefusalError: RefusalRecorded tells the two apart, so that a caller
// takes the lifecycle's event as the request's one record only when it exists.
type RefusalError struct {
	Code         string    // the rejection's reason, e.g. "alarm_already_acknowledged"
	AuditEventID uuid.UUID // the committed rejection event
	Err          error     // the refusal (wraps ErrNotFound, ErrConflict or ErrInvalidRequest)
}

func (e *RefusalError) Error() string { return e.Err.Error() }
func (e *RefusalError) Unwrap() error { return e.Err }

// RefusalRecorded reports whether err is a refusal of the lifecycle whose rejection event is
// committed (a *RefusalError).
func RefusalRecorded(err error) bool {
	var r *RefusalError
	return errors.As(err, &r)
}
