package core_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// receiver is a webhook endpoint that verifies signatures and rejects replays, and fails the
// first `fail` requests with 503.
type receiver struct {
	mu       sync.Mutex
	secret   []byte
	now      func() time.Time
	fail     int
	seen     map[string]bool
	got      []core.Event
	requests int
	rejected []string
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests++
	id := req.Header.Get(core.HeaderEventID)
	if err := core.VerifyWebhook(r.secret, req.Header.Get(core.HeaderSignature), id, body, r.now(), 5*time.Minute); err != nil {
		r.rejected = append(r.rejected, err.Error())
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	if r.fail > 0 {
		r.fail--
		http.Error(w, "busy", http.StatusServiceUnavailable)
		return
	}
	if r.seen[id] {
		w.WriteHeader(http.StatusOK) // already processed: acknowledge, do nothing
		return
	}
	r.seen[id] = true
	var ev core.Event
	_ = json.Unmarshal(body, &ev)
	r.got = append(r.got, ev)
	w.WriteHeader(http.StatusNoContent)
}

// Webhooks are signed (HMAC over timestamp, id and body), retried with exponential backoff,
// dead-lettered after MaxAttempts (audited), listed, and redeliverable.
// Verifies: REQ-CORE-013
func TestWebhooksSignedRetriedDeadLettered(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *core.Config) {
		// The receiver runs on loopback, which the destination policy refuses unless allowed.
		c.Webhook = core.WebhookConfig{AllowNets: loopbackNets, MaxAttempts: 3, Backoff: 10 * time.Second, MaxBackoff: time.Minute, Timeout: 5 * time.Second}
	})
	rcv := &receiver{now: e.clock.Now, fail: 1, seen: map[string]bool{}}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	wh, secret, err := e.svc.CreateWebhook(e.ctx, clinician, srv.URL+"/hook", []string{"alarm.opened"})
	if err != nil {
		t.Fatal(err)
	}
	rcv.secret = secret
	if _, _, err := e.svc.CreateWebhook(e.ctx, clinician, "ftp://x", []string{"*"}); !errors.Is(err, core.ErrInvalidRequest) {
		t.Errorf("CreateWebhook(ftp) = %v, want ErrInvalidRequest", err)
	}
	patient := uuid.New()
	n, err := e.svc.EnqueueWebhooks(e.ctx,
		core.Event{ID: 1, Type: "alarm.opened", PatientID: patient, At: t0, Data: json.RawMessage(`{"x":1}`)},
		core.Event{ID: 2, Type: "alarm.acknowledged", PatientID: patient, At: t0})
	if err != nil || n != 1 {
		t.Fatalf("EnqueueWebhooks() = %d, %v; want 1 (only the subscribed type)", n, err)
	}
	// Attempt 1: 503 → retry in 10 s.
	ds, err := e.svc.DeliverDue(e.ctx)
	if err != nil || len(ds) != 1 || ds[0].Status != "pending" || ds[0].LastStatus != 503 || !ds[0].NextAttemptAt.Equal(t0.Add(10*time.Second)) {
		t.Fatalf("DeliverDue() #1 = %+v, %v; want pending, 503, next at t0+10s", ds, err)
	}
	if ds, _ := e.svc.DeliverDue(e.ctx); len(ds) != 0 {
		t.Errorf("DeliverDue() before the backoff = %d deliveries, want 0", len(ds))
	}
	e.clock.Add(10 * time.Second)
	ds, err = e.svc.DeliverDue(e.ctx)
	if err != nil || len(ds) != 1 || ds[0].Status != "delivered" || ds[0].Attempts != 2 {
		t.Fatalf("DeliverDue() #2 = %+v, %v; want delivered after 2 attempts", ds, err)
	}
	if len(rcv.got) != 1 || rcv.got[0].Type != "alarm.opened" || rcv.got[0].PatientID != patient || len(rcv.rejected) != 0 {
		t.Errorf("receiver got %+v (rejected %v), want the alarm.opened event", rcv.got, rcv.rejected)
	}
	// A forged or stale message fails verification.
	body := []byte(`{"id":1}`)
	sig := core.SignWebhook(secret, t0, "abc", body)
	if err := core.VerifyWebhook(secret, sig, "abc", []byte(`{"id":2}`), t0, time.Minute); !errors.Is(err, core.ErrWebhookSignature) {
		t.Errorf("VerifyWebhook(altered body) = %v, want ErrWebhookSignature", err)
	}
	if err := core.VerifyWebhook(secret, sig, "abd", body, t0, time.Minute); !errors.Is(err, core.ErrWebhookSignature) {
		t.Errorf("VerifyWebhook(other id) = %v, want ErrWebhookSignature", err)
	}
	if err := core.VerifyWebhook(secret, sig, "abc", body, t0.Add(10*time.Minute), time.Minute); !errors.Is(err, core.ErrWebhookStale) {
		t.Errorf("VerifyWebhook(replayed 10 min later) = %v, want ErrWebhookStale", err)
	}

	// A receiver that is down: 3 attempts with backoff 10 s, 20 s, then dead.
	srv.Close()
	if _, err := e.svc.EnqueueWebhooks(e.ctx, core.Event{ID: 3, Type: "alarm.opened", PatientID: patient, At: t0}); err != nil {
		t.Fatal(err)
	}
	var last []core.Delivery
	for i, wait := range []time.Duration{0, 10 * time.Second, 20 * time.Second} {
		e.clock.Add(wait)
		last, err = e.svc.DeliverDue(e.ctx)
		if err != nil || len(last) != 1 {
			t.Fatalf("DeliverDue() attempt %d = %+v, %v; want one", i+1, last, err)
		}
	}
	if last[0].Status != "dead" || last[0].Attempts != 3 || last[0].LastStatus != 0 {
		t.Errorf("after 3 failed attempts = %+v, want dead", last[0])
	}
	dead, err := e.svc.Deliveries(e.ctx, core.DeliveryFilter{Status: "dead"})
	if err != nil || len(dead) != 1 || dead[0].ID != last[0].ID || dead[0].WebhookID != wh.ID {
		t.Errorf("Deliveries(dead) = %+v, %v; want the dead delivery", dead, err)
	}
	if n := e.count(t, "SELECT count(*) FROM audit_events WHERE action = 'webhook.delivery_dead' AND object_id = $1 AND reason = 'no_answer'", last[0].ID.String()); n != 1 {
		t.Errorf("webhook.delivery_dead events = %d, want 1", n)
	}
	if err := e.svc.Redeliver(e.ctx, clinician, last[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.Redeliver(e.ctx, clinician, last[0].ID); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("Redeliver(not dead) = %v, want ErrNotFound", err)
	}
	if p, _ := e.svc.Deliveries(e.ctx, core.DeliveryFilter{Status: "pending"}); len(p) != 1 || p[0].Attempts != 0 {
		t.Errorf("pending after Redeliver = %+v, want one with 0 attempts", p)
	}
}

// ringSecrets derives webhook secrets with the key ring's webhook-hmac key (as cmd/vigil does).
type ringSecrets struct{ ring *keys.Ring }

func (r ringSecrets) Derive(ctx context.Context, version int, id uuid.UUID) ([]byte, int, error) {
	return r.ring.Backend().MAC(ctx, string(keys.WebhookHMAC), version, []byte("vigil/webhook-secret/v1\x00"+id.String()))
}

// With a key ring, a webhook's secret is derived from the webhook-hmac key and never stored;
// deliveries are signed with the same secret the receiver was given, also after a rotation.
// Verifies: REQ-CORE-013
func TestWebhookSecretsDerivedFromKeyRing(t *testing.T) {
	t.Parallel()
	ring := keystest.LocalRing(t, nil)
	e := newEnv(t, func(c *core.Config) {
		c.WebhookSecrets = ringSecrets{ring}
		c.Webhook.AllowNets = loopbackNets // the receiver runs on loopback
	})
	rcv := &receiver{now: e.clock.Now, seen: map[string]bool{}}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	wh, secret, err := e.svc.CreateWebhook(e.ctx, clinician, srv.URL, []string{"*"})
	if err != nil {
		t.Fatal(err)
	}
	rcv.secret = secret
	var stored []byte
	var version *int
	if err := e.pool.QueryRow(e.ctx, "SELECT secret, secret_version FROM core_webhooks WHERE id = $1", wh.ID).Scan(&stored, &version); err != nil {
		t.Fatal(err)
	}
	if stored != nil || version == nil || *version != 1 {
		t.Errorf("stored secret %x, version %v; want no secret, version 1", stored, version)
	}
	if _, err := ring.Rotate(e.ctx, keys.WebhookHMAC); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.EnqueueWebhooks(e.ctx, core.Event{ID: 9, Type: "alarm.opened", PatientID: uuid.New(), At: t0}); err != nil {
		t.Fatal(err)
	}
	ds, err := e.svc.DeliverDue(e.ctx)
	if err != nil || len(ds) != 1 || ds[0].Status != "delivered" || len(rcv.rejected) != 0 {
		t.Errorf("DeliverDue() = %+v, %v (receiver rejected %v); want delivered with the original secret", ds, err, rcv.rejected)
	}
}

// A direct webhook (a FHIR Subscription's own feed) receives only the events of its type,
// with Event.Body as the body; a webhook subscribed to "*" never receives them, and
// CreateWebhook refuses to subscribe to a direct type (so no other receiver can take over a
// Subscription's notifications). Fails on the old code, where "*" matched every type.
// Verifies: REQ-INT-035
func TestDirectWebhooks(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *core.Config) { c.Webhook = core.WebhookConfig{AllowNets: loopbackNets} })
	star, _, err := e.svc.CreateWebhook(e.ctx, clinician, "https://receiver.example/all", []string{"*"})
	if err != nil {
		t.Fatal(err)
	}
	direct, _, err := e.svc.CreateDirectWebhook(e.ctx, clinician, "https://receiver.example/fhir", core.DirectTypePrefix+"s1")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.svc.CreateWebhook(e.ctx, clinician, "https://evil.example/", []string{core.DirectTypePrefix + "s1"}); !errors.Is(err, core.ErrInvalidRequest) {
		t.Errorf("CreateWebhook(direct type) = %v, want ErrInvalidRequest", err)
	}
	if _, _, err := e.svc.CreateDirectWebhook(e.ctx, clinician, "https://receiver.example/", "alarm.opened"); !errors.Is(err, core.ErrInvalidRequest) {
		t.Errorf("CreateDirectWebhook(alarm.opened) = %v, want ErrInvalidRequest", err)
	}
	n, err := e.svc.EnqueueWebhooks(e.ctx,
		core.Event{Type: core.DirectTypePrefix + "s1", At: t0, Body: json.RawMessage(`{"resourceType":"Bundle"}`)},
		core.Event{Type: "alarm.opened", At: t0})
	if err != nil || n != 2 {
		t.Fatalf("EnqueueWebhooks = %d, %v; want 2 (the direct one to its webhook, the alarm to *)", n, err)
	}
	ds, err := e.svc.Deliveries(e.ctx, core.DeliveryFilter{WebhookID: star.ID})
	if err != nil || len(ds) != 1 || ds[0].EventType != "alarm.opened" {
		t.Errorf("deliveries of * = %+v, %v; want the alarm only", ds, err)
	}
	ds, err = e.svc.Deliveries(e.ctx, core.DeliveryFilter{WebhookID: direct.ID})
	if err != nil || len(ds) != 1 || string(ds[0].Payload) != `{"resourceType": "Bundle"}` {
		t.Errorf("deliveries of the direct webhook = %+v, %v; want the Body as payload", ds, err)
	}
	if _, err := e.svc.EnqueueWebhooks(e.ctx, core.Event{Type: core.DirectTypePrefix + "s1", Body: json.RawMessage(`{`)}); !errors.Is(err, core.ErrInvalidRequest) {
		t.Errorf("EnqueueWebhooks(Body not JSON) = %v, want ErrInvalidRequest", err)
	}
}
