package sdk

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/vigilhealth/vigil/devices/envelope"
)

// Enroller carries an enrollment request to Vigil.
type Enroller interface {
	// Enroll sends raw (an envelope.SignEnroll request) and returns the id Vigil registered
	// the key for and the key's version. A refusal MUST be a *RejectedError.
	Enroll(ctx context.Context, raw []byte) (deviceID string, keyVersion uint64, err error)
}

// EnrollOptions tunes Enroll. Zero values take the defaults.
type EnrollOptions struct {
	Rand io.Reader        // key generation randomness; default crypto/rand
	Now  func() time.Time // default time.Now
	// Attempts is how many times the same signed request is sent when the answer does not
	// arrive (a network error, or a temporary refusal such as 503): default 5. Vigil answers
	// the re-send of an enrollment it applied with the original answer, so a lost answer
	// never costs the token.
	Attempts int
	// Sleep waits between attempts (1 s, doubling, at most 30 s, and at least a refusal's
	// Retry-After); default a timer. Tests may make it instant.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Enroll generates the device's Ed25519 key pair, proves possession of it to Vigil together
// with the one-time enrollment token an administrator issued, and returns the identity to
// sign uploads with. The private key never leaves the device. When the answer is lost, the
// same signed request (same key, same time) is sent again, up to o.Attempts times.
func Enroll(ctx context.Context, e Enroller, token string, o EnrollOptions) (Identity, error) {
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return Identity{}, errors.New("sdk: enroll: empty token")
	}
	_, priv, err := ed25519.GenerateKey(o.Rand)
	if err != nil {
		return Identity{}, fmt.Errorf("sdk: enroll: generate key: %w", err)
	}
	raw, err := envelope.SignEnroll(token, priv, o.Now())
	if err != nil {
		return Identity{}, fmt.Errorf("sdk: enroll: %w", err)
	}
	if o.Attempts <= 0 {
		o.Attempts = 5
	}
	if o.Sleep == nil {
		o.Sleep = sleepCtx
	}
	var (
		id string
		kv uint64
	)
	wait := time.Second
	for attempt := 1; ; attempt++ {
		id, kv, err = e.Enroll(ctx, raw)
		if err == nil {
			break
		}
		var rej *RejectedError
		if (errors.As(err, &rej) && !rej.Temporary()) || attempt >= o.Attempts || ctx.Err() != nil {
			return Identity{}, fmt.Errorf("sdk: enroll: %w", err)
		}
		d := wait
		if rej != nil && rej.RetryAfter > d {
			d = rej.RetryAfter
		}
		if serr := o.Sleep(ctx, d); serr != nil {
			return Identity{}, fmt.Errorf("sdk: enroll: %w", err)
		}
		wait = min(2*wait, 30*time.Second)
	}
	ident := Identity{DeviceID: id, KeyVersion: kv, PrivateKey: priv}
	if err := ident.Validate(); err != nil {
		return Identity{}, fmt.Errorf("sdk: enroll: Vigil's answer: %w", err)
	}
	return ident, nil
}

// Enroll implements Enroller over HTTP: POST <BaseURL>/api/v1/devices/enroll
// (application/cbor), answered with {"device_id": …, "key_version": …}.
func (t *HTTPTransport) Enroll(ctx context.Context, raw []byte) (string, uint64, error) {
	b, err := postCBOR(ctx, t.client(), strings.TrimRight(t.BaseURL, "/")+EnrollPath, raw)
	if err != nil {
		return "", 0, err
	}
	var ans struct {
		DeviceID   string `json:"device_id"`
		KeyVersion uint64 `json:"key_version"`
	}
	if err := json.Unmarshal(b, &ans); err != nil {
		return "", 0, fmt.Errorf("enrollment answer: %w", err)
	}
	return ans.DeviceID, ans.KeyVersion, nil
}
