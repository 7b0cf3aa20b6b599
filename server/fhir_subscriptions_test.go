package server

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/devicestest"
	"github.com/vigilhealth/vigil/devices/envelope"
	"github.com/vigilhealth/vigil/interop/fhir/fhirtest"
	"github.com/vigilhealth/vigil/interop/fhir/subscription"
)

// receiver is an outside endpoint on loopback that records what it is sent.
type receiver struct {
	ts   *httptest.Server
	mu   sync.Mutex
	got  []received
	seen chan struct{}
}

type received struct {
	header http.Header
	body   []byte
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{seen: make(chan struct{}, 100)}
	r.ts = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got = append(r.got, received{req.Header.Clone(), b})
		r.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(r.ts.Close)
	return r
}

func (r *receiver) take() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.got
	r.got = nil
	return out
}

// subsFixture is the FHIR fixture whose Subscriptions' webhooks may reach loopback (the
// receivers of the test), with the dispatcher running.
type subsFixture struct {
	*fhirFixture
	hooks *core.Service // core's webhooks, allowed to reach 127.0.0.0/8
	devP  *devicestest.Device
	devQ  *devicestest.Device
	at    time.Time
	stop  func() // stops the durable dispatcher
}

// startDurable starts RunDurable and waits until its cursor is past every row stored so
// far. A new cursor starts at pg_snapshot_xmin, the oldest transaction still running in the
// whole cluster (on the shared test server, often another database's), so it may start
// before rows that had already committed — and the dispatcher matches each row against the
// Subscriptions of the moment it reads it: it must pass over the fixture's rows before
// the test creates any, or they would be notified (see the report of h-feed, 2026-12-03).
func (f *subsFixture) startDurable(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.s.FHIRSubscriptions().RunDurable(ctx) }()
	var once sync.Once
	f.stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(f.stop)
	deadline := time.Now().Add(time.Minute)
	for f.env.Count(t, `SELECT count(*) FROM interop_feed_cursors c WHERE c.name = $1
		AND NOT EXISTS (SELECT 1 FROM core_uploads u WHERE u.stored > 0 AND u.txid IS NOT NULL
			AND (u.txid, 1::smallint, u.id) > (c.txid, c.kind, c.source_id))
		AND NOT EXISTS (SELECT 1 FROM alarms a WHERE a.opened_txid IS NOT NULL
			AND (a.opened_txid, 0::smallint, a.id) > (c.txid, c.kind, c.source_id))`, subscription.CursorName) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the durable dispatcher has not passed the stored rows after a minute")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func newSubsFixture(t *testing.T) *subsFixture { return newSubsFixtureWith(t, false) }

// newDurableSubsFixture runs the dispatcher vigil serve runs (RunDurable, over the stored
// rows) instead of Run, and returns once it has its cursor: what is stored from then on is
// notified.
func newDurableSubsFixture(t *testing.T) *subsFixture { return newSubsFixtureWith(t, true) }

func newSubsFixtureWith(t *testing.T, durable bool) *subsFixture {
	t.Helper()
	var hooks *core.Service
	f := newFHIRFixture(t, func(c *Config) {
		var err error
		hooks, err = core.New(core.Config{Pool: c.Pool, Recorder: c.Recorder, Now: c.Now,
			Webhook: core.WebhookConfig{AllowNets: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, MaxAttempts: 2},
			Logger:  slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		c.SubscriptionWebhooks = hooks
	})
	ctx := context.Background()
	sf := &subsFixture{fhirFixture: f, hooks: hooks, devP: f.env.NewDevice(t), at: f.env.Clock.Now().Truncate(time.Second)}
	if durable {
		sf.startDurable(t)
	} else {
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = f.s.FHIRSubscriptions().Run(rctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	sf.devQ = f.env.RegisterDevice(t)
	f.env.Enroll(t, sf.devQ)
	if _, err := f.env.Devices.AssignPatient(ctx, devicestest.Admin, sf.devQ.ID, &f.q); err != nil {
		t.Fatal(err)
	}
	return sf
}

// upload sends one signed upload of a heart rate and a blood-pressure pair from d.
func (f *subsFixture) upload(t *testing.T, d *devicestest.Device) {
	t.Helper()
	f.uploadVitals(t, d, 77, 121, 79)
}

// uploadVitals sends one signed upload of a heart rate hr and a blood-pressure pair from d.
func (f *subsFixture) uploadVitals(t *testing.T, d *devicestest.Device, hr, sys, dia float64) {
	t.Helper()
	f.at = f.at.Add(time.Second)
	at := f.at.UnixMilli()
	d.Seq++
	raw := d.Sign(t, &envelope.Upload{Device: d.ID.String(), KeyVersion: d.KV, Seq: d.Seq, SentAt: at, Samples: []envelope.Sample{
		{Code: "8867-4", Value: hr, Unit: "/min", T: at}, {Code: "8480-6", Value: sys, Unit: "mm[Hg]", T: at},
		{Code: "8462-4", Value: dia, Unit: "mm[Hg]", T: at}}})
	if _, err := f.env.Devices.Accept(context.Background(), raw, devices.Meta{Transport: "http"}); err != nil {
		t.Fatalf("Accept = %v", err)
	}
}

// waitDeliveries waits until the dispatcher has enqueued n deliveries of the subscription
// (the dispatcher runs behind the uploads, on its own goroutine).
func (f *subsFixture) waitDeliveries(t *testing.T, id string, n int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for f.env.Count(t, `SELECT count(*) FROM core_webhook_deliveries WHERE event_type = $1`, "fhir.subscription."+id) < n {
		if time.Now().After(deadline) {
			t.Fatalf("subscription %s: fewer than %d deliveries enqueued after a minute", id, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *subsFixture) deliver(t *testing.T) {
	t.Helper()
	if _, err := f.hooks.DeliverDue(context.Background()); err != nil {
		t.Fatalf("DeliverDue = %v", err)
	}
}

// post creates a Subscription; it returns the status, the answer and the secret header.
func (f *subsFixture) post(t *testing.T, cl *http.Client, body string) (int, map[string]any, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, f.ts.URL+"/fhir/R4/Subscription", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/fhir+json")
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("POST Subscription = %d, body not JSON: %s", resp.StatusCode, b)
	}
	var secret []byte
	if h := resp.Header.Get(HeaderWebhookSecret); h != "" {
		secret = mustBase64(t, h)
	}
	return resp.StatusCode, out, secret
}

func subscriptionJSON(topic, filter, endpoint, content string) string {
	crit := ""
	if filter != "" {
		crit = `,"_criteria":{"extension":[{"url":"` + subscription.ExtFilterCriteria + `","valueString":"` + filter + `"}]}`
	}
	pl := ""
	if content != "" {
		pl = `,"_payload":{"extension":[{"url":"` + subscription.ExtPayloadContent + `","valueCode":"` + content + `"}]}`
	}
	return `{"resourceType":"Subscription","status":"requested","reason":"EHR vitals feed","criteria":"` + topic + `"` + crit +
		`,"channel":{"type":"rest-hook","endpoint":"` + endpoint + `","payload":"application/fhir+json"` + pl + `}}`
}

// bundleFocus returns a notification Bundle's SubscriptionStatus and its focus entries.
func bundleFocus(t *testing.T, body []byte) (map[string]any, map[string]any, []map[string]any) {
	t.Helper()
	var b map[string]any
	if err := json.Unmarshal(body, &b); err != nil {
		t.Fatalf("notification is not JSON: %v", err)
	}
	es := entries(b)
	if b["resourceType"] != "Bundle" || b["type"] != "history" || len(es) < 2 {
		t.Fatalf("notification = %s; want a history Bundle with a status and focus entries", body)
	}
	status, _ := es[0]["resource"].(map[string]any)
	if status["resourceType"] != "Parameters" {
		t.Fatalf("first entry = %v, want the SubscriptionStatus Parameters", es[0])
	}
	return b, status, es[1:]
}

// handshake delivers what is due and checks the receiver got exactly the Subscription's
// handshake: application/fhir+json, signed, a history Bundle holding only the
// SubscriptionStatus of type handshake with no events yet. It returns the Bundle.
func (f *subsFixture) handshake(t *testing.T, rcv *receiver, id string, secret []byte) map[string]any {
	t.Helper()
	f.waitDeliveries(t, id, 1)
	f.deliver(t)
	got := rcv.take()
	if len(got) != 1 {
		t.Fatalf("receiver got %d notifications after the create, want the handshake", len(got))
	}
	n := got[0]
	if ct := n.header.Get("Content-Type"); ct != "application/fhir+json" {
		t.Errorf("handshake Content-Type = %q, want application/fhir+json", ct)
	}
	if secret != nil {
		if err := core.VerifyWebhook(secret, n.header.Get(core.HeaderSignature), n.header.Get(core.HeaderEventID), n.body, f.env.Clock.Now(), time.Minute); err != nil {
			t.Errorf("handshake signature: %v", err)
		}
	}
	var b map[string]any
	if err := json.Unmarshal(n.body, &b); err != nil {
		t.Fatalf("handshake is not JSON: %v", err)
	}
	es := entries(b)
	if b["resourceType"] != "Bundle" || b["type"] != "history" || len(es) != 1 {
		t.Fatalf("handshake = %s; want a history Bundle of the SubscriptionStatus alone", n.body)
	}
	status, _ := es[0]["resource"].(map[string]any)
	if paramValue(status, "type", "valueCode") != "handshake" || paramValue(status, "events-since-subscription-start", "valueString") != "0" ||
		paramValue(status, "subscription", "valueReference").(map[string]any)["reference"] != "Subscription/"+id {
		t.Errorf("handshake status = %v, want type handshake, 0 events, of Subscription/%s", status, id)
	}
	return b
}

func paramValue(status map[string]any, name, key string) any {
	for _, p := range status["parameter"].([]any) {
		pm := p.(map[string]any)
		if pm["name"] == name {
			return pm[key]
		}
	}
	return nil
}

// A Subscription (R4 backport, rest-hook, id-only) created by an administrator for one
// patient's new vital signs: the receiver on loopback gets, signed with the secret the create
// returned, a history Bundle whose SubscriptionStatus names the subscription, topic and
// events and whose focus references resolve to the patient's new Observations (the BP pair
// as its panel) — with no resource and no PHI in it; an upload of another patient notifies
// nothing. The Subscription, its read and search, and the notification pass the external
// validator; creation and deletion are audited; a deleted Subscription notifies nothing.
// A webhook subscribed to "*" never receives a Subscription's notifications. The
// dispatcher is the one vigil serve runs (RunDurable, over the stored rows).
// Verifies: REQ-INT-031, REQ-INT-032, REQ-INT-033, REQ-INT-035, REQ-INT-037, REQ-INT-048, REQ-INT-051
func TestFHIRSubscriptionIDOnly(t *testing.T) {
	t.Parallel()
	f := newDurableSubsFixture(t)
	ctx := context.Background()
	rcv, star := newReceiver(t), newReceiver(t)
	starHook, _, err := f.hooks.CreateWebhook(ctx, audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "admin-1", AuthMethod: "test"}}, star.ts.URL, []string{"*"})
	if err != nil {
		t.Fatal(err)
	}
	admin := SignedInClient(t, f.auth, authtest.Grant{Role: auth.RoleAdmin, Domain: auth.AllDomains})
	st, sub, secret := f.post(t, admin, subscriptionJSON(subscription.TopicVitalSigns.URL, "Observation?patient=Patient/"+f.p.String(), rcv.ts.URL+"/fhir-hook", ""))
	if st != 201 || sub["status"] != "active" || len(secret) != 32 {
		t.Fatalf("POST Subscription = %d %v (secret %d bytes), want 201 active with a 32-byte secret", st, sub, len(secret))
	}
	id := sub["id"].(string)
	handshake := f.handshake(t, rcv, id, secret)
	// Another patient's upload first, then the subscribed patient's: once the second is
	// enqueued, the first was dispatched (in order) and gave nothing.
	f.upload(t, f.devQ)
	f.upload(t, f.devP)
	pHex := strings.ReplaceAll(f.p.String(), "-", "")
	deadline := time.Now().Add(time.Minute)
	for f.env.Count(t, `SELECT count(*) FROM core_webhook_deliveries WHERE event_type = $1 AND strpos(payload::text, $2) > 0`, "fhir.subscription."+id, pHex) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no notification of the subscribed patient's upload after a minute")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := f.env.Count(t, `SELECT count(*) FROM core_webhook_deliveries WHERE event_type = $1`, "fhir.subscription."+id); n != 2 {
		t.Errorf("deliveries = %d, want 2: the handshake and one event (none for the other patient's upload, dispatched before)", n)
	}
	f.deliver(t)
	got := rcv.take()
	if len(got) != 1 {
		t.Fatalf("receiver got %d notifications, want 1 (none for the other patient)", len(got))
	}
	n := got[0]
	if err := core.VerifyWebhook(secret, n.header.Get(core.HeaderSignature), n.header.Get(core.HeaderEventID), n.body, f.env.Clock.Now(), time.Minute); err != nil {
		t.Errorf("notification signature: %v", err)
	}
	if ct := n.header.Get("Content-Type"); ct != "application/fhir+json" {
		t.Errorf("notification Content-Type = %q, want application/fhir+json", ct)
	}
	bundle, status, focus := bundleFocus(t, n.body)
	if ref := paramValue(status, "subscription", "valueReference").(map[string]any)["reference"]; ref != "Subscription/"+id {
		t.Errorf("status subscription = %v", ref)
	}
	if tp := paramValue(status, "topic", "valueCanonical"); tp != subscription.TopicVitalSigns.URL {
		t.Errorf("status topic = %v", tp)
	}
	if ev := paramValue(status, "events-since-subscription-start", "valueString"); ev != "2" {
		t.Errorf("events-since-subscription-start = %v, want 2 (a heart rate and a BP panel)", ev)
	}
	if len(focus) != 2 {
		t.Fatalf("focus entries = %d, want 2", len(focus))
	}
	for _, e := range focus {
		if e["resource"] != nil {
			t.Errorf("id-only entry carries a resource: %v", e)
		}
		u := e["fullUrl"].(string)
		if !strings.HasPrefix(u, f.ts.URL+"/fhir/R4/Observation/") {
			t.Errorf("focus fullUrl = %s", u)
		}
		if st, _ := f.get(t, f.clinician, u); st != 200 {
			t.Errorf("GET focus %s = %d, want 200 (the reference resolves)", u, st)
		}
	}
	if leaked := phiIn(t, n.body); len(leaked) > 0 {
		t.Errorf("id-only notification contains %q: %s", leaked, n.body)
	}
	if st, rb := f.get(t, admin, "/fhir/R4/Subscription/"+id); st != 200 || rb["id"] != id {
		t.Errorf("GET Subscription = %d %v", st, rb)
	}
	st, list := f.get(t, admin, "/fhir/R4/Subscription")
	if st != 200 || len(resourcesOf(list, "match")) != 1 {
		t.Errorf("GET Subscription search = %d, %d matches, want 1", st, len(resourcesOf(list, "match")))
	}
	_, cs := f.get(t, f.clinician, "/fhir/R4/metadata")
	if !strings.Contains(mustJSON(t, cs), subscription.TopicAlarmFlag.URL) || !strings.Contains(mustJSON(t, cs), subscription.ExtTopicCanonical) {
		t.Errorf("CapabilityStatement does not list the topics")
	}
	fhirtest.Validate(t, sub, list, handshake, bundle, cs)
	if n := f.env.Count(t, `SELECT count(*) FROM core_webhook_deliveries WHERE webhook_id = $1`, starHook.ID); n != 0 {
		t.Errorf("a webhook subscribed to * got %d deliveries of a Subscription", n)
	}
	// Delete: audited, its webhook gone; later uploads notify nothing.
	req, _ := http.NewRequest(http.MethodDelete, f.ts.URL+"/fhir/R4/Subscription/"+id, nil)
	resp, err := admin.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 {
		t.Fatalf("DELETE Subscription = %d, want 204", resp.StatusCode)
	}
	for _, a := range []string{"fhir.subscription.created", "fhir.subscription.deleted"} {
		if n := f.env.Count(t, `SELECT count(*) FROM audit_events WHERE action = $1 AND object_id = $2`, a, id); n != 1 {
			t.Errorf("%s events = %d, want 1", a, n)
		}
	}
	if st, _ := f.get(t, admin, "/fhir/R4/Subscription/"+id); st != 404 {
		t.Errorf("GET deleted Subscription = %d, want 404", st)
	}
	if n := f.env.Count(t, `SELECT count(*) FROM core_webhooks WHERE event_types = ARRAY[$1]`, "fhir.subscription."+id); n != 0 {
		t.Errorf("the deleted Subscription's webhook is still there")
	}
}

// phiIn returns what of the patients' PHI or the uploaded values a notification carries: a
// resource value (valueQuantity), a string holding an MRN, a name, a birth date or a unit,
// or a value uploaded (77, 121, 79) as a number or a string. It looks at the JSON's values,
// not its text: a random id or timestamp may hold "121" or "1970".
func phiIn(t *testing.T, body []byte) []string {
	t.Helper()
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("notification is not JSON: %v", err)
	}
	var out []string
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if k == "valueQuantity" {
					out = append(out, k)
				}
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		case string:
			for _, s := range []string{"MRN", "Bea", "Other", "1970-", "mm[Hg]", "/min"} {
				if strings.Contains(x, s) {
					out = append(out, x)
				}
			}
			switch x {
			case "77", "121", "79":
				out = append(out, x)
			}
		case float64:
			if x == 77 || x == 121 || x == 79 {
				out = append(out, strconv.FormatFloat(x, 'g', -1, 64))
			}
		}
	}
	walk(v)
	return out
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// full-resource: an integration service account's token (SMART user/Observation.read, a
// clinician of the patient's ward) gets the new Observations themselves, valid vital-signs
// resources, and with user/Flag.read a new alarm's Flag; an administrator, who may not read patients, is refused full-resource (403
// payload_not_allowed). When the owner loses access (its token revoked), the next
// notification carries references only. Bad Subscriptions are refused with their codes,
// nothing stored, and audited; a clinician may not create one.
// Verifies: REQ-INT-034, REQ-INT-036, REQ-INT-038
func TestFHIRSubscriptionFullResource(t *testing.T) {
	t.Parallel()
	f := newSubsFixture(t)
	ctx := context.Background()
	rcv := newReceiver(t)
	acct, err := f.auth.CreateServiceAccount(ctx, authtest.Admin, "ehr-feed")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.auth.GrantRole(ctx, authtest.Admin, auth.ServiceSubject(acct.ID), auth.RoleClinician, auth.WardDomain(f.wardA)); err != nil {
		t.Fatal(err)
	}
	tok, err := f.auth.IssueAPIToken(ctx, authtest.Admin, acct.ID, "fhir", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	bot := &http.Client{Transport: &authtest.BearerTransport{Token: tok.Token}}
	admin := SignedInClient(t, f.auth, authtest.Grant{Role: auth.RoleAdmin, Domain: auth.AllDomains})
	full := subscriptionJSON(subscription.TopicVitalSigns.URL, "patient="+f.p.String(), rcv.ts.URL, "full-resource")
	// A token without SMART scopes is not an integration client: 403.
	if st, oo, _ := f.post(t, bot, full); st != 403 || ooCode(oo) != "forbidden" {
		t.Errorf("token without SMART scopes: POST = %d %v, want 403 forbidden", st, oo)
	}
	// patient/ scopes: Subscriptions of the launch patient only, even id-only.
	f.fhirSubsScopes(t, tok.ID, `{"scope":"patient/*.read","patient_id":"`+f.q.String()+`"}`)
	if st, oo, _ := f.post(t, bot, subscriptionJSON(subscription.TopicVitalSigns.URL, "patient="+f.p.String(), rcv.ts.URL, "")); st != 403 || ooCode(oo) != "insufficient_scope" {
		t.Errorf("patient/ scopes of q, Subscription of p: POST = %d %v, want 403 insufficient_scope", st, oo)
	}
	f.fhirSubsScopes(t, tok.ID, `{"scope":"user/Observation.read"}`)
	if st, oo, _ := f.post(t, admin, full); st != 403 || ooCode(oo) != subscription.CodePayloadNotAllowed {
		t.Errorf("admin full-resource: POST = %d %v, want 403 payload_not_allowed", st, oo)
	}
	if st, oo, _ := f.post(t, bot, subscriptionJSON(subscription.TopicVitalSigns.URL, "patient="+f.q.String(), rcv.ts.URL, "full-resource")); st != 403 || ooCode(oo) != subscription.CodePayloadNotAllowed {
		t.Errorf("full-resource for another ward's patient: POST = %d %v, want 403 payload_not_allowed", st, oo)
	}
	if st, oo, _ := f.post(t, bot, subscriptionJSON(subscription.TopicAlarmFlag.URL, "", rcv.ts.URL, "")); st != 403 || ooCode(oo) != "insufficient_scope" {
		t.Errorf("Flag topic with user/Observation.read: POST = %d %v, want 403 insufficient_scope", st, oo)
	}
	st, sub, secret := f.post(t, bot, full)
	if st != 201 {
		t.Fatalf("token full-resource: POST = %d %v", st, sub)
	}
	id := sub["id"].(string)
	f.handshake(t, rcv, id, secret)
	f.upload(t, f.devP)
	f.waitDeliveries(t, id, 1+1)
	f.deliver(t)
	got := rcv.take()
	if len(got) != 1 {
		t.Fatalf("receiver got %d notifications, want 1", len(got))
	}
	if err := core.VerifyWebhook(secret, got[0].header.Get(core.HeaderSignature), got[0].header.Get(core.HeaderEventID), got[0].body, f.env.Clock.Now(), time.Minute); err != nil {
		t.Errorf("signature: %v", err)
	}
	bundle, _, focus := bundleFocus(t, got[0].body)
	for _, e := range focus {
		r, _ := e["resource"].(map[string]any)
		if r == nil || r["resourceType"] != "Observation" {
			t.Errorf("full-resource entry = %v, want the Observation", e)
		}
	}
	// Alarms: a full-resource Flag Subscription gets the Flag of a new alarm (the transition
	// the alarm service announces on the hub, for one of the patient's real alarms).
	f.fhirSubsScopes(t, tok.ID, `{"scope":"user/Observation.read user/Flag.read"}`)
	st, fsub, _ := f.post(t, bot, subscriptionJSON(subscription.TopicAlarmFlag.URL, "patient="+f.p.String(), rcv.ts.URL, "full-resource"))
	if st != 201 {
		t.Fatalf("token full-resource Flag: POST = %d %v", st, fsub)
	}
	f.handshake(t, rcv, fsub["id"].(string), nil)
	als, err := f.alarms.List(ctx, alarms.Filter{PatientID: f.p, Limit: 1})
	if err != nil || len(als) != 1 {
		t.Fatalf("alarms of p = %v, %v; want the fixture's", als, err)
	}
	tr, err := json.Marshal(alarms.Transition{Kind: alarms.Opened, Alarm: als[0], At: f.env.Clock.Now()})
	if err != nil {
		t.Fatal(err)
	}
	f.env.Core.Hub().Publish(core.Event{Type: "alarm.opened", PatientID: f.p, Data: tr})
	f.waitDeliveries(t, fsub["id"].(string), 1+1)
	f.deliver(t)
	got = rcv.take()
	if len(got) != 1 {
		t.Fatalf("Flag subscription: receiver got %d notifications, want 1", len(got))
	}
	flagBundle, _, focus := bundleFocus(t, got[0].body)
	if len(focus) != 1 || focus[0]["resource"] == nil || focus[0]["resource"].(map[string]any)["resourceType"] != "Flag" ||
		focus[0]["resource"].(map[string]any)["id"] != als[0].ID.String() {
		t.Errorf("Flag notification focus = %v, want the alarm's Flag", focus)
	}
	fhirtest.Validate(t, bundle, flagBundle)
	// The owner loses access: the next notification names the observations only.
	if err := f.auth.RevokeAPIToken(ctx, authtest.Admin, tok.ID); err != nil {
		t.Fatal(err)
	}
	f.upload(t, f.devP)
	f.waitDeliveries(t, id, 1+2)
	f.deliver(t)
	got = rcv.take()
	if len(got) != 1 {
		t.Fatalf("after revocation: receiver got %d notifications, want 1", len(got))
	}
	_, _, focus = bundleFocus(t, got[0].body)
	for _, e := range focus {
		if e["resource"] != nil {
			t.Errorf("after the owner lost access, a notification carries a resource: %v", e)
		}
	}
	if strings.Contains(string(got[0].body), "valueQuantity") {
		t.Errorf("after revocation the notification carries values: %s", got[0].body)
	}
	// Bad Subscriptions: coded 400s (403 for a clinician), nothing stored, audited.
	clin := f.clinician
	for _, c := range []struct {
		cl   *http.Client
		body string
		st   int
		code string
	}{
		{admin, `{"resourceType":"Patient"}`, 400, subscription.CodeInvalidSubscription},
		{admin, subscriptionJSON("http://example.org/topic", "", rcv.ts.URL, ""), 400, subscription.CodeUnknownTopic},
		{admin, subscriptionJSON(subscription.TopicVitalSigns.URL, "code=8867-4", rcv.ts.URL, ""), 400, subscription.CodeInvalidFilter},
		{admin, subscriptionJSON(subscription.TopicVitalSigns.URL, "", rcv.ts.URL, "empty"), 400, subscription.CodeUnsupportedPayload},
		{admin, subscriptionJSON(subscription.TopicVitalSigns.URL, "", "http://169.254.169.254/latest", ""), 400, core.CodeWebhookDestinationRefused},
		{admin, subscriptionJSON(subscription.TopicVitalSigns.URL, "", "ftp://example.org/x", ""), 400, core.CodeInvalidWebhookURL},
		{clin, subscriptionJSON(subscription.TopicVitalSigns.URL, "", rcv.ts.URL, ""), 403, "forbidden"},
	} {
		if st, oo, _ := f.post(t, c.cl, c.body); st != c.st || ooCode(oo) != c.code || oo["resourceType"] != "OperationOutcome" {
			t.Errorf("POST %s = %d %s, want %d %s", c.body, st, ooCode(oo), c.st, c.code)
		}
	}
	if n := f.env.Count(t, `SELECT count(*) FROM interop_fhir_subscriptions`); n != 2 {
		t.Errorf("subscriptions stored = %d, want 2 (the refused ones stored nowhere)", n)
	}
	if n := f.env.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'http.request.rejected' AND reason = ANY($1)`,
		[]string{subscription.CodeInvalidSubscription, subscription.CodeUnknownTopic, subscription.CodeInvalidFilter, subscription.CodeUnsupportedPayload,
			subscription.CodePayloadNotAllowed, core.CodeWebhookDestinationRefused, core.CodeInvalidWebhookURL}); n < 8 {
		t.Errorf("rejections audited = %d, want at least 8", n)
	}
}

// fhirSubsScopes sets an API token's SMART scopes as an administrator would.
func (f *subsFixture) fhirSubsScopes(t *testing.T, token uuid.UUID, body string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, f.ts.URL+"/api/v1/api-tokens/"+token.String()+"/smart-scopes", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.admin.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("PUT smart-scopes %s = %d", body, resp.StatusCode)
	}
}

// Handshake, heartbeat and $status, end to end with a receiving HTTP server: a Subscription
// asking for a heartbeat every 10 s (backport-heartbeat-period, echoed in the resource) gets
// its handshake first (0 events), then an event notification (2 events), then — once
// nothing was sent for 10 s of the server's clock — a heartbeat carrying the 2 events and no
// focus; each is application/fhir+json and signed. $status answers the same count (type
// query-status) to its owner, 404 to others. A period under 10 s is refused with its code.
// Everything passes the external validator.
// Verifies: REQ-INT-048, REQ-INT-049, REQ-INT-050
func TestFHIRSubscriptionHandshakeHeartbeatStatus(t *testing.T) {
	t.Parallel()
	f := newSubsFixture(t)
	rcv := newReceiver(t)
	admin := SignedInClient(t, f.auth, authtest.Grant{Role: auth.RoleAdmin, Domain: auth.AllDomains})
	withHeartbeat := func(secs string) string {
		return strings.Replace(subscriptionJSON(subscription.TopicVitalSigns.URL, "patient="+f.p.String(), rcv.ts.URL, ""),
			`"payload":"application/fhir+json"`, `"payload":"application/fhir+json","extension":[{"url":"`+subscription.ExtHeartbeatPeriod+`","valueUnsignedInt":`+secs+`}]`, 1)
	}
	if st, oo, _ := f.post(t, admin, withHeartbeat("5")); st != 400 || ooCode(oo) != subscription.CodeHeartbeatPeriod {
		t.Errorf("heartbeat 5 s: POST = %d %v, want 400 %s", st, oo, subscription.CodeHeartbeatPeriod)
	}
	st, sub, secret := f.post(t, admin, withHeartbeat("10"))
	if st != 201 {
		t.Fatalf("POST = %d %v", st, sub)
	}
	id := sub["id"].(string)
	if !strings.Contains(mustJSON(t, sub["channel"]), `"valueUnsignedInt":10`) {
		t.Errorf("Subscription channel = %v, want the heartbeat period echoed", sub["channel"])
	}
	handshake := f.handshake(t, rcv, id, secret)
	f.upload(t, f.devP)
	f.waitDeliveries(t, id, 2)
	f.deliver(t)
	got := rcv.take()
	if len(got) != 1 || got[0].header.Get("Content-Type") != "application/fhir+json" {
		t.Fatalf("event notification: %d received %v, want 1 as application/fhir+json", len(got), got)
	}
	event, status, _ := bundleFocus(t, got[0].body)
	if ev := paramValue(status, "events-since-subscription-start", "valueString"); ev != "2" || paramValue(status, "type", "valueCode") != "event-notification" {
		t.Errorf("event notification status = %v, want event-notification with 2 events", status)
	}
	// Nothing was sent for 10 s: the dispatcher's heartbeat loop (every second) enqueues one.
	f.env.Clock.Advance(10 * time.Second)
	f.waitDeliveries(t, id, 3)
	f.deliver(t)
	got = rcv.take()
	if len(got) != 1 {
		t.Fatalf("heartbeat: receiver got %d, want 1", len(got))
	}
	hb := got[0]
	if ct := hb.header.Get("Content-Type"); ct != "application/fhir+json" {
		t.Errorf("heartbeat Content-Type = %q", ct)
	}
	if err := core.VerifyWebhook(secret, hb.header.Get(core.HeaderSignature), hb.header.Get(core.HeaderEventID), hb.body, f.env.Clock.Now(), time.Minute); err != nil {
		t.Errorf("heartbeat signature: %v", err)
	}
	var heartbeat map[string]any
	if err := json.Unmarshal(hb.body, &heartbeat); err != nil {
		t.Fatal(err)
	}
	if es := entries(heartbeat); len(es) != 1 {
		t.Errorf("heartbeat has %d entries, want the SubscriptionStatus alone", len(es))
	} else if st := es[0]["resource"].(map[string]any); paramValue(st, "type", "valueCode") != "heartbeat" ||
		paramValue(st, "events-since-subscription-start", "valueString") != "2" || paramValue(st, "notification-event", "part") != nil {
		t.Errorf("heartbeat status = %v, want type heartbeat, 2 events, no notification-event", st)
	}
	if n, err := f.s.FHIRSubscriptions().Heartbeats(context.Background()); err != nil || n != 0 {
		t.Errorf("Heartbeats right after one = %d, %v; want 0", n, err)
	}
	// $status.
	st, qs := f.get(t, admin, "/fhir/R4/Subscription/"+id+"/$status")
	if st != 200 || qs["type"] != "searchset" || len(entries(qs)) != 1 {
		t.Fatalf("$status = %d %v", st, qs)
	}
	qst := entries(qs)[0]["resource"].(map[string]any)
	if paramValue(qst, "type", "valueCode") != "query-status" || paramValue(qst, "events-since-subscription-start", "valueString") != "2" ||
		paramValue(qst, "status", "valueCode") != "active" {
		t.Errorf("$status = %v, want query-status, active, 2 events", qst)
	}
	if st, _ := f.get(t, f.clinician, "/fhir/R4/Subscription/"+id+"/$status"); st != 404 && st != 403 {
		t.Errorf("$status by a clinician = %d, want 403 or 404", st)
	}
	_, cs := f.get(t, f.clinician, "/fhir/R4/metadata")
	if !strings.Contains(mustJSON(t, cs), subscription.OpStatus) {
		t.Errorf("CapabilityStatement does not list $status")
	}
	fhirtest.Validate(t, sub, handshake, event, heartbeat, qs, cs)
}

// The dispatcher vigil serve runs (RunDurable), end to end over HTTP with real stored data:
// an administrator's id-only Subscriptions of patient q's vital signs and alarms; an upload
// of abnormal vitals (signed, through devices and core) and the alarms the rules open on
// it are notified from the stored rows, each alarm's Flag once, its reference resolving for
// a clinician of q's ward; an upload stored while the dispatcher is stopped is notified once
// it runs again, and nothing notified before is notified again.
// Verifies: REQ-INT-051
func TestFHIRSubscriptionDurableAlarmAndRestart(t *testing.T) {
	t.Parallel()
	f := newDurableSubsFixture(t)
	ctx := context.Background()
	rcv := newReceiver(t)
	admin := SignedInClient(t, f.auth, authtest.Grant{Role: auth.RoleAdmin, Domain: auth.AllDomains})
	clinB := SignedInClient(t, f.auth, authtest.Grant{Role: auth.RoleClinician, Domain: auth.WardDomain(f.wardB)})
	ids := map[string]string{}
	for _, topic := range []string{subscription.TopicVitalSigns.URL, subscription.TopicAlarmFlag.URL} {
		st, sub, _ := f.post(t, admin, subscriptionJSON(topic, "patient="+f.q.String(), rcv.ts.URL, ""))
		if st != 201 {
			t.Fatalf("POST Subscription %s = %d %v", topic, st, sub)
		}
		ids[topic] = sub["id"].(string)
		f.waitDeliveries(t, ids[topic], 1) // the handshake
	}
	vid, fid := ids[subscription.TopicVitalSigns.URL], ids[subscription.TopicAlarmFlag.URL]
	f.deliver(t)
	_ = rcv.take() // the handshakes
	// Abnormal vitals of q, stored through core; the rules open q's first alarms on them.
	f.uploadVitals(t, f.devQ, 150, 80, 45)
	obs, err := f.env.Core.ObservationsSince(ctx, f.q, f.at.Add(-time.Hour), 0)
	if err != nil || len(obs) == 0 {
		t.Fatalf("ObservationsSince(q) = %d, %v", len(obs), err)
	}
	if _, err := f.rules.Evaluate(ctx, f.q, obs); err != nil {
		t.Fatalf("Evaluate = %v", err)
	}
	als, err := f.alarms.List(ctx, alarms.Filter{PatientID: f.q, Limit: 50})
	if err != nil || len(als) == 0 {
		t.Fatalf("alarms of q = %v, %v; want those the abnormal vitals opened", als, err)
	}
	f.waitDeliveries(t, vid, 1+1)
	f.waitDeliveries(t, fid, 1+len(als))
	f.deliver(t)
	flags := map[string]int{}
	for _, n := range rcv.take() {
		_, status, focus := bundleFocus(t, n.body)
		if paramValue(status, "topic", "valueCanonical") != subscription.TopicAlarmFlag.URL {
			continue
		}
		for _, e := range focus {
			u, _ := e["fullUrl"].(string)
			flags[u]++
			if st, _ := f.get(t, clinB, u); st != 200 {
				t.Errorf("GET focus %s as a clinician of q's ward = %d, want 200", u, st)
			}
		}
	}
	for _, a := range als {
		if u := f.ts.URL + "/fhir/R4/Flag/" + a.ID.String(); flags[u] != 1 {
			t.Errorf("alarm %s (%s): notified %d times, want once (got %v)", a.ID, a.RuleID, flags[u], flags)
		}
	}
	// Stopped: an upload stored meanwhile is notified once the dispatcher runs again.
	f.stop()
	f.uploadVitals(t, f.devQ, 72, 118, 76)
	time.Sleep(300 * time.Millisecond)
	if n := f.env.Count(t, `SELECT count(*) FROM core_webhook_deliveries WHERE event_type = $1`, "fhir.subscription."+vid); n != 2 {
		t.Fatalf("vital-signs deliveries while stopped = %d, want 2 (nothing dispatches)", n)
	}
	f.startDurable(t)
	f.waitDeliveries(t, vid, 1+2)
	time.Sleep(500 * time.Millisecond) // a few passes: nothing more comes
	if n := f.env.Count(t, `SELECT count(*) FROM core_webhook_deliveries WHERE event_type = $1`, "fhir.subscription."+vid); n != 3 {
		t.Errorf("vital-signs deliveries after the restart = %d, want 3 (each upload once)", n)
	}
	if n := f.env.Count(t, `SELECT count(*) FROM core_webhook_deliveries WHERE event_type = $1`, "fhir.subscription."+fid); n != 1+len(als) {
		t.Errorf("Flag deliveries after the restart = %d, want %d (each alarm once)", n, 1+len(als))
	}
	f.deliver(t)
	got := rcv.take()
	if len(got) != 1 {
		t.Fatalf("after the restart the receiver got %d notifications, want 1", len(got))
	}
	_, status, focus := bundleFocus(t, got[0].body)
	if ev := paramValue(status, "events-since-subscription-start", "valueString"); ev != "4" || len(focus) != 2 {
		t.Errorf("notification after the restart: events since start %v, %d focus; want 4 (counting on) and 2", ev, len(focus))
	}
}
