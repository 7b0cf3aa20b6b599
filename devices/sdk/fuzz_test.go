package sdk

import (
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"net/http"
	"testing"

	"github.com/vigilhealth/vigil/devices/envelope"
)

// Receipts come from the network: whatever the bytes, VerifyReceipt either returns a
// receipt naming exactly the upload asked about, signed by the key, or ErrBadReceipt; it
// never panics.
// Verifies: REQ-DEV-112
func FuzzVerifyReceipt(f *testing.F) {
	seed := make([]byte, ed25519.SeedSize)
	priv := ed25519.NewKeyFromSeed(seed)
	hash := sha256.Sum256([]byte("upload"))
	const dev = "0192f5a0-7c1e-7b3a-9c44-1d2e3f405162"
	body, _ := envelope.Canonical(&envelope.Receipt{Type: envelope.TypeReceipt, Upload: hash[:], Device: dev, Seq: 7, ServerTime: 1, AuditEvent: "e"})
	wire, _ := (&envelope.SignedReceipt{Body: body, Sig: ed25519.Sign(priv, body), KeyID: "receipt-signing/1"}).Marshal()
	f.Add(wire)
	f.Add([]byte{0xa0})
	f.Add([]byte("not cbor"))
	pub := priv.Public()
	f.Fuzz(func(t *testing.T, b []byte) {
		rc, err := VerifyReceipt(b, pub, false, dev, 7, hash)
		if err != nil {
			if !errors.Is(err, ErrBadReceipt) {
				t.Fatalf("VerifyReceipt error %v does not wrap ErrBadReceipt", err)
			}
			return
		}
		if rc.Body.Seq != 7 || rc.Body.Device != dev || string(rc.Body.Upload) != string(hash[:]) {
			t.Fatalf("VerifyReceipt accepted a receipt for another upload: %+v", rc.Body)
		}
		if !ed25519.Verify(priv.Public().(ed25519.PublicKey), rc.Signed.Body, rc.Signed.Sig) {
			t.Fatalf("VerifyReceipt accepted a receipt whose signature does not verify")
		}
	})
}

// Error answers come from the network (or from a proxy in between): parsing never fails or
// panics, and codes and messages are bounded.
// Verifies: REQ-DEV-110
func FuzzParseErrorAnswer(f *testing.F) {
	f.Add(429, "3", []byte(`{"error":{"code":"rate_limited","message":"slow down","request_id":"x"}}`))
	f.Add(502, "", []byte(`<html>bad gateway</html>`))
	f.Add(409, "-1", []byte(`{"error":{"code":"replay"}}`))
	f.Fuzz(func(t *testing.T, status int, retry string, body []byte) {
		e := ParseErrorAnswer(status, retry, body)
		if e == nil || e.Code == "" || len(e.Code) > 64 || len(e.Message) > 512 || e.RetryAfter < 0 {
			t.Fatalf("ParseErrorAnswer(%d, %q, %q) = %+v", status, retry, body, e)
		}
	})
}

// Verifies: REQ-DEV-110
func TestTemporaryClassification(t *testing.T) {
	tests := []struct {
		e    RejectedError
		want bool
	}{
		{RejectedError{Status: 429, Code: "rate_limited"}, true},
		{RejectedError{Status: 503, Code: "backpressure"}, true},
		{RejectedError{Status: 500, Code: "internal_error"}, true},
		{RejectedError{Status: 502, Code: "http_502"}, true},
		{RejectedError{Code: "quota_exceeded"}, true},
		{RejectedError{Status: 409, Code: "replay"}, false},
		{RejectedError{Status: 401, Code: "invalid_signature"}, false},
		{RejectedError{Status: 422, Code: "clock_skew"}, false},
		{RejectedError{Status: http.StatusBadRequest, Code: "malformed_upload"}, false},
		{RejectedError{Code: "topic_mismatch"}, false},
	}
	for _, tt := range tests {
		if got := tt.e.Temporary(); got != tt.want {
			t.Errorf("(%d %s).Temporary() = %v, want %v", tt.e.Status, tt.e.Code, got, tt.want)
		}
	}
}
