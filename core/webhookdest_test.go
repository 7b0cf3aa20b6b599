package core_test

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/core"
)

// loopbackNets allows the httptest receivers (127.0.0.1, ::1) that the destination policy
// refuses by default.
var loopbackNets = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// The destination policy classifies addresses without any allowed networks.
// Verifies: REQ-CORE-015
func TestWebhookDestinationClass(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ addr, want string }{
		{"127.0.0.1", "loopback"},
		{"127.255.1.2", "loopback"},
		{"::1", "loopback"},
		{"::ffff:127.0.0.1", "loopback"},
		{"10.1.2.3", "private"},
		{"172.16.0.1", "private"},
		{"172.31.255.255", "private"},
		{"192.168.1.1", "private"},
		{"fc00::1", "private"},
		{"fd12:3456::1", "private"},
		{"::ffff:10.0.0.1", "private"},
		{"169.254.169.254", "link_local"},
		{"::ffff:169.254.169.254", "link_local"},
		{"fe80::1", "link_local"},
		{"fe80::1%eth0", "link_local"},
		{"0.0.0.0", "unspecified"},
		{"::", "unspecified"},
		{"0.1.2.3", "this_network"},
		{"224.0.0.1", "multicast"},
		{"239.1.1.1", "multicast"},
		{"ff02::1", "multicast"},
		{"100.64.0.1", "shared_address_space"},
		{"100.127.255.254", "shared_address_space"},
		{"255.255.255.255", "reserved"},
		{"198.18.0.1", "reserved"},
		{"fec0::1", "site_local"},
		{"::127.0.0.1", "embedded_loopback"},
		{"64:ff9b::a9fe:a9fe", "embedded_link_local"},
		{"2002:a00:1::1", "embedded_private"},
		// Public addresses pass.
		{"8.8.8.8", ""},
		{"100.128.0.1", ""},
		{"172.32.0.1", ""},
		{"2001:4860:4860::8888", ""},
		{"64:ff9b::808:808", ""},
		{"::ffff:8.8.8.8", ""},
	} {
		if got := core.WebhookDestinationClass(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("WebhookDestinationClass(%s) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}

// CreateWebhook refuses, with a stable code, URLs it can tell are forbidden without resolving
// DNS: nothing is stored, and each refusal is audited as webhook.rejected with its code.
// Verifies: REQ-CORE-015
func TestCreateWebhookRefusesForbiddenDestinations(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil) // default policy: no allowed networks
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		t.Error("a refused webhook was contacted at creation")
	}))
	defer srv.Close()
	for _, tc := range []struct {
		url, code string
		types     []string
	}{
		{url: srv.URL + "/hook", code: core.CodeWebhookDestinationRefused},
		{url: "http://[::1]/", code: core.CodeWebhookDestinationRefused},
		{url: "http://[::1]:8080/hook", code: core.CodeWebhookDestinationRefused},
		{url: "http://169.254.169.254/latest/meta-data/", code: core.CodeWebhookDestinationRefused},
		{url: "http://10.1.2.3/", code: core.CodeWebhookDestinationRefused},
		{url: "https://192.168.0.10:8443/", code: core.CodeWebhookDestinationRefused},
		{url: "http://100.64.1.1/", code: core.CodeWebhookDestinationRefused},
		{url: "http://0.0.0.0:9000/", code: core.CodeWebhookDestinationRefused},
		{url: "http://[::ffff:127.0.0.1]/", code: core.CodeWebhookDestinationRefused},
		{url: "http://[::ffff:a9fe:a9fe]/", code: core.CodeWebhookDestinationRefused},
		{url: "http://[fe80::1%25eth0]/", code: core.CodeWebhookDestinationRefused},
		{url: "http://localhost:8080/", code: core.CodeWebhookDestinationRefused},
		{url: "http://LocalHost./", code: core.CodeWebhookDestinationRefused},
		{url: "http://metadata.localhost/", code: core.CodeWebhookDestinationRefused},
		{url: "http://127.1/", code: core.CodeInvalidWebhookURL},
		{url: "http://2130706433/", code: core.CodeInvalidWebhookURL},
		{url: "http://0x7f.0.0.1/", code: core.CodeInvalidWebhookURL},
		{url: "ftp://hooks.example.org/", code: core.CodeInvalidWebhookURL},
		{url: "/relative/hook", code: core.CodeInvalidWebhookURL},
		{url: "https://user:s3cret-pw@hooks.example.org/vigil", code: core.CodeWebhookURLCredentials},
		{url: "https://token-only@hooks.example.org/vigil", code: core.CodeWebhookURLCredentials},
		{url: "https://hooks.example.org/vigil", code: core.CodeInvalidWebhookEventTypes, types: []string{}},
	} {
		types := tc.types
		if types == nil {
			types = []string{"*"}
		}
		before := e.count(t, "SELECT count(*) FROM audit_events WHERE action = 'webhook.rejected' AND reason = $1 AND request_id = $2 AND actor_id = 'nurse-1' AND outcome = 'rejected'", tc.code, clinician.RequestID)
		_, _, err := e.svc.CreateWebhook(e.ctx, clinician, tc.url, types)
		var we *core.WebhookError
		if !errors.As(err, &we) || we.Code != tc.code || !errors.Is(err, core.ErrInvalidRequest) {
			t.Errorf("CreateWebhook(%q) = %v, want a WebhookError %s (ErrInvalidRequest)", tc.url, err, tc.code)
			continue
		}
		if got := errors.Is(err, core.ErrWebhookDestination); got != (tc.code == core.CodeWebhookDestinationRefused) {
			t.Errorf("CreateWebhook(%q): errors.Is(ErrWebhookDestination) = %v", tc.url, got)
		}
		after := e.count(t, "SELECT count(*) FROM audit_events WHERE action = 'webhook.rejected' AND reason = $1 AND request_id = $2 AND actor_id = 'nurse-1' AND outcome = 'rejected'", tc.code, clinician.RequestID)
		if after != before+1 {
			t.Errorf("CreateWebhook(%q): webhook.rejected events with reason %s = %d, want %d", tc.url, tc.code, after, before+1)
		}
	}
	if n := e.count(t, "SELECT count(*) FROM core_webhooks"); n != 0 {
		t.Errorf("core_webhooks rows after refusals = %d, want 0 (nothing stored)", n)
	}
	if n := e.count(t, "SELECT count(*) FROM audit_events WHERE action = 'webhook.created'"); n != 0 {
		t.Errorf("webhook.created events after refusals = %d, want 0", n)
	}
	// Credentials never reach the audit trail.
	if n := e.count(t, "SELECT count(*) FROM audit_events WHERE payload::text LIKE '%s3cret%' OR payload::text LIKE '%token-only%'"); n != 0 {
		t.Errorf("audit events carrying the URL's credentials = %d, want 0", n)
	}
	// A host name is not resolved at creation (this one does not resolve at all).
	if _, _, err := e.svc.CreateWebhook(e.ctx, clinician, "https://hooks.example.org/vigil", []string{"*"}); err != nil {
		t.Errorf("CreateWebhook(public name) = %v, want success", err)
	}
	if _, _, err := e.svc.CreateWebhook(e.ctx, clinician, "https://8.8.8.8/vigil", []string{"*"}); err != nil {
		t.Errorf("CreateWebhook(public address) = %v, want success", err)
	}
}

// A receiver's token in the query string reaches the stored webhook (deliveries need it) but
// never the audit trail, which cannot be edited.
// Verifies: REQ-CORE-016
func TestWebhookCreatedAuditHasNoQuerySecret(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	const raw = "https://hooks.example.org/vigil?token=tok-s3cret-1&team=icu#frag-s3cret"
	w, _, err := e.svc.CreateWebhook(e.ctx, clinician, raw, []string{"*"})
	if err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, "SELECT count(*) FROM core_webhooks WHERE id = $1 AND url LIKE '%token=tok-s3cret-1%'", w.ID); n != 1 {
		t.Fatalf("stored webhook URL lost its token (%d rows)", n)
	}
	if n := e.count(t, "SELECT count(*) FROM audit_events WHERE action = 'webhook.created' AND payload->>'url' = 'https://hooks.example.org/vigil?team=REDACTED&token=REDACTED' AND length(payload->>'url_sha256') = 64"); n != 1 {
		t.Errorf("webhook.created events with the redacted URL and its hash: %d, want 1", n)
	}
	if _, _, err := e.svc.CreateWebhook(e.ctx, clinician, "http://10.0.0.1/x?token=tok-s3cret-2", []string{"*"}); !errors.Is(err, core.ErrWebhookDestination) {
		t.Fatalf("CreateWebhook(private) = %v, want ErrWebhookDestination", err)
	}
	if n := e.count(t, "SELECT count(*) FROM audit_events WHERE payload::text LIKE '%s3cret%'"); n != 0 {
		t.Errorf("%d audit events carry a query secret", n)
	}
	if n := e.count(t, "SELECT count(*) FROM audit_events WHERE action = 'webhook.rejected' AND payload->>'url' = 'http://10.0.0.1/x?token=REDACTED'"); n != 1 {
		t.Errorf("webhook.rejected events with the redacted URL: %d, want 1", n)
	}
}

// An operator's allowed networks let a webhook reach an internal receiver.
// Verifies: REQ-CORE-015
func TestCreateWebhookAllowNets(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *core.Config) {
		c.Webhook.AllowNets = []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16"), netip.MustParsePrefix("127.0.0.1/32")}
	})
	for _, u := range []string{"http://10.20.3.4/hook", "http://[::ffff:10.20.3.4]/hook", "http://127.0.0.1:9/hook", "http://localhost:9/hook"} {
		if _, _, err := e.svc.CreateWebhook(e.ctx, clinician, u, []string{"*"}); err != nil {
			t.Errorf("CreateWebhook(%q) with 10.20.0.0/16 and 127.0.0.1/32 allowed = %v, want success", u, err)
		}
	}
	for _, u := range []string{"http://10.21.0.1/hook", "http://127.0.0.2/hook", "http://[::1]/hook", "http://169.254.169.254/"} {
		if _, _, err := e.svc.CreateWebhook(e.ctx, clinician, u, []string{"*"}); !errors.Is(err, core.ErrWebhookDestination) {
			t.Errorf("CreateWebhook(%q) outside the allowed networks = %v, want ErrWebhookDestination", u, err)
		}
	}
	if _, err := core.New(core.Config{Pool: e.pool, Recorder: e.rec, Webhook: core.WebhookConfig{AllowNets: []netip.Prefix{{}}}}); err == nil {
		t.Error("core.New(AllowNets with an invalid prefix) = nil error, want an error")
	}
}

// countingReceiver counts the requests it gets and answers with its handler.
type countingReceiver struct {
	n      atomic.Int64
	handle func(w http.ResponseWriter, r *http.Request)
}

func (c *countingReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.n.Add(1)
	if c.handle != nil {
		c.handle(w, r)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// A name that passes creation but resolves to a refused address (here "localhost", created
// while loopback was allowed, delivered by a service that does not allow it) is refused when
// the delivery dials: the receiver gets nothing and the delivery fails with the reason.
// Verifies: REQ-CORE-015
func TestWebhookDeliveryRefusedAtDialTime(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *core.Config) { c.Webhook.AllowNets = loopbackNets })
	rcv := &countingReceiver{}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	wh, _, err := e.svc.CreateWebhook(e.ctx, clinician, "http://localhost:"+strconv.Itoa(port)+"/hook", []string{"*"})
	if err != nil {
		t.Fatal(err)
	}
	// The delivering service has the default policy (no allowed networks).
	deliverer, err := core.New(core.Config{Pool: e.pool, Recorder: e.rec, Now: e.clock.Now, Webhook: core.WebhookConfig{MaxAttempts: 1, Timeout: 5 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := deliverer.EnqueueWebhooks(e.ctx, core.Event{ID: 1, Type: "alarm.opened", PatientID: uuid.New(), At: t0, Data: json.RawMessage(`{}`)}); err != nil || n != 1 {
		t.Fatalf("EnqueueWebhooks() = %d, %v; want 1", n, err)
	}
	ds, err := deliverer.DeliverDue(e.ctx)
	if err != nil || len(ds) != 1 {
		t.Fatalf("DeliverDue() = %+v, %v; want one delivery", ds, err)
	}
	d := ds[0]
	if d.Status != "dead" || d.LastStatus != 0 || !strings.HasPrefix(d.LastError, "destination refused:") || !strings.Contains(d.LastError, "loopback") {
		t.Errorf("DeliverDue() = status %s, last status %d, last error %q; want dead, 0, destination refused (loopback)", d.Status, d.LastStatus, d.LastError)
	}
	if n := rcv.n.Load(); n != 0 {
		t.Errorf("receiver got %d requests, want 0", n)
	}
	stored, err := e.svc.Deliveries(e.ctx, core.DeliveryFilter{WebhookID: wh.ID})
	if err != nil || len(stored) != 1 || stored[0].LastError != d.LastError {
		t.Errorf("Deliveries() = %+v, %v; want the refused delivery with its reason recorded", stored, err)
	}
	if n := e.count(t, "SELECT count(*) FROM audit_events WHERE action = 'webhook.delivery_dead' AND object_id = $1 AND reason = 'destination_refused'", d.ID.String()); n != 1 {
		t.Errorf("webhook.delivery_dead events with reason destination_refused = %d, want 1", n)
	}
	// The same delivery by a service that allows loopback goes through.
	if err := e.svc.Redeliver(e.ctx, clinician, d.ID); err != nil {
		t.Fatal(err)
	}
	if ds, err := e.svc.DeliverDue(e.ctx); err != nil || len(ds) != 1 || ds[0].Status != "delivered" || rcv.n.Load() != 1 {
		t.Errorf("DeliverDue() with loopback allowed = %+v, %v (receiver got %d); want delivered", ds, err, rcv.n.Load())
	}
}

// A receiver answering with a redirect is not followed: the attempt fails with the 3xx status
// and a clear reason, and the redirect's target gets nothing.
// Verifies: REQ-CORE-015
func TestWebhookRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, func(c *core.Config) {
				c.Webhook = core.WebhookConfig{AllowNets: loopbackNets, MaxAttempts: 2, Backoff: time.Minute, Timeout: 5 * time.Second}
			})
			target := &countingReceiver{}
			tsrv := httptest.NewServer(target)
			defer tsrv.Close()
			redirector := &countingReceiver{handle: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, tsrv.URL+"/elsewhere", status)
			}}
			rsrv := httptest.NewServer(redirector)
			defer rsrv.Close()
			if _, _, err := e.svc.CreateWebhook(e.ctx, clinician, rsrv.URL+"/hook", []string{"*"}); err != nil {
				t.Fatal(err)
			}
			if _, err := e.svc.EnqueueWebhooks(e.ctx, core.Event{ID: 1, Type: "alarm.opened", PatientID: uuid.New(), At: t0}); err != nil {
				t.Fatal(err)
			}
			ds, err := e.svc.DeliverDue(e.ctx)
			if err != nil || len(ds) != 1 {
				t.Fatalf("DeliverDue() = %+v, %v; want one delivery", ds, err)
			}
			if d := ds[0]; d.Status != "pending" || d.LastStatus != status || !strings.Contains(d.LastError, "redirect not followed") {
				t.Errorf("DeliverDue() = status %s, last status %d, last error %q; want pending (retried), %d, redirect not followed", d.Status, d.LastStatus, d.LastError, status)
			}
			if n := redirector.n.Load(); n != 1 {
				t.Errorf("redirecting receiver got %d requests, want 1", n)
			}
			if n := target.n.Load(); n != 0 {
				t.Errorf("redirect target got %d requests, want 0 (redirects are not followed)", n)
			}
			// After the last attempt the delivery is dead with the redirect's status as reason.
			e.clock.Add(time.Minute)
			ds, err = e.svc.DeliverDue(e.ctx)
			if err != nil || len(ds) != 1 || ds[0].Status != "dead" {
				t.Fatalf("DeliverDue() #2 = %+v, %v; want dead", ds, err)
			}
			if n := e.count(t, "SELECT count(*) FROM audit_events WHERE action = 'webhook.delivery_dead' AND reason = $1", "http_"+strconv.Itoa(status)); n != 1 {
				t.Errorf("webhook.delivery_dead events with reason http_%d = %d, want 1", status, n)
			}
			if n := target.n.Load(); n != 0 {
				t.Errorf("redirect target got %d requests, want 0", n)
			}
		})
	}
}
