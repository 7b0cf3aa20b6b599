package subscription

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	m "github.com/samply/golang-fhir-models/fhir-models/fhir"

	"github.com/vigilhealth/vigil/interop/fhir"
)

// Subscription is a stored Subscription.
type Subscription struct {
	ID        uuid.UUID
	WebhookID uuid.UUID // its core webhook (event type EventType(ID))
	Topic     Topic
	Patient   uuid.UUID // uuid.Nil: every patient
	Content   string
	Endpoint  string
	Base      string // the FHIR base URL the client used (fullUrl of the notifications' entries)
	Reason    string
	Status    string // active, off
	Owner     Owner
	Events    int64 // notification events sent
	Heartbeat int   // heartbeat period in seconds; 0: none
	CreatedAt time.Time

	created *snapshot // the creating transaction's snapshot (nil: created before it was kept)
}

// EventType is the core webhook event type of a Subscription's notifications.
func EventType(id uuid.UUID) string { return "fhir.subscription." + id.String() }

// Render returns the Subscription resource (R4, backport: criteria the topic URL, the patient
// filter as backport-filter-criteria, the payload content as backport-payload-content).
func Render(s Subscription) (json.RawMessage, error) {
	status := m.SubscriptionStatusActive
	if s.Status != "active" {
		status = m.SubscriptionStatusOff
	}
	payload := MimeType
	r := m.Subscription{Id: ptr(s.ID.String()), Status: status, Reason: s.Reason, Criteria: s.Topic.URL,
		Channel: m.SubscriptionChannel{Type: m.SubscriptionChannelTypeRestHook, Endpoint: ptr(s.Endpoint), Payload: &payload}}
	b, err := r.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("fhir subscription: render: %w", err)
	}
	var obj map[string]any
	if err := json.Unmarshal(b, &obj); err != nil {
		return nil, fmt.Errorf("fhir subscription: render: %w", err)
	}
	// Extensions on primitives (_criteria, channel._payload): not in the model's structs.
	if s.Patient != uuid.Nil {
		obj["_criteria"] = map[string]any{"extension": []any{map[string]any{"url": ExtFilterCriteria,
			"valueString": s.Topic.Resource + "?patient=Patient/" + s.Patient.String()}}}
	}
	ch, _ := obj["channel"].(map[string]any)
	if ch == nil {
		return nil, fmt.Errorf("fhir subscription: render: no channel")
	}
	ch["_payload"] = map[string]any{"extension": []any{map[string]any{"url": ExtPayloadContent, "valueCode": s.Content}}}
	if s.Heartbeat > 0 {
		ch["extension"] = []any{map[string]any{"url": ExtHeartbeatPeriod, "valueUnsignedInt": s.Heartbeat}}
	}
	return json.Marshal(obj)
}

// Focus is one resource a notification is about: its type and id, and the resource itself
// for full-resource content (nil for id-only).
type Focus struct {
	Type, ID string
	Resource any
}

// The notification types of a SubscriptionStatus (backport IG).
const (
	TypeEventNotification = "event-notification"
	TypeHandshake         = "handshake"    // the first notification, when the Subscription is activated
	TypeHeartbeat         = "heartbeat"    // nothing was sent for the heartbeat period
	TypeQueryStatus       = "query-status" // the answer of $status
)

// Notification is one notification Bundle's content.
type Notification struct {
	Sub Subscription
	// Type is TypeEventNotification (the default), TypeHandshake or TypeHeartbeat; the last
	// two have no Focus.
	Type  string
	Focus []Focus
	// First is the event number of Focus[0] (then one more per focus); Total the events since
	// the subscription's start, this notification's included.
	First, Total int64
	At           time.Time
}

// status returns the SubscriptionStatus parameters (backport IG, R4 Parameters): subscription,
// topic, status, type, events-since-subscription-start and one notification-event per focus
// with its event number, timestamp and focus reference.
func (n Notification) status() (json.RawMessage, error) {
	typ := n.Type
	if typ == "" {
		typ = TypeEventNotification
	}
	st := "active"
	if n.Sub.Status != "" && n.Sub.Status != "active" {
		st = n.Sub.Status
	}
	at := n.At.UTC().Format(time.RFC3339Nano)
	params := []m.ParametersParameter{
		{Name: "subscription", ValueReference: &m.Reference{Reference: ptr("Subscription/" + n.Sub.ID.String())}},
		{Name: "topic", ValueCanonical: ptr(n.Sub.Topic.URL)},
		{Name: "status", ValueCode: ptr(st)},
		{Name: "type", ValueCode: ptr(typ)},
		{Name: "events-since-subscription-start", ValueString: ptr(strconv.FormatInt(n.Total, 10))},
	}
	for i, f := range n.Focus {
		params = append(params, m.ParametersParameter{Name: "notification-event", Part: []m.ParametersParameter{
			{Name: "event-number", ValueString: ptr(strconv.FormatInt(n.First+int64(i), 10))},
			{Name: "timestamp", ValueInstant: ptr(at)},
			{Name: "focus", ValueReference: &m.Reference{Reference: ptr(f.Type + "/" + f.ID)}},
		}})
	}
	status, err := m.Parameters{Id: ptr(uuid.Must(uuid.NewV7()).String()), Parameter: params}.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("fhir subscription: notification: %w", err)
	}
	return status, nil
}

// RenderNotification renders a notification Bundle (type history) as the backport IG
// specifies for R4: first the SubscriptionStatus (a Parameters resource), then, for an event
// notification, one entry per focus — with the resource for full-resource content, without
// it for id-only. A handshake or heartbeat has the status only.
func RenderNotification(n Notification) ([]byte, error) {
	at := n.At.UTC().Format(time.RFC3339Nano)
	status, err := n.status()
	if err != nil {
		return nil, err
	}
	b := m.Bundle{Id: ptr(uuid.Must(uuid.NewV7()).String()), Type: m.BundleTypeHistory, Timestamp: ptr(at),
		Entry: []m.BundleEntry{{FullUrl: ptr("urn:uuid:" + uuid.Must(uuid.NewV7()).String()), Resource: status,
			Request:  &m.BundleEntryRequest{Method: m.HTTPVerbGET, Url: "Subscription/" + n.Sub.ID.String() + "/$status"},
			Response: &m.BundleEntryResponse{Status: "200"}}}}
	base := strings.TrimSuffix(n.Sub.Base, "/")
	for _, f := range n.Focus {
		e := m.BundleEntry{FullUrl: ptr(base + "/" + f.Type + "/" + f.ID),
			Request:  &m.BundleEntryRequest{Method: m.HTTPVerbPOST, Url: f.Type},
			Response: &m.BundleEntryResponse{Status: "201"}}
		if f.Resource != nil {
			raw, err := fhir.MarshalResource(f.Resource)
			if err != nil {
				return nil, fmt.Errorf("fhir subscription: notification: %w", err)
			}
			e.Resource = raw
		}
		b.Entry = append(b.Entry, e)
	}
	return b.MarshalJSON()
}

func ptr[T any](v T) *T { return &v }

// RenderStatus renders the answer of Subscription/<id>/$status: a searchset Bundle holding the
// Subscription's SubscriptionStatus (type query-status, its events since its start).
func RenderStatus(sub Subscription, at time.Time) ([]byte, error) {
	status, err := Notification{Sub: sub, Type: TypeQueryStatus, Total: sub.Events, At: at}.status()
	if err != nil {
		return nil, err
	}
	mode := m.SearchEntryModeMatch
	b := m.Bundle{Id: ptr(uuid.Must(uuid.NewV7()).String()), Type: m.BundleTypeSearchset, Total: ptr(1), Timestamp: ptr(at.UTC().Format(time.RFC3339Nano)),
		Entry: []m.BundleEntry{{FullUrl: ptr("urn:uuid:" + uuid.Must(uuid.NewV7()).String()), Resource: status, Search: &m.BundleEntrySearch{Mode: &mode}}}}
	return b.MarshalJSON()
}
