package subscription_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/interop/fhir/subscription"
)

const pid = "0192f1d2-8a4b-7c3d-9e5f-0a1b2c3d4e5f"

func sub(criteria, filter, channel string) string {
	s := `{"resourceType":"Subscription","status":"requested","reason":"feed","criteria":"` + criteria + `"`
	if filter != "" {
		s += `,"_criteria":{"extension":[{"url":"` + subscription.ExtFilterCriteria + `","valueString":"` + filter + `"}]}`
	}
	return s + `,"channel":` + channel + `}`
}

const hook = `{"type":"rest-hook","endpoint":"https://ehr.example/hook","payload":"application/fhir+json"}`

func withContent(c string) string {
	return `{"type":"rest-hook","endpoint":"https://ehr.example/hook","payload":"application/fhir+json","_payload":{"extension":[{"url":"` +
		subscription.ExtPayloadContent + `","valueCode":"` + c + `"}]}}`
}

// withHeartbeat is a rest-hook channel asking for heartbeats every v (JSON) seconds.
func withHeartbeat(v string) string {
	return `{"type":"rest-hook","endpoint":"https://ehr.example/hook","payload":"application/fhir+json","extension":[{"url":"` +
		subscription.ExtHeartbeatPeriod + `","valueUnsignedInt":` + v + `}]}`
}

// A channel's backport-heartbeat-period is read in seconds, 10 to 86400; none is 0.
// Verifies: REQ-INT-049
func TestParseHeartbeat(t *testing.T) {
	for v, want := range map[string]int{"10": 10, "60": 60, "86400": 86400} {
		r, err := subscription.Parse([]byte(sub(subscription.TopicVitalSigns.URL, "", withHeartbeat(v))))
		if err != nil || r.Heartbeat != want {
			t.Errorf("heartbeat %s: Parse = %+v, %v; want %d", v, r, err, want)
		}
	}
	if r, err := subscription.Parse([]byte(sub(subscription.TopicVitalSigns.URL, "", hook))); err != nil || r.Heartbeat != 0 {
		t.Errorf("no heartbeat: Parse = %+v, %v; want 0", r, err)
	}
}

// Parse accepts the backport form of a Subscription (topic URL, patient filter, rest-hook,
// id-only by default or full-resource) and refuses everything else with a stable code naming
// the element.
// Verifies: REQ-INT-031, REQ-INT-036
func TestParse(t *testing.T) {
	vitals, flags := subscription.TopicVitalSigns.URL, subscription.TopicAlarmFlag.URL
	for _, c := range []struct {
		name, body string
		topic      string
		patient    string
		content    string
	}{
		{"every patient, id-only by default", sub(vitals, "", hook), vitals, "", "id-only"},
		{"patient filter with type", sub(vitals, "Observation?patient=Patient/"+pid, hook), vitals, pid, "id-only"},
		{"bare patient filter", sub(flags, "patient="+pid, withContent("full-resource")), flags, pid, "full-resource"},
		{"no payload", sub(vitals, "", `{"type":"rest-hook","endpoint":"https://ehr.example/"}`), vitals, "", "id-only"},
	} {
		r, err := subscription.Parse([]byte(c.body))
		if err != nil {
			t.Errorf("%s: Parse = %v", c.name, err)
			continue
		}
		want := uuid.Nil
		if c.patient != "" {
			want = uuid.MustParse(c.patient)
		}
		if r.Topic.URL != c.topic || r.Patient != want || r.Content != c.content || r.Endpoint != "https://ehr.example/hook" && !strings.HasSuffix(c.body, `"https://ehr.example/"}}`) {
			t.Errorf("%s: Parse = %+v", c.name, r)
		}
	}
	for _, c := range []struct{ name, body, code string }{
		{"not JSON", `{`, subscription.CodeInvalidSubscription},
		{"another resource", `{"resourceType":"Patient"}`, subscription.CodeInvalidSubscription},
		{"status off", strings.Replace(sub(vitals, "", hook), "requested", "off", 1), subscription.CodeInvalidSubscription},
		{"no reason", strings.Replace(sub(vitals, "", hook), `"reason":"feed"`, `"reason":""`, 1), subscription.CodeInvalidSubscription},
		{"R4 query criteria", sub("Observation?code=8867-4", "", hook), subscription.CodeUnknownTopic},
		{"unknown topic", sub("https://vigil.health/fhir/SubscriptionTopic/other", "", hook), subscription.CodeUnknownTopic},
		{"filter on code", sub(vitals, "Observation?code=8867-4", hook), subscription.CodeInvalidFilter},
		{"filter of another type", sub(vitals, "Flag?patient="+pid, hook), subscription.CodeInvalidFilter},
		{"two patients", sub(vitals, "patient="+pid+"&patient="+pid, hook), subscription.CodeInvalidFilter},
		{"bad patient", sub(vitals, "patient=Patient/42", hook), subscription.CodeInvalidFilter},
		{"websocket", sub(vitals, "", `{"type":"websocket","endpoint":"wss://x/"}`), subscription.CodeUnsupportedChannel},
		{"no channel", `{"resourceType":"Subscription","status":"requested","reason":"r","criteria":"` + vitals + `"}`, subscription.CodeInvalidSubscription},
		{"no endpoint", sub(vitals, "", `{"type":"rest-hook"}`), subscription.CodeInvalidSubscription},
		{"xml", sub(vitals, "", `{"type":"rest-hook","endpoint":"https://x/","payload":"application/fhir+xml"}`), subscription.CodeUnsupportedPayload},
		{"empty content", sub(vitals, "", withContent("empty")), subscription.CodeUnsupportedPayload},
		{"headers", sub(vitals, "", `{"type":"rest-hook","endpoint":"https://x/","header":["Authorization: Bearer x"]}`), subscription.CodeUnsupportedElement},
		{"end", strings.Replace(sub(vitals, "", hook), `"reason"`, `"end":"2030-01-01T00:00:00Z","reason"`, 1), subscription.CodeUnsupportedElement},
		{"too large", `{"resourceType":"Subscription","reason":"` + strings.Repeat("x", subscription.MaxBody) + `"}`, subscription.CodeInvalidSubscription},
		{"heartbeat too short", sub(vitals, "", withHeartbeat("5")), subscription.CodeHeartbeatPeriod},
		{"heartbeat too long", sub(vitals, "", withHeartbeat("86401")), subscription.CodeHeartbeatPeriod},
		{"heartbeat not a number", sub(vitals, "", withHeartbeat(`"60"`)), subscription.CodeHeartbeatPeriod},
		{"heartbeat fraction", sub(vitals, "", withHeartbeat("60.5")), subscription.CodeHeartbeatPeriod},
		{"heartbeat of another type", sub(vitals, "", strings.Replace(withHeartbeat("60"), "valueUnsignedInt", "valueString", 1)), subscription.CodeHeartbeatPeriod},
	} {
		_, err := subscription.Parse([]byte(c.body))
		var se *subscription.Error
		if !errors.As(err, &se) || se.Problem.Code != c.code || se.Status != 400 || se.Problem.Expression == "" {
			t.Errorf("%s: Parse = %v, want a 400 %s naming the element", c.name, err, c.code)
		}
	}
}

// FuzzParse: Parse never panics on any body; what it accepts renders (Render) as a
// Subscription that parses back to the same request.
// Verifies: REQ-INT-031
func FuzzParse(f *testing.F) {
	f.Add([]byte(sub(subscription.TopicVitalSigns.URL, "Observation?patient=Patient/"+pid, hook)))
	f.Add([]byte(sub(subscription.TopicAlarmFlag.URL, "patient="+pid, withContent("full-resource"))))
	f.Add([]byte(sub(subscription.TopicVitalSigns.URL, "patient=%zz", hook)))
	f.Add([]byte(`{"resourceType":"Subscription","_criteria":{"extension":[{}]},"channel":{"_payload":{"extension":[{"url":"x"}]}}}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(sub(subscription.TopicVitalSigns.URL, "", withHeartbeat("60"))))
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := subscription.Parse(body)
		if err != nil {
			var se *subscription.Error
			if !errors.As(err, &se) || se.Problem.Code == "" {
				t.Fatalf("Parse = %v, want an *Error with a code", err)
			}
			return
		}
		raw, err := subscription.Render(subscription.Subscription{ID: uuid.New(), Topic: r.Topic, Patient: r.Patient, Content: r.Content,
			Endpoint: r.Endpoint, Reason: r.Reason, Status: "active", Heartbeat: r.Heartbeat})
		if err != nil {
			t.Fatalf("Render = %v", err)
		}
		back, err := subscription.Parse(raw)
		if err != nil || back != r {
			t.Fatalf("Parse(Render(%+v)) = %+v, %v", r, back, err)
		}
	})
}
