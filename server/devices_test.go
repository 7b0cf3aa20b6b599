package server_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/devicestest"
	"github.com/vigilhealth/vigil/devices/envelope"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/server"
)

type devHTTP struct {
	*devicestest.Env
	ts       *httptest.Server
	overload *atomic.Bool
}

func newDevHTTP(t *testing.T, mod func(*devices.Config)) *devHTTP {
	t.Helper()
	over := &atomic.Bool{}
	e := devicestest.New(t, func(c *devices.Config) {
		c.Pushback = devices.AdmitFunc(func() error {
			if over.Load() {
				return &audit.PushbackError{RetryAfter: 3 * time.Second}
			}
			return nil
		})
		if mod != nil {
			mod(c)
		}
	})
	srv, err := server.New(server.Config{Pool: e.Pool, Recorder: e.Rec, Devices: e.Devices, Now: e.Clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	return &devHTTP{Env: e, ts: ts, overload: over}
}

type apiErr struct {
	Error struct {
		Code      string `json:"code"`
		RequestID string `json:"request_id"`
	} `json:"error"`
}

func (h *devHTTP) post(t *testing.T, path, ctype string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, h.ts.URL+path, bytes.NewReader(body))
	req.Header.Set("Content-Type", ctype)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// Verifies: REQ-DEV-020, REQ-DEV-023, REQ-DEV-030
func TestHTTPUploadAccepted(t *testing.T) {
	t.Parallel()
	h := newDevHTTP(t, nil)
	d := h.NewDevice(t)
	raw := d.Upload(t, h.Clock.Now(), 10)
	resp, body := h.post(t, "/api/v1/uploads", "application/cbor", raw)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /uploads = %d %s, want 201", resp.StatusCode, body)
	}
	var rj struct {
		Receipt    string `json:"receipt"`
		UploadHash string `json:"upload_hash"`
		Seq        uint64 `json:"seq"`
		Replayed   bool   `json:"replayed"`
	}
	if err := json.Unmarshal(body, &rj); err != nil {
		t.Fatal(err)
	}
	wire, _ := base64.StdEncoding.DecodeString(rj.Receipt)
	sr, rec, err := envelope.ParseSignedReceipt(wire)
	if err != nil {
		t.Fatalf("ParseSignedReceipt = %v", err)
	}
	if err := envelope.VerifyReceipt(h.Signer.Public(), sr); err != nil || rec.Seq != 1 || hex.EncodeToString(rec.Upload) != rj.UploadHash {
		t.Errorf("receipt = %+v (verify %v), want seq 1 for %s", rec, err, rj.UploadHash)
	}
	// Exact re-send: 200 with the same receipt body, CBOR on request.
	req, _ := http.NewRequest(http.MethodPost, h.ts.URL+"/api/v1/uploads", bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/cbor")
	req.Header.Set("Accept", "application/cbor")
	resp2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := io.ReadAll(resp2.Body)
	resp2.Body.Close()
	sr2, _, err := envelope.ParseSignedReceipt(b2)
	if resp2.StatusCode != http.StatusOK || err != nil || !bytes.Equal(sr2.Body, sr.Body) {
		t.Errorf("re-send = %d (%v), want 200 with the original receipt", resp2.StatusCode, err)
	}
	// Proof: the event is not shipped in this test (no audit shipper): 404 proof_pending.
	r3, err := http.Get(h.ts.URL + "/api/v1/uploads/" + rj.UploadHash + "/proof")
	if err != nil {
		t.Fatal(err)
	}
	var ae apiErr
	_ = json.NewDecoder(r3.Body).Decode(&ae)
	r3.Body.Close()
	if r3.StatusCode != http.StatusNotFound || ae.Error.Code != "proof_pending" {
		t.Errorf("GET proof = %d %s, want 404 proof_pending", r3.StatusCode, ae.Error.Code)
	}
	r4, _ := http.Get(h.ts.URL + "/api/v1/uploads/" + strings.Repeat("ab", 32) + "/proof")
	_ = json.NewDecoder(r4.Body).Decode(&ae)
	r4.Body.Close()
	if r4.StatusCode != http.StatusNotFound || ae.Error.Code != devices.CodeNotFound {
		t.Errorf("GET proof(unknown) = %d %s, want 404 %s", r4.StatusCode, ae.Error.Code, devices.CodeNotFound)
	}
}

// Verifies: REQ-DEV-021, REQ-DEV-022, REQ-DEV-023, REQ-DEV-024, REQ-DEV-025, REQ-DEV-026, REQ-DEV-040, REQ-DEV-041, REQ-AUD-031
func TestHTTPUploadRejections(t *testing.T) {
	t.Parallel()
	h := newDevHTTP(t, func(c *devices.Config) { c.RatePerSecond = 1; c.RateBurst = 3 })
	limited := h.NewDevice(t)
	cases := []struct {
		name       string
		body       func(t *testing.T) []byte
		ctype      string
		status     int
		code       string
		retryAfter string
		overload   bool
	}{
		{name: "malformed", status: 400, code: "malformed_upload", body: func(*testing.T) []byte { return []byte{0xa1, 0x01} }},
		{name: "too large", status: 413, code: "upload_too_large", body: func(*testing.T) []byte { return make([]byte, 300<<10) }},
		// Over the server's own body limit (1 MiB) too, an upload is refused as an upload.
		{name: "over the server body limit", status: 413, code: "upload_too_large", body: func(*testing.T) []byte { return make([]byte, 2<<20) }},
		{name: "wrong content type", status: 415, code: "unsupported_media_type", ctype: "application/json", body: func(*testing.T) []byte { return []byte("{}") }},
		{name: "unknown device", status: 401, code: "unknown_device", body: func(t *testing.T) []byte {
			d := h.NewDevice(t)
			d.ID = uuid.New()
			return d.Upload(t, h.Clock.Now(), 1)
		}},
		{name: "bad signature", status: 401, code: "invalid_signature", body: func(t *testing.T) []byte {
			d := h.NewDevice(t)
			_, d.Key, _ = ed25519.GenerateKey(rand.Reader)
			return d.Upload(t, h.Clock.Now(), 1)
		}},
		{name: "unknown key", status: 401, code: "unknown_key", body: func(t *testing.T) []byte {
			d := h.NewDevice(t)
			d.KV = 9
			return d.Upload(t, h.Clock.Now(), 1)
		}},
		{name: "suspended", status: 403, code: "device_suspended", body: func(t *testing.T) []byte {
			d := h.NewDevice(t)
			if _, err := h.Devices.SetStatus(h.Ctx, devicestest.Admin, d.ID, devices.StatusSuspended, ""); err != nil {
				t.Fatal(err)
			}
			return d.Upload(t, h.Clock.Now(), 1)
		}},
		{name: "decommissioned", status: 403, code: "device_decommissioned", body: func(t *testing.T) []byte {
			d := h.NewDevice(t)
			if _, err := h.Devices.SetStatus(h.Ctx, devicestest.Admin, d.ID, devices.StatusDecommissioned, ""); err != nil {
				t.Fatal(err)
			}
			return d.Upload(t, h.Clock.Now(), 1)
		}},
		{name: "replay", status: 409, code: "replay", body: func(t *testing.T) []byte {
			d := h.NewDevice(t)
			if _, err := h.Devices.Accept(h.Ctx, d.Upload(t, h.Clock.Now(), 1), devices.Meta{Transport: "http"}); err != nil {
				t.Fatal(err)
			}
			d.Seq = 0
			return d.Upload(t, h.Clock.Now(), 2)
		}},
		{name: "not assigned", status: 409, code: "device_not_assigned", body: func(t *testing.T) []byte {
			d := h.RegisterDevice(t)
			h.Enroll(t, d)
			return d.Upload(t, h.Clock.Now(), 1)
		}},
		{name: "skew", status: 422, code: "clock_skew", body: func(t *testing.T) []byte {
			return h.NewDevice(t).Upload(t, h.Clock.Now().Add(-time.Hour), 1)
		}},
		// Refusals of the clinical core come back with core's code and are audited as
		// upload.rejected with the request's id and source address, like the others.
		{name: "unknown code", status: 422, code: "unknown_code", body: func(t *testing.T) []byte {
			return coreRefused(t, h, envelope.Sample{Code: "99999-9", Value: 1, Unit: "/min"}, 0)
		}},
		{name: "wrong unit", status: 422, code: "wrong_unit", body: func(t *testing.T) []byte {
			return coreRefused(t, h, envelope.Sample{Code: "8867-4", Value: 72, Unit: "kg"}, 0)
		}},
		{name: "impossible value", status: 422, code: "impossible_value", body: func(t *testing.T) []byte {
			return coreRefused(t, h, envelope.Sample{Code: "8867-4", Value: -5, Unit: "/min"}, 0)
		}},
		{name: "future time", status: 422, code: "future_time", body: func(t *testing.T) []byte {
			return coreRefused(t, h, envelope.Sample{Code: "8867-4", Value: 72, Unit: "/min"}, time.Hour)
		}},
		{name: "rate limited", status: 429, code: "rate_limited", retryAfter: "1", body: func(t *testing.T) []byte {
			for i := 0; i < 3; i++ {
				if _, err := h.Devices.Accept(h.Ctx, limited.Upload(t, h.Clock.Now(), 1), devices.Meta{Transport: "http"}); err != nil {
					t.Fatal(err)
				}
			}
			return limited.Upload(t, h.Clock.Now(), 1)
		}},
		{name: "back-pressure", status: 503, code: "backpressure", retryAfter: "3", overload: true, body: func(t *testing.T) []byte {
			return h.NewDevice(t).Upload(t, h.Clock.Now(), 1)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body := tc.body(t)
			obs := h.Count(t, `SELECT count(*) FROM core_observations`)
			h.overload.Store(tc.overload)
			defer h.overload.Store(false)
			ct := tc.ctype
			if ct == "" {
				ct = "application/cbor"
			}
			resp, b := h.post(t, "/api/v1/uploads", ct, body)
			var ae apiErr
			_ = json.Unmarshal(b, &ae)
			if resp.StatusCode != tc.status || ae.Error.Code != tc.code {
				t.Fatalf("POST /uploads = %d %s, want %d %s", resp.StatusCode, b, tc.status, tc.code)
			}
			if got := resp.Header.Get("Retry-After"); got != tc.retryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tc.retryAfter)
			}
			if n := h.Count(t, `SELECT count(*) FROM core_observations`); n != obs {
				t.Errorf("observations = %d, want %d (nothing stored)", n, obs)
			}
			// Every rejection is audited with its reason: by devices (upload.rejected) where the
			// body reached it, and always by the server (http.request.rejected).
			wantHTTP := 1
			if tc.status >= 500 {
				wantHTTP = 0 // the server audits 4xx; the 503 is audited by devices below
			}
			if n := h.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'http.request.rejected' AND reason = $1 AND request_id = $2`, tc.code, ae.Error.RequestID); n != wantHTTP {
				t.Errorf("http.request.rejected events = %d, want %d", n, wantHTTP)
			}
			if tc.code != "unsupported_media_type" {
				if n := h.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'upload.rejected' AND reason = $1 AND request_id = $2
					AND source_addr = '127.0.0.1'`, tc.code, ae.Error.RequestID); n != 1 {
					t.Errorf("upload.rejected events of this request (with its source address) = %d, want 1", n)
				}
			}
		})
	}
}

// A chunked body (no Content-Length) over the server's limit is refused as an upload too:
// 413 upload_too_large, audited as upload.rejected.
// Verifies: REQ-DEV-025
func TestHTTPChunkedUploadTooLarge(t *testing.T) {
	t.Parallel()
	h := newDevHTTP(t, nil)
	pr, pw := io.Pipe()
	go func() {
		chunk := make([]byte, 64<<10)
		for i := 0; i < 40; i++ { // 2.5 MiB
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	req, _ := http.NewRequest(http.MethodPost, h.ts.URL+"/api/v1/uploads", pr)
	req.Header.Set("Content-Type", "application/cbor")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ae apiErr
	_ = json.NewDecoder(resp.Body).Decode(&ae)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || ae.Error.Code != "upload_too_large" {
		t.Errorf("POST /uploads (chunked, 2.5 MiB) = %d %s, want 413 upload_too_large", resp.StatusCode, ae.Error.Code)
	}
	if n := h.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'upload.rejected' AND reason = 'upload_too_large' AND request_id = $1`, ae.Error.RequestID); n != 1 {
		t.Errorf("upload.rejected events of the chunked upload = %d, want 1", n)
	}
}

// Verifies: REQ-DEV-001, REQ-DEV-002, REQ-DEV-003, REQ-DEV-004, REQ-DEV-005, REQ-DEV-006
func TestHTTPDeviceLifecycle(t *testing.T) {
	t.Parallel()
	h := newDevHTTP(t, nil)
	do := func(method, path string, body any, want int) map[string]any {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, h.ts.URL+path, rd)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		if resp.StatusCode != want {
			t.Fatalf("%s %s = %d %v, want %d", method, path, resp.StatusCode, out, want)
		}
		return out
	}
	dev := do("POST", "/api/v1/devices", map[string]string{"serial": "SN-1", "model": "VM-100", "firmware": "2.0"}, 201)
	id := dev["id"].(string)
	do("POST", "/api/v1/devices", map[string]string{"serial": "SN-1", "model": "VM-100", "firmware": "2.0"}, 409)
	tok := do("POST", "/api/v1/devices/"+id+"/enrollment-tokens", nil, 201)["token"].(string)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	enr, _ := envelope.SignEnroll(tok, priv, h.Clock.Now())
	resp, b := h.post(t, "/api/v1/devices/enroll", "application/cbor", enr)
	if resp.StatusCode != 201 {
		t.Fatalf("POST /devices/enroll = %d %s, want 201", resp.StatusCode, b)
	}
	resp, b = h.post(t, "/api/v1/devices/enroll", "application/cbor", enr)
	if resp.StatusCode != 401 || !strings.Contains(string(b), "invalid_enrollment_token") {
		t.Errorf("POST /devices/enroll (token reused) = %d %s, want 401 invalid_enrollment_token", resp.StatusCode, b)
	}
	do("PUT", "/api/v1/devices/"+id+"/patient", map[string]any{"patient_id": h.Patient}, 200)
	d := &devicestest.Device{ID: uuid.MustParse(id), Key: priv, KV: 1}
	if resp, b := h.post(t, "/api/v1/uploads", "application/cbor", d.Upload(t, h.Clock.Now(), 3)); resp.StatusCode != 201 {
		t.Fatalf("upload = %d %s", resp.StatusCode, b)
	}
	_, priv2, _ := ed25519.GenerateKey(rand.Reader)
	rot, _ := envelope.SignRotate(id, 1, priv, priv2, h.Clock.Now())
	if resp, b := h.post(t, "/api/v1/devices/rotate", "application/cbor", rot); resp.StatusCode != 201 {
		t.Fatalf("rotate = %d %s", resp.StatusCode, b)
	}
	if resp, _ := h.post(t, "/api/v1/uploads", "application/cbor", d.Upload(t, h.Clock.Now(), 3)); resp.StatusCode != 401 {
		t.Errorf("upload with the rotated-out key = %d, want 401", resp.StatusCode)
	}
	d.Key, d.KV = priv2, 2
	if resp, b := h.post(t, "/api/v1/uploads", "application/cbor", d.Upload(t, h.Clock.Now(), 3)); resp.StatusCode != 201 {
		t.Fatalf("upload with the new key = %d %s", resp.StatusCode, b)
	}
	do("POST", "/api/v1/devices/"+id+"/suspend", map[string]string{"reason": "lost"}, 200)
	if resp, _ := h.post(t, "/api/v1/uploads", "application/cbor", d.Upload(t, h.Clock.Now(), 3)); resp.StatusCode != 403 {
		t.Errorf("upload while suspended = %d, want 403", resp.StatusCode)
	}
	do("POST", "/api/v1/devices/"+id+"/reactivate", nil, 200)
	keys := do("GET", "/api/v1/devices/"+id+"/keys", nil, 200)["keys"].([]any)
	if len(keys) != 2 {
		t.Errorf("keys = %d, want 2", len(keys))
	}
	as := do("GET", "/api/v1/devices/"+id+"/assignments", nil, 200)["assignments"].([]any)
	if len(as) != 1 {
		t.Errorf("assignments = %d, want 1", len(as))
	}
	got := do("GET", "/api/v1/devices/"+id, nil, 200)
	if got["status"] != "active" || got["key_version"].(float64) != 2 {
		t.Errorf("GET device = %v, want active with key version 2", got)
	}
	do("GET", "/api/v1/devices/"+uuid.NewString(), nil, 404)
	do("GET", "/api/v1/devices/not-a-uuid", nil, 400)
	do("POST", "/api/v1/devices/"+id+"/decommission", nil, 200)
	do("POST", "/api/v1/devices/"+id+"/reactivate", nil, 409)
	list := do("GET", "/api/v1/devices?status=decommissioned", nil, 200)["devices"].([]any)
	if len(list) != 1 {
		t.Errorf("decommissioned devices = %d, want 1", len(list))
	}
	rk := do("GET", "/api/v1/uploads/receipt-key", nil, 200)
	if rk["key_id"] != h.Signer.KeyID() {
		t.Errorf("receipt key = %v, want %s", rk, h.Signer.KeyID())
	}
}

// An accepted upload is recorded once, by its domain event (upload.accepted, committed with
// the samples), not a second time by the state-change middleware; an exact re-send changes
// nothing and is recorded by the middleware.
// Verifies: REQ-AUD-010, REQ-DEV-020
func TestHTTPUploadAuditedOnce(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	clk := devicestest.NewClock(time.Now().UTC())
	e := devicestest.NewOn(t, pool, url, clk, nil)
	svc := chaintest.Start(t, pool, url, e.Rec)
	srv, err := server.New(server.Config{Pool: pool, Recorder: e.Rec, Devices: e.Devices, Audit: svc, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	raw := e.NewDevice(t).Upload(t, clk.Now(), 10)
	count := func(requestID, action string) int {
		var n int
		if err := pool.QueryRow(context.Background(),
			"SELECT count(*) FROM audit_events WHERE request_id = $1 AND action = $2", requestID, action).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for i, want := range []struct {
		status            int
		accepted, generic int
	}{{http.StatusCreated, 1, 0}, {http.StatusOK, 0, 1}} {
		resp, err := http.Post(ts.URL+"/api/v1/uploads", "application/cbor", bytes.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		rid := resp.Header.Get(echo.HeaderXRequestID)
		if resp.StatusCode != want.status {
			t.Fatalf("upload %d = %d, want %d", i, resp.StatusCode, want.status)
		}
		if got := count(rid, "upload.accepted"); got != want.accepted {
			t.Errorf("upload %d: upload.accepted events = %d, want %d", i, got, want.accepted)
		}
		if got := count(rid, "http.request.completed"); got != want.generic {
			t.Errorf("upload %d: http.request.completed events = %d, want %d", i, got, want.generic)
		}
	}
}

// coreRefused signs, for a new device of h, an upload of one sample (taken at the clock's
// time plus ahead) that the clinical core refuses.
func coreRefused(t *testing.T, h *devHTTP, smp envelope.Sample, ahead time.Duration) []byte {
	t.Helper()
	d := h.NewDevice(t)
	now := h.Clock.Now()
	smp.T = now.Add(ahead).UnixMilli()
	d.Seq++
	return d.Sign(t, &envelope.Upload{Device: d.ID.String(), KeyVersion: d.KV, Seq: d.Seq, SentAt: now.UnixMilli(), Samples: []envelope.Sample{smp}})
}

// The device contract over HTTP (issue #14 items 8, 9, 13): an exact re-send of an accepted
// upload gets 200 with the original receipt after a key rotation and while suspended; a
// re-sent rotation gets 200 with the same key version, replayed; an enrollment whose time is
// outside the skew window is 422 clock_skew, audited with its request id, and the token is
// not consumed.
// Verifies: REQ-DEV-130, REQ-DEV-131, REQ-DEV-133
func TestHTTPDeviceContractRetries(t *testing.T) {
	t.Parallel()
	h := newDevHTTP(t, nil)
	d := h.RegisterDevice(t)
	tok, _, err := h.Devices.IssueEnrollmentToken(h.Ctx, devicestest.Admin, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := envelope.SignEnroll(tok, d.Key, h.Clock.Now().Add(-24*time.Hour))
	resp, b := h.post(t, "/api/v1/devices/enroll", "application/cbor", old)
	var ae apiErr
	_ = json.Unmarshal(b, &ae)
	if resp.StatusCode != http.StatusUnprocessableEntity || ae.Error.Code != "clock_skew" {
		t.Fatalf("POST /devices/enroll (signed 24 h ago) = %d %s, want 422 clock_skew", resp.StatusCode, b)
	}
	if n := h.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'device.enroll.rejected' AND reason = 'clock_skew' AND request_id = $1`, ae.Error.RequestID); n != 1 {
		t.Errorf("device.enroll.rejected events of the request = %d, want 1", n)
	}
	enr, _ := envelope.SignEnroll(tok, d.Key, h.Clock.Now())
	if resp, b := h.post(t, "/api/v1/devices/enroll", "application/cbor", enr); resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /devices/enroll (in time, same token) = %d %s, want 201", resp.StatusCode, b)
	}
	d.KV = 1
	if _, err := h.Devices.AssignPatient(h.Ctx, devicestest.Admin, d.ID, &h.Patient); err != nil {
		t.Fatal(err)
	}
	up := d.Upload(t, h.Clock.Now(), 3)
	resp, b = h.post(t, "/api/v1/uploads", "application/cbor", up)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload = %d %s", resp.StatusCode, b)
	}
	var orig receiptAnswer
	_ = json.Unmarshal(b, &orig)

	_, k2, _ := ed25519.GenerateKey(rand.Reader)
	rot, _ := envelope.SignRotate(d.ID.String(), 1, d.Key, k2, h.Clock.Now())
	if resp, b := h.post(t, "/api/v1/devices/rotate", "application/cbor", rot); resp.StatusCode != http.StatusCreated {
		t.Fatalf("rotate = %d %s", resp.StatusCode, b)
	}
	h.Clock.Add(time.Hour) // a late re-send, past the skew window
	resp, b = h.post(t, "/api/v1/devices/rotate", "application/cbor", rot)
	var again struct {
		KeyVersion int  `json:"key_version"`
		Replayed   bool `json:"replayed"`
	}
	_ = json.Unmarshal(b, &again)
	if resp.StatusCode != http.StatusOK || again.KeyVersion != 2 || !again.Replayed {
		t.Errorf("rotate (re-sent) = %d %s, want 200 key version 2 replayed", resp.StatusCode, b)
	}
	for _, state := range []string{"after rotation", "suspended"} {
		if state == "suspended" {
			if _, err := h.Devices.SetStatus(h.Ctx, devicestest.Admin, d.ID, devices.StatusSuspended, ""); err != nil {
				t.Fatal(err)
			}
		}
		resp, b := h.post(t, "/api/v1/uploads", "application/cbor", up)
		var rj receiptAnswer
		_ = json.Unmarshal(b, &rj)
		if resp.StatusCode != http.StatusOK || !rj.Replayed || rj.AuditEvent != orig.AuditEvent || rj.UploadHash != orig.UploadHash {
			t.Errorf("upload re-sent (%s) = %d %s, want 200 with the original receipt", state, resp.StatusCode, b)
		}
	}
	if n := h.Count(t, `SELECT count(*) FROM devices_uploads WHERE device_id = $1`, d.ID); n != 1 {
		t.Errorf("uploads stored = %d, want 1", n)
	}
}

type receiptAnswer struct {
	UploadHash string `json:"upload_hash"`
	AuditEvent string `json:"audit_event"`
	Replayed   bool   `json:"replayed"`
}
