package sdk

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/vigilhealth/vigil/devices/envelope"
)

// Rotator carries a key rotation request to Vigil.
type Rotator interface {
	// Rotate sends raw (an envelope.SignRotate request) and returns the device id and the
	// new key's version. A refusal MUST be a *RejectedError.
	Rotate(ctx context.Context, raw []byte) (deviceID string, keyVersion uint64, err error)
}

// RotatePath is the HTTP path of key rotation.
const RotatePath = "/api/v1/devices/rotate"

// Rotate implements Rotator over HTTP: POST <BaseURL>/api/v1/devices/rotate.
func (t *HTTPTransport) Rotate(ctx context.Context, raw []byte) (string, uint64, error) {
	b, err := postCBOR(ctx, t.client(), strings.TrimRight(t.BaseURL, "/")+RotatePath, raw)
	if err != nil {
		return "", 0, err
	}
	var ans struct {
		DeviceID   string `json:"device_id"`
		KeyVersion uint64 `json:"key_version"`
	}
	if err := json.Unmarshal(b, &ans); err != nil {
		return "", 0, fmt.Errorf("rotation answer: %w", err)
	}
	return ans.DeviceID, ans.KeyVersion, nil
}

// RotateKey replaces the device's key: it makes a new Ed25519 key pair, has Vigil register
// it with a request signed by both the current key and the new one, and from then on signs
// with the new key (the old one is refused by Vigil at once). It waits for any delivery in
// progress. save is called with the new identity as soon as Vigil has accepted it, before
// the client uses it: persist it there (SaveIdentity), since the old key no longer works.
// Uploads signed with the old key and not yet acknowledged are signed again with the new
// one when Vigil refuses them with unknown_key.
func (c *Client) RotateKey(ctx context.Context, r Rotator, rnd io.Reader, save func(Identity) error) (Identity, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	c.mu.Lock()
	cur := c.cfg.Identity
	c.mu.Unlock()
	_, priv, err := ed25519.GenerateKey(rnd)
	if err != nil {
		return Identity{}, fmt.Errorf("sdk: rotate: generate key: %w", err)
	}
	raw, err := envelope.SignRotate(cur.DeviceID, cur.KeyVersion, cur.PrivateKey, priv, c.cfg.Now())
	if err != nil {
		return Identity{}, fmt.Errorf("sdk: rotate: %w", err)
	}
	id, kv, err := r.Rotate(ctx, raw)
	if err != nil {
		return Identity{}, fmt.Errorf("sdk: rotate: %w", err)
	}
	if id != cur.DeviceID || kv <= cur.KeyVersion {
		return Identity{}, fmt.Errorf("sdk: rotate: Vigil answered device %q key version %d, want %q above %d", id, kv, cur.DeviceID, cur.KeyVersion)
	}
	next := Identity{DeviceID: id, KeyVersion: kv, PrivateKey: priv}
	if save != nil {
		if err := save(next); err != nil {
			return next, fmt.Errorf("sdk: rotate: Vigil registered the new key but saving it failed (keep the returned identity): %w", err)
		}
	}
	c.mu.Lock()
	c.cfg.Identity = next
	c.mu.Unlock()
	return next, nil
}
