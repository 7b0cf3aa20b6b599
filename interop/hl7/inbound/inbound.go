// Package inbound receives ADT messages from a hospital's EHR over MLLP: it parses and
// validates each message against Vigil's inbound ADT profile (interop/hl7.ParseADT), hands
// the resulting command to the core side (ADTApplier), answers with an original-mode ACK
// (AA, or AE/AR with coded ERR segments) and audits every message, accepted or not. A
// refused message changes nothing.
package inbound

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/interop"
	"github.com/vigilhealth/vigil/interop/hl7"
	"github.com/vigilhealth/vigil/interop/mllp"
)

// ADTApplier applies validated ADT commands to Vigil's patients. The core side implements
// it (it is wired by the server); this package owns the interface.
type ADTApplier interface {
	// ApplyADT applies cmd — admit (create or re-admit the patient by MRN, place them on the
	// ward named by Location.PointOfCare), transfer, discharge, update demographics, cancel
	// an admit or a discharge — in one transaction together with its own audit event
	// (actor by). It MUST apply nothing when it returns an error. It MUST be idempotent for
	// a repeated (cmd.SendingFacility, cmd.ControlID): a message re-sent after a lost ACK
	// returns nil without applying twice. To have the sender told why, it returns an error
	// wrapping ErrUnknownPatient, ErrUnknownLocation or ErrPatientState (answered AE); any
	// other error is answered AR (internal error: the sender may retry later).
	ApplyADT(ctx context.Context, by audit.Actor, cmd hl7.ADT) error
}

// Outcomes an ADTApplier reports for content it cannot apply (answered AE).
var (
	// ErrUnknownPatient: the message names a patient Vigil does not know (e.g. A02 before A01).
	ErrUnknownPatient = errors.New("unknown patient")
	// ErrUnknownLocation: the point of care names no ward of Vigil.
	ErrUnknownLocation = errors.New("unknown location")
	// ErrPatientState: the event does not fit the patient's state (discharge of a patient
	// not admitted, cancel of an admit that did not happen).
	ErrPatientState = errors.New("event does not fit the patient's state")
)

// Config configures a Receiver.
type Config struct {
	// Applier applies accepted commands. Required.
	Applier ADTApplier
	// Audit records one event per message. Required.
	Audit interop.Recorder
	// Profile tunes what is accepted (versions, processing ids, time zone); zero is the
	// documented default profile.
	Profile hl7.ADTOptions
	// Limits bound the parser. Default hl7.Limits defaults.
	Limits hl7.Limits
	// Application and Facility are written as MSH-3 and MSH-4 of every ACK. Default
	// "VIGIL" and "".
	Application, Facility string
	// Authenticate names the principal behind a message: the peer address and the
	// message's sending application and facility (MSH-3.1, MSH-4.1; empty when unparseable).
	// An error refuses the message (AR, code "unauthorized"). Default: a service actor
	// "hl7:<application>@<facility>" authenticated by "none" (network-level trust; the
	// identity wiring replaces it).
	Authenticate func(ctx context.Context, peer net.Addr, application, facility string) (audit.Actor, error)
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Receiver is an mllp.Handler for inbound ADT. It is safe for concurrent use.
type Receiver struct {
	cfg   Config
	seq   atomic.Uint64
	base  string
	stats struct{ accepted, errors, rejected, auditFailures atomic.Int64 }
}

// New returns a receiver.
func New(cfg Config) (*Receiver, error) {
	if cfg.Applier == nil || cfg.Audit == nil {
		return nil, errors.New("inbound: Applier and Audit are required")
	}
	if cfg.Application == "" {
		cfg.Application = "VIGIL"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Authenticate == nil {
		cfg.Authenticate = func(_ context.Context, _ net.Addr, app, fac string) (audit.Actor, error) {
			return audit.Actor{Kind: audit.ActorService, ID: clip("hl7:" + app + "@" + fac), AuthMethod: "none"}, nil
		}
	}
	var r [5]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, fmt.Errorf("inbound: control id prefix: %w", err)
	}
	return &Receiver{cfg: cfg, base: base32.StdEncoding.EncodeToString(r[:])}, nil
}

// Stats counts the messages answered AA, AE and AR, and the audit events that could not be
// recorded (a refusal that cannot be audited is answered AR; an applied message stays AA).
type Stats struct{ Accepted, Errors, Rejected, AuditFailures int64 }

// Stats returns the counters.
func (r *Receiver) Stats() Stats {
	return Stats{Accepted: r.stats.accepted.Load(), Errors: r.stats.errors.Load(), Rejected: r.stats.rejected.Load(),
		AuditFailures: r.stats.auditFailures.Load()}
}

// controlID returns a unique MSH-10 for an ACK (at most 20 characters, as v2.5.1 allows).
func (r *Receiver) controlID() string {
	return fmt.Sprintf("A%s%d", r.base, r.seq.Add(1)%1e11)
}

var _ mllp.Handler = (*Receiver)(nil)

// Audit actions of inbound messages.
const (
	ActionAccepted = "hl7.adt.accepted" // AA: applied
	ActionRefused  = "hl7.adt.refused"  // AE or AR: nothing applied
)

// auditPayload is the audit event's payload. It holds no PHI: the message itself is not
// kept, only its SHA-256.
type auditPayload struct {
	SHA256              string   `json:"sha256,omitempty"`
	Bytes               int      `json:"bytes"`
	Event               string   `json:"event,omitempty"`
	Kind                string   `json:"kind,omitempty"`
	Ack                 string   `json:"ack"`
	Problems            []string `json:"problems,omitempty"`
	SendingApplication  string   `json:"sending_application,omitempty"`
	SendingFacility     string   `json:"sending_facility,omitempty"`
	AcknowledgementID   string   `json:"ack_control_id"`
	MessageControlID    string   `json:"control_id,omitempty"`
	ApplicationErrorMsg string   `json:"error,omitempty"`
}

// ServeMLLP answers one message.
func (r *Receiver) ServeMLLP(ctx context.Context, req mllp.Request) []byte {
	now := r.cfg.Now()
	ackID := r.controlID()
	opt := hl7.AckOptions{SendingApplication: r.cfg.Application, SendingFacility: r.cfg.Facility, ControlID: ackID, Now: now}
	pl := auditPayload{Bytes: len(req.Message), AcknowledgementID: ackID}
	ev := audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "hl7:unidentified", AuthMethod: "none"},
		Object: audit.Object{Type: "hl7_message"}, Time: now}
	if req.Peer != nil {
		ev.SourceAddr = req.Peer.String()
	}
	if req.Message != nil {
		sum := sha256.Sum256(req.Message)
		pl.SHA256 = hex.EncodeToString(sum[:])
	}

	refuse := func(m *hl7.Message, rej *hl7.Rejection) []byte {
		pl.Ack = string(rej.Ack)
		for _, p := range rej.Problems {
			pl.Problems = append(pl.Problems, p.Code)
		}
		ev.Action, ev.Outcome, ev.Reason, ev.Payload = ActionRefused, audit.OutcomeRejected, rej.Reason(), pl
		if rej.Reason() == "internal_error" {
			ev.Outcome = audit.OutcomeFailure
		}
		if _, err := r.cfg.Audit.RecordNow(ctx, ev); err != nil {
			r.stats.auditFailures.Add(1)
			// The refusal could not be audited: answer AR so the sender retries later.
			rej = internal("the refusal could not be recorded")
		}
		if rej.Ack == hl7.AE {
			r.stats.errors.Add(1)
		} else {
			r.stats.rejected.Add(1)
		}
		return hl7.Ack(m, rej.Ack, rej.Problems, opt)
	}

	if req.Err != nil {
		code, text := "malformed_frame", "bytes outside an MLLP frame"
		if errors.Is(req.Err, mllp.ErrTooLarge) {
			code, text = "message_too_large", "message larger than this interface accepts"
		}
		return refuse(nil, reject(hl7.AR, code, hl7.CodeSegmentSequence, "", 0, text))
	}
	m, err := hl7.Parse(req.Message, r.cfg.Limits)
	if err != nil {
		switch {
		case errors.Is(err, hl7.ErrEncodingCharacters):
			return refuse(nil, reject(hl7.AR, "unsupported_encoding_characters", hl7.CodeDataType, "MSH", 2, `field separator and encoding characters must be |^~\&`))
		case errors.Is(err, hl7.ErrTooLarge):
			return refuse(nil, reject(hl7.AR, "message_too_large", hl7.CodeSegmentSequence, "", 0, "too many segments or fields"))
		case errors.Is(err, hl7.ErrNoMSH):
			return refuse(nil, reject(hl7.AR, "missing_msh", hl7.CodeSegmentSequence, "MSH", 0, "a message starts with an MSH segment"))
		default:
			return refuse(nil, reject(hl7.AR, "malformed_message", hl7.CodeSegmentSequence, "", 0, "not an HL7 v2 message"))
		}
	}
	h := m.MSH()
	pl.SendingApplication, pl.SendingFacility = clip(h.Value(3, 1)), clip(h.Value(4, 1))
	pl.MessageControlID, pl.Event = clip(h.Value(10, 0)), clip(h.Value(9, 2))
	ev.Object.ID, ev.RequestID = pl.MessageControlID, pl.MessageControlID
	actor, err := r.cfg.Authenticate(ctx, req.Peer, pl.SendingApplication, pl.SendingFacility)
	if err != nil {
		return refuse(m, reject(hl7.AR, "unauthorized", hl7.CodeUnknownKey, "MSH", 3, "sender not authorized on this interface"))
	}
	ev.Actor = actor
	cmd, rej := hl7.ParseADT(m, r.cfg.Profile)
	if rej != nil {
		return refuse(m, rej)
	}
	pl.Kind = string(cmd.Kind)
	if err := r.cfg.Applier.ApplyADT(ctx, actor, cmd); err != nil {
		var rj *hl7.Rejection
		var se *StateError
		switch {
		case errors.Is(err, ErrUnknownPatient):
			rj = reject(hl7.AE, "unknown_patient", hl7.CodeUnknownKey, "PID", 3, "no such patient")
		case errors.Is(err, ErrUnknownLocation):
			rj = reject(hl7.AE, "unknown_location", hl7.CodeTableValue, "PV1", 3, "no ward with this point of care")
		case errors.As(err, &se):
			rj = reject(hl7.AE, se.Code, hl7.CodeInternal, "", 0, se.Text)
		case errors.Is(err, ErrPatientState):
			rj = reject(hl7.AE, "patient_state_conflict", hl7.CodeInternal, "", 0, "the event does not fit the patient's current state")
		default:
			rj = internal("the message could not be applied; send it again later")
		}
		return refuse(m, rj)
	}
	pl.Ack = string(hl7.AA)
	ev.Action, ev.Outcome, ev.Payload = ActionAccepted, audit.OutcomeSuccess, pl
	// The change itself was audited in its own transaction by the applier; this event
	// records the message and its answer. If it cannot be recorded the change stands
	// (answering AR would make the sender apply it twice), so the ACK is still AA.
	if _, err := r.cfg.Audit.RecordNow(ctx, ev); err != nil {
		r.stats.auditFailures.Add(1)
	}
	r.stats.accepted.Add(1)
	return hl7.Ack(m, hl7.AA, nil, opt)
}

func reject(ack hl7.AckCode, code, hl7code, seg string, field int, text string) *hl7.Rejection {
	return &hl7.Rejection{Ack: ack, Problems: []hl7.Problem{{Code: code, HL7Code: hl7code, Segment: seg, Field: field, Text: text}}}
}

func internal(text string) *hl7.Rejection {
	return reject(hl7.AR, "internal_error", hl7.CodeInternal, "", 0, text)
}

// clip keeps an identifier from the wire within what an audit event field holds (and out of
// the way of a hostile sender's megabyte-long "control id").
func clip(s string) string {
	s = strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "?")
	if len(s) > 200 {
		return s[:200]
	}
	return s
}
