// Package subscription is Vigil's FHIR R4 Subscription (the Subscriptions R5 Backport IG,
// topic-based, channel rest-hook): parsing a client's Subscription, storing it with its own
// core webhook (event type core.DirectTypePrefix + id), the dispatcher that follows the hub
// and turns each new vital-sign Observation or alarm (Flag) into a notification Bundle for
// the Subscriptions whose criteria match, checking the owner's policy at that moment before a
// full resource is sent, and enqueueing it with core.EnqueueWebhooks (signing, retries, dead
// letters and their audit stay core's). docs/interop.md#subscriptions.
package subscription

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/interop/fhir"
)

// Canonical URLs of the Subscriptions R5 Backport IG (R4) used by Vigil.
const (
	BackportIG = "http://hl7.org/fhir/uv/subscriptions-backport"
	// ExtFilterCriteria narrows a topic on Subscription._criteria ("Observation?patient=…").
	ExtFilterCriteria = BackportIG + "/StructureDefinition/backport-filter-criteria"
	// ExtPayloadContent on Subscription.channel._payload: id-only, full-resource (or empty).
	ExtPayloadContent = BackportIG + "/StructureDefinition/backport-payload-content"
	// ExtHeartbeatPeriod on Subscription.channel: send a heartbeat notification when nothing
	// was sent for this many seconds (valueUnsignedInt).
	ExtHeartbeatPeriod = BackportIG + "/StructureDefinition/backport-heartbeat-period"
	// ExtTopicCanonical lists a supported topic on the CapabilityStatement's Subscription.
	ExtTopicCanonical = BackportIG + "/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
	// IGCanonical is the IG the CapabilityStatement names in implementationGuide.
	IGCanonical = BackportIG + "/ImplementationGuide/hl7.fhir.uv.subscriptions-backport"
)

// Payload contents (backport-payload-content). Vigil sends id-only (the default) and
// full-resource.
const (
	ContentIDOnly       = "id-only"
	ContentFullResource = "full-resource"
)

// MimeType is the one channel payload type supported.
const MimeType = "application/fhir+json"

// Topic is a SubscriptionTopic Vigil serves, named by its canonical URL.
type Topic struct {
	URL      string // the canonical URL a Subscription's criteria names
	Resource string // the resource type of its notifications' focus
	Event    string // the hub event type that triggers it
	Title    string
}

// The topics.
var (
	TopicVitalSigns = Topic{URL: "https://vigil.health/fhir/SubscriptionTopic/vital-signs-observation", Resource: "Observation",
		Event: "observations", Title: "New vital-sign Observations (each upload's newly stored samples)"}
	TopicAlarmFlag = Topic{URL: "https://vigil.health/fhir/SubscriptionTopic/alarm-flag", Resource: "Flag",
		Event: "alarm.opened", Title: "New alarms, as Flags"}
	Topics = []Topic{TopicVitalSigns, TopicAlarmFlag}
)

// LookupTopic returns the topic of a canonical URL.
func LookupTopic(u string) (Topic, bool) {
	for _, t := range Topics {
		if t.URL == u {
			return t, true
		}
	}
	return Topic{}, false
}

// Stable codes of a refused Subscription (Error.Problem.Code). A published code never changes
// meaning. The destination codes are core's (invalid_webhook_url, webhook_url_credentials,
// webhook_destination_refused).
const (
	CodeInvalidSubscription = "invalid_subscription"             // not a Subscription resource, or a required element missing or wrong
	CodeUnknownTopic        = "unknown_subscription_topic"       // criteria names no topic Vigil serves
	CodeInvalidFilter       = "invalid_subscription_filter"      // a filter other than patient=, or a bad patient reference
	CodeUnsupportedChannel  = "unsupported_channel_type"         // a channel other than rest-hook
	CodeUnsupportedPayload  = "unsupported_payload"              // a payload type other than application/fhir+json, or content other than id-only/full-resource
	CodeUnsupportedElement  = "unsupported_subscription_element" // end or channel.header (not honoured, so refused)
	CodePayloadNotAllowed   = "payload_not_allowed"              // full-resource asked by an owner who may not read the patients covered (403)
	CodeForbidden           = "forbidden"                        // the caller may not manage this Subscription (403)
	CodeHeartbeatPeriod     = "unsupported_heartbeat_period"     // a heartbeat period outside MinHeartbeat..MaxHeartbeat seconds, or not an unsignedInt
)

// The heartbeat periods accepted (backport-heartbeat-period), in seconds.
const (
	MinHeartbeat = 10
	MaxHeartbeat = 86400
)

// Error refuses a Subscription request; nothing is stored. Status is the HTTP status (400,
// or 403 for CodePayloadNotAllowed).
type Error struct {
	Status  int
	Problem fhir.Problem
}

func (e *Error) Error() string {
	return "fhir subscription: " + e.Problem.Code + ": " + e.Problem.Message
}

// ErrorCode returns the stable code.
func (e *Error) ErrorCode() string { return e.Problem.Code }

func invalid(code, expr, format string, args ...any) *Error {
	return &Error{Status: 400, Problem: fhir.Problem{Code: code, Type: "invalid", Expression: expr,
		Message: fmt.Sprintf(format, args...)}}
}

// Request is a parsed Subscription.
type Request struct {
	Topic    Topic
	Patient  uuid.UUID // the patient= filter; uuid.Nil for every patient
	Endpoint string
	Content  string // ContentIDOnly or ContentFullResource
	Reason   string
	// Heartbeat is the heartbeat period in seconds (backport-heartbeat-period); 0: none.
	Heartbeat int
}

// MaxBody is the largest Subscription accepted, in bytes.
const MaxBody = 64 << 10

type primitiveExt struct {
	Extension []struct {
		URL         string  `json:"url"`
		ValueString *string `json:"valueString"`
		ValueCode   *string `json:"valueCode"`
	} `json:"extension"`
}

type wire struct {
	ResourceType string        `json:"resourceType"`
	Status       string        `json:"status"`
	Reason       string        `json:"reason"`
	Criteria     string        `json:"criteria"`
	CriteriaExt  *primitiveExt `json:"_criteria"`
	End          *string       `json:"end"`
	Channel      *struct {
		Type       string        `json:"type"`
		Endpoint   string        `json:"endpoint"`
		Payload    string        `json:"payload"`
		PayloadExt *primitiveExt `json:"_payload"`
		Header     []string      `json:"header"`
		Extension  []struct {
			URL              string           `json:"url"`
			ValueUnsignedInt *json.RawMessage `json:"valueUnsignedInt"`
		} `json:"extension"`
	} `json:"channel"`
}

// Parse reads a client's Subscription (R4 JSON, backport profile): criteria is a topic's
// canonical URL, at most one backport-filter-criteria of the form
// "<Resource>?patient=[Patient/]<id>" (or "patient=<id>"), channel rest-hook with an
// endpoint, payload application/fhir+json (or none) with content id-only (the default) or
// full-resource, and at most one backport-heartbeat-period on the channel (MinHeartbeat to
// MaxHeartbeat seconds). status may be requested (or active); end and channel.header are
// refused (not honoured). Every refusal is an *Error naming the element.
func Parse(body []byte) (Request, error) {
	if len(body) > MaxBody {
		return Request{}, invalid(CodeInvalidSubscription, "Subscription", "larger than %d bytes", MaxBody)
	}
	if !utf8.Valid(body) {
		return Request{}, invalid(CodeInvalidSubscription, "Subscription", "not UTF-8")
	}
	var w wire
	if err := json.Unmarshal(body, &w); err != nil {
		return Request{}, invalid(CodeInvalidSubscription, "Subscription", "not a JSON Subscription resource")
	}
	if w.ResourceType != "Subscription" {
		return Request{}, invalid(CodeInvalidSubscription, "Subscription.resourceType", "resourceType must be Subscription")
	}
	switch w.Status {
	case "", "requested", "active":
	default:
		return Request{}, invalid(CodeInvalidSubscription, "Subscription.status", "status must be requested")
	}
	if strings.TrimSpace(w.Reason) == "" || len(w.Reason) > 1024 {
		return Request{}, invalid(CodeInvalidSubscription, "Subscription.reason", "reason is required (at most 1024 bytes)")
	}
	topic, ok := LookupTopic(w.Criteria)
	if !ok {
		return Request{}, invalid(CodeUnknownTopic, "Subscription.criteria", "criteria must be the canonical URL of a topic of the CapabilityStatement")
	}
	r := Request{Topic: topic, Reason: w.Reason, Content: ContentIDOnly}
	if w.CriteriaExt != nil {
		n := 0
		for _, e := range w.CriteriaExt.Extension {
			if e.URL != ExtFilterCriteria {
				continue
			}
			if n++; n > 1 || e.ValueString == nil {
				return Request{}, invalid(CodeInvalidFilter, "Subscription._criteria", "at most one filter criteria, a valueString")
			}
			pid, err := parseFilter(topic, *e.ValueString)
			if err != nil {
				return Request{}, err
			}
			r.Patient = pid
		}
	}
	if w.End != nil {
		return Request{}, invalid(CodeUnsupportedElement, "Subscription.end", "end is not supported: delete the Subscription instead")
	}
	c := w.Channel
	if c == nil {
		return Request{}, invalid(CodeInvalidSubscription, "Subscription.channel", "channel is required")
	}
	if c.Type != "rest-hook" {
		return Request{}, invalid(CodeUnsupportedChannel, "Subscription.channel.type", "channel type must be rest-hook")
	}
	if len(c.Header) > 0 {
		return Request{}, invalid(CodeUnsupportedElement, "Subscription.channel.header", "channel headers are not sent: notifications are authenticated by Vigil-Signature")
	}
	if c.Endpoint == "" || len(c.Endpoint) > 2048 {
		return Request{}, invalid(CodeInvalidSubscription, "Subscription.channel.endpoint", "channel endpoint is required (at most 2048 bytes)")
	}
	r.Endpoint = c.Endpoint
	if c.Payload != "" && c.Payload != MimeType {
		return Request{}, invalid(CodeUnsupportedPayload, "Subscription.channel.payload", "payload must be %s", MimeType)
	}
	if c.PayloadExt != nil {
		n := 0
		for _, e := range c.PayloadExt.Extension {
			if e.URL != ExtPayloadContent {
				continue
			}
			if n++; n > 1 || e.ValueCode == nil || (*e.ValueCode != ContentIDOnly && *e.ValueCode != ContentFullResource) {
				return Request{}, invalid(CodeUnsupportedPayload, "Subscription.channel._payload", "payload content must be id-only or full-resource")
			}
			r.Content = *e.ValueCode
		}
	}
	n := 0
	for _, e := range c.Extension {
		if e.URL != ExtHeartbeatPeriod {
			continue
		}
		var secs int
		if n++; n > 1 || e.ValueUnsignedInt == nil || json.Unmarshal(*e.ValueUnsignedInt, &secs) != nil || secs < MinHeartbeat || secs > MaxHeartbeat {
			return Request{}, invalid(CodeHeartbeatPeriod, "Subscription.channel.extension", "one heartbeat period, a valueUnsignedInt of %d to %d seconds", MinHeartbeat, MaxHeartbeat)
		}
		r.Heartbeat = secs
	}
	return r, nil
}

// parseFilter reads one backport filter criteria of topic: patient= only.
func parseFilter(topic Topic, s string) (uuid.UUID, error) {
	const expr = "Subscription._criteria.extension"
	q := s
	if res, rest, ok := strings.Cut(s, "?"); ok {
		if res != topic.Resource {
			return uuid.Nil, invalid(CodeInvalidFilter, expr, "the filter's resource type must be %s", topic.Resource)
		}
		q = rest
	}
	vals, err := url.ParseQuery(q)
	if err != nil {
		return uuid.Nil, invalid(CodeInvalidFilter, expr, "the filter is not a query string")
	}
	if len(vals) != 1 || len(vals["patient"]) != 1 {
		return uuid.Nil, invalid(CodeInvalidFilter, expr, "the only filter supported is one patient=")
	}
	pid, err := uuid.Parse(strings.TrimPrefix(vals["patient"][0], "Patient/"))
	if err != nil || pid == uuid.Nil {
		return uuid.Nil, invalid(CodeInvalidFilter, expr, "patient= must be a Patient id")
	}
	return pid, nil
}
