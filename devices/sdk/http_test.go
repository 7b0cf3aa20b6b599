package sdk_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/envelope"
	"github.com/vigilhealth/vigil/devices/sdk"
	"github.com/vigilhealth/vigil/devices/sim"
	"github.com/vigilhealth/vigil/devices/sim/simtest"
	"github.com/vigilhealth/vigil/server"
)

// The SDK over real HTTP against the real server: fetch the receipt key, enroll with a
// token, send uploads with verified receipts; a refusal arrives as a RejectedError with the
// server's status and stable code.
// Verifies: REQ-DEV-110, REQ-DEV-112, REQ-DEV-113
func TestSDKOverHTTP(t *testing.T) {
	t.Parallel()
	st := simtest.New(t, nil)
	srv, err := server.New(server.Config{Pool: st.Pool, Recorder: st.Rec, Devices: st.Devices})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	ctx := context.Background()
	tr := &sdk.HTTPTransport{BaseURL: ts.URL}
	_, key, err := tr.ReceiptKey(ctx)
	if err != nil {
		t.Fatalf("ReceiptKey = %v", err)
	}
	tok, err := st.Prov.Provision(ctx, sim.NewPatient(1, 1, sim.Stable))
	if err != nil {
		t.Fatal(err)
	}
	id, err := sdk.Enroll(ctx, tr, tok, sdk.EnrollOptions{})
	if err != nil {
		t.Fatalf("Enroll over HTTP = %v", err)
	}
	c, err := sdk.New(sdk.Config{Identity: id, Transport: tr, ReceiptKey: key, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		rcs, err := c.Send(ctx, vitals(time.Now(), 60+float64(i)))
		if err != nil || len(rcs) != 1 {
			t.Fatalf("Send %d = %d receipts, %v, want 1", i, len(rcs), err)
		}
	}
	if n := uploadsOf(t, st, id.DeviceID); n != 3 {
		t.Errorf("stored uploads = %d, want 3", n)
	}
	// A replayed sequence number straight through the transport: 409 replay.
	u := envelope.Upload{Device: id.DeviceID, KeyVersion: id.KeyVersion, Seq: 1, SentAt: time.Now().UnixMilli(), Samples: vitals(time.Now(), 61)}
	raw, _, _ := envelope.Sign(&u, id.PrivateKey)
	_, err = tr.Upload(ctx, raw)
	var re *sdk.RejectedError
	if !errors.As(err, &re) || re.Status != http.StatusConflict || re.Code != devices.CodeReplay || re.Temporary() {
		t.Errorf("Upload(replayed seq) = %v, want 409 %s, not temporary", err, devices.CodeReplay)
	}
	// A second enrollment with the used token: 401 invalid_enrollment_token.
	if _, err := sdk.Enroll(ctx, tr, tok, sdk.EnrollOptions{}); !errors.As(err, &re) || re.Code != devices.CodeInvalidToken {
		t.Errorf("Enroll(used token) = %v, want %s", err, devices.CodeInvalidToken)
	}
}

// counting counts delivery attempts over the real HTTP transport.
type counting struct {
	*sdk.HTTPTransport
	attempts, limited int
}

func (c *counting) Upload(ctx context.Context, raw []byte) ([]byte, error) {
	c.attempts++
	b, err := c.HTTPTransport.Upload(ctx, raw)
	var re *sdk.RejectedError
	if errors.As(err, &re) && re.Status == http.StatusTooManyRequests {
		c.limited++
		if re.RetryAfter <= 0 {
			return nil, errors.New("429 without Retry-After")
		}
	}
	return b, err
}

// Rate limited by the server (429 with Retry-After), the SDK waits as asked and delivers
// everything, in order, without a refusal.
// Verifies: REQ-DEV-110
func TestSDKHonoursRateLimit(t *testing.T) {
	t.Parallel()
	st := simtest.New(t, func(c *devices.Config) { c.RatePerSecond, c.RateBurst = 2, 1 })
	srv, err := server.New(server.Config{Pool: st.Pool, Recorder: st.Rec, Devices: st.Devices})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	id := st.Device(t)
	tr := &counting{HTTPTransport: &sdk.HTTPTransport{BaseURL: ts.URL}}
	c, err := sdk.New(sdk.Config{Identity: id, Transport: tr, ReceiptKey: st.ReceiptKey, MaxBackoff: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := c.Enqueue(vitals(time.Now(), 60+float64(i))); err != nil {
			t.Fatal(err)
		}
	}
	rcs, err := c.Flush(context.Background())
	if err != nil || len(rcs) != 3 {
		t.Fatalf("Flush = %d receipts, %v, want 3", len(rcs), err)
	}
	if tr.limited == 0 || tr.attempts != 3+tr.limited {
		t.Errorf("attempts = %d with %d rate-limited, want some rate-limited and each retried", tr.attempts, tr.limited)
	}
}
