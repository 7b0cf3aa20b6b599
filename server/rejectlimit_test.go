package server_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/devices/devicestest"
	"github.com/vigilhealth/vigil/server"
)

type limitedHTTP struct {
	*devicestest.Env
	srv *server.Server
	ts  *httptest.Server
	cl  *http.Client // signed in as a user holding every role
	cfg server.Config
}

func newLimitedHTTP(t *testing.T, cfg server.Config) *limitedHTTP {
	t.Helper()
	e := devicestest.New(t, nil)
	cfg.Pool, cfg.Recorder, cfg.Devices, cfg.Core, cfg.Now = e.Pool, e.Rec, e.Devices, e.Core, e.Clock.Now
	var cl *http.Client
	cfg.Auth, cl = server.SignedIn(t, e.Pool, e.Rec)
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	return &limitedHTTP{Env: e, srv: srv, ts: ts, cl: cl, cfg: cfg}
}

// do sends a request from source (X-Forwarded-For; "" for the TCP peer) and returns the
// status, the error code, Retry-After and the request id.
func (h *limitedHTTP) do(t *testing.T, method, path, source, ctype string, body []byte) (status int, code, retry, reqID string) {
	t.Helper()
	req, _ := http.NewRequest(method, h.ts.URL+path, bytes.NewReader(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if source != "" {
		req.Header.Set("X-Forwarded-For", source)
	}
	resp, err := h.cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var ae apiErr
	_ = json.Unmarshal(b, &ae)
	return resp.StatusCode, ae.Error.Code, resp.Header.Get("Retry-After"), resp.Header.Get(echo.HeaderXRequestID)
}

// A flood of junk from one source is audited up to the source's budget of rejected requests;
// past it every request of the source is refused at once with 429 rate_limited and
// Retry-After, without reaching a handler, and the refusals are recorded as one
// http.request.throttled event with their number. The probes are never refused, and the
// source is served again once its bucket refills.
// Verifies: REQ-FND-014
func TestRejectedRequestsThrottledPerSource(t *testing.T) {
	h := newLimitedHTTP(t, server.Config{RejectedPerSource: server.Limit{Rate: 1, Burst: 20}})
	junk := []byte{0xa1, 0x01}
	counts := map[string]int{}
	for range 300 {
		status, code, retry, _ := h.do(t, "POST", "/api/v1/devices/enroll", "", "application/cbor", junk)
		counts[fmt.Sprint(status, " ", code)]++
		if status == http.StatusTooManyRequests && retry != "1" {
			t.Fatalf("429 Retry-After = %q, want 1", retry)
		}
	}
	if counts["400 malformed_upload"] != 20 || counts["429 rate_limited"] != 280 {
		t.Errorf("300 junk enrollments answered %v, want 20 × 400 malformed_upload then 280 × 429 rate_limited", counts)
	}
	if n := h.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'device.enroll.rejected'`); n != 20 {
		t.Errorf("device.enroll.rejected events = %d, want 20 (the budget)", n)
	}
	if n := h.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'http.request.rejected'`); n != 20 {
		t.Errorf("http.request.rejected events = %d, want 20 (the budget)", n)
	}
	if status, _, _, _ := h.do(t, "GET", "/readyz", "", "", nil); status != http.StatusOK {
		t.Errorf("GET /readyz from the throttled source = %d, want 200", status)
	}
	// Other requests of the source are refused too while its bucket is empty.
	if status, code, _, _ := h.do(t, "GET", "/api/v1/patients", "", "", nil); status != http.StatusTooManyRequests || code != "rate_limited" {
		t.Errorf("GET /patients from the throttled source = %d %s, want 429 rate_limited", status, code)
	}

	if err := h.srv.FlushThrottled(h.Ctx); err != nil {
		t.Fatal(err)
	}
	var requests int
	var object, source string
	if err := h.Pool.QueryRow(h.Ctx, `SELECT (payload->>'requests')::int, object_id, source_addr FROM audit_events
		WHERE action = 'http.request.throttled' AND object_type = 'source_address' AND reason = 'rate_limited'`).
		Scan(&requests, &object, &source); err != nil {
		t.Fatalf("http.request.throttled event: %v", err)
	}
	if requests != 281 || object != "127.0.0.1" || source != "127.0.0.1" {
		t.Errorf("throttled event = %d requests of %s (source %s), want 281 of 127.0.0.1", requests, object, source)
	}
	if err := h.srv.FlushThrottled(h.Ctx); err != nil {
		t.Fatal(err)
	}
	if n := h.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'http.request.throttled'`); n != 1 {
		t.Errorf("throttled events after a second flush with nothing new = %d, want 1", n)
	}

	// Two seconds later the source has two tokens again: its requests reach the handler.
	h.Clock.Add(2 * time.Second)
	if status, code, _, _ := h.do(t, "POST", "/api/v1/devices/enroll", "", "application/cbor", junk); status != http.StatusBadRequest {
		t.Errorf("junk enrollment after the refill = %d %s, want 400 (handled again)", status, code)
	}
}

// Rejected uploads that name a device spend that device's budget, whatever their source:
// past it, uploads naming the device are refused with 429 unless they verify. A genuine
// upload of the device goes through, and so does one from a throttled source (devices behind
// one hospital NAT share an address): a flood must never silence a device.
// Verifies: REQ-FND-014, REQ-DEV-130
func TestRejectedUploadsThrottledPerDevice(t *testing.T) {
	h := newLimitedHTTP(t, server.Config{TrustProxyHeaders: true,
		RejectedPerSource: server.Limit{Rate: 1, Burst: 3}, RejectedPerDevice: server.Limit{Rate: 1, Burst: 5}})
	victim := h.NewDevice(t)
	_, wrongKey, _ := ed25519.GenerateKey(rand.Reader)
	forged := &devicestest.Device{ID: victim.ID, Key: wrongKey, KV: victim.KV}
	counts := map[string]int{}
	for i := range 12 {
		src := fmt.Sprintf("203.0.113.%d", i+1) // a different source each time
		status, code, _, _ := h.do(t, "POST", "/api/v1/uploads", src, "application/cbor", forged.Upload(t, h.Clock.Now(), 1))
		counts[fmt.Sprint(status, " ", code)]++
	}
	if counts["401 invalid_signature"] != 5 || counts["429 rate_limited"] != 7 {
		t.Errorf("12 forged uploads naming one device answered %v, want 5 × 401 invalid_signature then 7 × 429", counts)
	}
	if n := h.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'upload.rejected' AND actor_id = $1`, victim.ID.String()); n != 5 {
		t.Errorf("upload.rejected events naming the device = %d, want 5", n)
	}
	genuine := victim.Upload(t, h.Clock.Now(), 1)
	if status, code, _, _ := h.do(t, "POST", "/api/v1/uploads", "198.51.100.7", "application/cbor", genuine); status != http.StatusCreated {
		t.Fatalf("genuine upload of the throttled device = %d %s, want 201", status, code)
	}

	// A source that spent its budget: its junk is refused, its genuine uploads are not.
	nat := "192.0.2.50"
	for range 3 {
		if status, _, _, _ := h.do(t, "POST", "/api/v1/uploads", nat, "application/cbor", []byte{0xa1, 0x01}); status != http.StatusBadRequest {
			t.Fatalf("junk upload within the source's budget = %d, want 400", status)
		}
	}
	if status, code, retry, _ := h.do(t, "POST", "/api/v1/uploads", nat, "application/cbor", []byte{0xa1, 0x01}); status != http.StatusTooManyRequests || retry == "" {
		t.Errorf("junk upload past the source's budget = %d %s (Retry-After %q), want 429 with Retry-After", status, code, retry)
	}
	if status, code, _, _ := h.do(t, "POST", "/api/v1/uploads", nat, "text/plain", []byte("junk")); status != http.StatusTooManyRequests {
		t.Errorf("unreadable upload past the source's budget = %d %s, want 429 (not audited one by one)", status, code)
	}
	other := h.NewDevice(t)
	if status, code, _, _ := h.do(t, "POST", "/api/v1/uploads", nat, "application/cbor", other.Upload(t, h.Clock.Now(), 1)); status != http.StatusCreated {
		t.Errorf("genuine upload from the throttled source = %d %s, want 201", status, code)
	}
	// The exact re-send of an accepted upload is genuine too (its answer was lost): from the
	// throttled source, for the throttled device, it gets its receipt.
	if status, code, _, _ := h.do(t, "POST", "/api/v1/uploads", nat, "application/cbor", genuine); status != http.StatusOK {
		t.Errorf("re-send of an accepted upload from the throttled source = %d %s, want 200", status, code)
	}

	if err := h.srv.FlushThrottled(h.Ctx); err != nil {
		t.Fatal(err)
	}
	rows, err := h.Pool.Query(h.Ctx, `SELECT object_type, object_id, (payload->>'requests')::int FROM audit_events
		WHERE action = 'http.request.throttled' ORDER BY object_type`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for rows.Next() {
		var typ, id string
		var n int
		if err := rows.Scan(&typ, &id, &n); err != nil {
			t.Fatal(err)
		}
		got[typ+" "+id] = n
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	want := map[string]int{"device " + victim.ID.String(): 7, "source_address " + nat: 2}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("throttled events = %v, want %v", got, want)
	}
}
