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

// ErrRotationPending: an upload was refused with unknown_key while a key rotation of this
// client awaits its answer (sent, answer lost, or the process stopped in between). The
// upload stays buffered; call RotateKey again to complete the rotation, then Flush.
var ErrRotationPending = errors.New("sdk: a key rotation awaits its answer: call RotateKey again")

// RotateKey replaces the device's key: it makes a new Ed25519 key pair, has Vigil register
// it with a request signed by both the current key and the new one, and from then on signs
// with the new key (the old one is refused by Vigil at once). It waits for any delivery in
// progress. save is called with the new identity as soon as Vigil has accepted it, before
// the client uses it: persist it there (SaveIdentity), since the old key no longer works.
// Uploads signed with the old key and not yet acknowledged are signed again with the new
// one when Vigil refuses them with unknown_key (after Vigil was asked whether it already
// stored them: an exact re-send of a stored upload gets its receipt whatever the key).
//
// Recovery: the new key and the request are stored (Dir/rotation.cbor, or in memory)
// before the request leaves the device. When no answer comes (network, crash, or save
// failing), the rotation stays pending and the next RotateKey sends the same request
// again — Vigil answers a rotation it already applied with the same key version — instead
// of making a new key; so a lost answer never leaves Vigil holding a key the device lost.
// A pending request refused for clock_skew (never applied) is signed again with the same
// new key; one refused for good is dropped.
func (c *Client) RotateKey(ctx context.Context, r Rotator, rnd io.Reader, save func(Identity) error) (Identity, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	c.mu.Lock()
	cur := c.cfg.Identity
	p, err := c.store.getRotation()
	c.mu.Unlock()
	if err != nil {
		return Identity{}, fmt.Errorf("sdk: rotate: %w", err)
	}
	if p != nil && (p.Device != cur.DeviceID || p.FromVersion != cur.KeyVersion) {
		// A rotation from another key version: completed (the identity is already the new
		// one) or superseded. Either way it is not the one to send now.
		if err := c.dropRotation(); err != nil {
			return Identity{}, err
		}
		p = nil
	}
	if p == nil {
		_, priv, err := ed25519.GenerateKey(rnd)
		if err != nil {
			return Identity{}, fmt.Errorf("sdk: rotate: generate key: %w", err)
		}
		p = &pendingRotation{Device: cur.DeviceID, FromVersion: cur.KeyVersion, Seed: priv.Seed()}
		if err := c.signRotation(p, cur); err != nil {
			return Identity{}, err
		}
	}
	priv := ed25519.NewKeyFromSeed(p.Seed)
	resigned := false
	for {
		id, kv, err := r.Rotate(ctx, p.Request)
		if err != nil {
			re, rejected := isRejected(err)
			switch {
			case rejected && re.Code == "clock_skew" && !resigned:
				// Not applied (Vigil checks for a re-send first): sign again now, same key.
				resigned = true
				if err := c.signRotation(p, cur); err != nil {
					return Identity{}, err
				}
				continue
			case rejected && !re.Temporary():
				// Refused for good: the new key is not registered; forget it.
				if derr := c.dropRotation(); derr != nil {
					return Identity{}, errors.Join(fmt.Errorf("sdk: rotate: %w", err), derr)
				}
			}
			return Identity{}, fmt.Errorf("sdk: rotate: %w", err)
		}
		if id != cur.DeviceID || kv != cur.KeyVersion+1 {
			return Identity{}, fmt.Errorf("sdk: rotate: Vigil answered device %q key version %d, want %q version %d", id, kv, cur.DeviceID, cur.KeyVersion+1)
		}
		next := Identity{DeviceID: id, KeyVersion: kv, PrivateKey: priv}
		if save != nil {
			if err := save(next); err != nil {
				// The rotation stays pending: calling RotateKey again gets the same answer and
				// saves again.
				return next, fmt.Errorf("sdk: rotate: Vigil registered the new key but saving it failed (keep the returned identity, or call RotateKey again): %w", err)
			}
		}
		c.mu.Lock()
		c.cfg.Identity = next
		c.mu.Unlock()
		if err := c.dropRotation(); err != nil {
			return next, err
		}
		return next, nil
	}
}

// signRotation signs p's request (current key and p's new key, time now) and stores p before
// it is sent.
func (c *Client) signRotation(p *pendingRotation, cur Identity) error {
	raw, err := envelope.SignRotate(cur.DeviceID, cur.KeyVersion, cur.PrivateKey, ed25519.NewKeyFromSeed(p.Seed), c.cfg.Now())
	if err != nil {
		return fmt.Errorf("sdk: rotate: %w", err)
	}
	p.Request = raw
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.store.putRotation(p); err != nil {
		return fmt.Errorf("sdk: rotate: %w", err)
	}
	return nil
}

func (c *Client) dropRotation() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.store.dropRotation(); err != nil {
		return fmt.Errorf("sdk: rotate: %w", err)
	}
	return nil
}

// rotationPending reports whether a key rotation of this client awaits its answer.
func (c *Client) rotationPending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, err := c.store.getRotation()
	return err != nil || p != nil
}
