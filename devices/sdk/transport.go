package sdk

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Transport carries one signed upload envelope to Vigil and brings back its signed receipt.
type Transport interface {
	// Upload sends raw (the envelope's wire bytes, unchanged) and returns the signed
	// receipt's wire bytes. A refusal by Vigil MUST be returned as a *RejectedError; any
	// other error means no answer was had (the upload may or may not have been stored) and
	// the client retries with the same bytes.
	Upload(ctx context.Context, raw []byte) ([]byte, error)
}

// RejectedError is Vigil refusing an upload or a request, with its stable code (see
// docs/api.md): e.g. "replay", "clock_skew", "invalid_signature", "rate_limited".
type RejectedError struct {
	Status     int           // HTTP status (0 over MQTT)
	Code       string        // stable error code
	Message    string        // Vigil's explanation
	RetryAfter time.Duration // when positive, the same upload may be sent again after it
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("vigil refused the upload: %s (%d): %s", e.Code, e.Status, e.Message)
}

// Temporary reports whether sending the same upload again later may succeed: rate limits,
// quotas, back-pressure and server errors.
func (e *RejectedError) Temporary() bool {
	switch e.Code {
	case "rate_limited", "quota_exceeded", "backpressure", "internal_error", "service_unavailable":
		return true
	}
	return e.Status == http.StatusTooManyRequests || e.Status >= 500
}

// HTTP paths of the device API, relative to the base URL.
const (
	UploadPath = "/api/v1/uploads"
	EnrollPath = "/api/v1/devices/enroll"
)

// maxAnswerBytes bounds what the SDK reads from a response.
const maxAnswerBytes = 64 << 10

// HTTPTransport sends uploads with POST <BaseURL>/api/v1/uploads (application/cbor).
type HTTPTransport struct {
	BaseURL string       // e.g. https://vigil.example.org
	Client  *http.Client // default: a client with a 15 s timeout
}

var defaultHTTPClient = &http.Client{Timeout: 15 * time.Second}

func (t *HTTPTransport) client() *http.Client {
	if t.Client != nil {
		return t.Client
	}
	return defaultHTTPClient
}

// Upload implements Transport.
func (t *HTTPTransport) Upload(ctx context.Context, raw []byte) ([]byte, error) {
	return postCBOR(ctx, t.client(), strings.TrimRight(t.BaseURL, "/")+UploadPath, raw)
}

// postCBOR posts body and returns the answer's body on 2xx, a *RejectedError on an error
// envelope, and a plain error when no answer was had.
func postCBOR(ctx context.Context, c *http.Client, url string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("post %s: %w", url, err)
	}
	req.Header.Set("Content-Type", "application/cbor")
	req.Header.Set("Accept", "application/cbor, application/json")
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("post %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes+1))
	if err != nil {
		return nil, fmt.Errorf("post %s: read answer: %w", url, err)
	}
	if len(b) > maxAnswerBytes {
		return nil, fmt.Errorf("post %s: answer larger than %d bytes", url, maxAnswerBytes)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return b, nil
	}
	return nil, ParseErrorAnswer(resp.StatusCode, resp.Header.Get("Retry-After"), b)
}

// ParseErrorAnswer turns an HTTP error answer (Vigil's JSON error envelope
// {"error":{"code":…,"message":…}}, or anything else a proxy may have sent) into a
// *RejectedError. It never fails: an unreadable body gets the code "http_<status>".
func ParseErrorAnswer(status int, retryAfter string, body []byte) *RejectedError {
	e := &RejectedError{Status: status, Code: "http_" + strconv.Itoa(status)}
	var env struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if len(body) <= maxAnswerBytes && json.Unmarshal(body, &env) == nil && env.Error.Code != "" {
		e.Code = clipText(env.Error.Code, 64)
		e.Message = clipText(env.Error.Message, 512)
	}
	if s, err := strconv.Atoi(strings.TrimSpace(retryAfter)); err == nil && s > 0 && s <= 24*3600 {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return e
}

func clipText(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// isRejected reports whether err carries a refusal by Vigil.
func isRejected(err error) (*RejectedError, bool) {
	var re *RejectedError
	ok := errors.As(err, &re)
	return re, ok
}

// ReceiptKeyPath is where Vigil publishes its receipt-signing public key.
const ReceiptKeyPath = "/api/v1/uploads/receipt-key"

// ReceiptKey fetches Vigil's receipt-signing public key (GET /api/v1/uploads/receipt-key).
// Trust on first use: a device should pin the key it got at provisioning time (or get it
// out of band) rather than fetch it before every verification.
func (t *HTTPTransport) ReceiptKey(ctx context.Context) (keyID string, pub crypto.PublicKey, err error) {
	url := strings.TrimRight(t.BaseURL, "/") + ReceiptKeyPath
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", nil, fmt.Errorf("get %s: %w", url, err)
	}
	resp, err := t.client().Do(req)
	if err != nil {
		return "", nil, fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if err != nil {
		return "", nil, fmt.Errorf("get %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", nil, ParseErrorAnswer(resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	var ans struct {
		KeyID string `json:"key_id"`
		DER   []byte `json:"public_key_der"`
	}
	if err := json.Unmarshal(b, &ans); err != nil {
		return "", nil, fmt.Errorf("receipt key answer: %w", err)
	}
	pub, err = x509.ParsePKIXPublicKey(ans.DER)
	if err != nil {
		return "", nil, fmt.Errorf("receipt key answer: %w", err)
	}
	return ans.KeyID, pub, nil
}
