package mqtt

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/vigilhealth/vigil/devices/envelope"
	"github.com/vigilhealth/vigil/devices/mqttwire"
	"github.com/vigilhealth/vigil/devices/sdk"
)

// DefaultPrefix is the topic prefix when DeviceConfig.Prefix is empty.
const DefaultPrefix = mqttwire.DefaultPrefix

// DeviceConfig configures the device side of the MQTT transport.
type DeviceConfig struct {
	Broker   string      // broker URL, e.g. mqtt://127.0.0.1:1883. Required.
	DeviceID string      // the device's registry id (its topics). Required.
	Prefix   string      // topic prefix. Default DefaultPrefix.
	ClientID string      // default "dev-" + DeviceID + random suffix
	TLS      *tls.Config // for tls:// and wss:// brokers; default the system's roots
	Username string
	Password []byte
}

// Device is the device side of the MQTT transport: it publishes signed uploads on the
// device's up topic and waits for Vigil's reply on its receipts topic. It implements
// sdk.Transport, so an sdk.Client can deliver over MQTT instead of HTTP.
type Device struct {
	cfg   DeviceConfig
	cm    *autopaho.ConnectionManager
	ready chan struct{}
	once  sync.Once

	mu        sync.Mutex
	subs      sync.WaitGroup
	waiters   map[[32]byte]chan *mqttwire.Reply
	anonymous []chan *mqttwire.Reply // waiting for a reply that names no upload (undecodable envelope)
	cancel    context.CancelFunc
}

// DialDevice connects (retrying in the background) and subscribes to the device's receipts
// topic; it returns once subscribed or when ctx ends.
func DialDevice(ctx context.Context, cfg DeviceConfig) (*Device, error) {
	if cfg.Broker == "" || cfg.DeviceID == "" {
		return nil, errors.New("mqtt device: Broker and DeviceID are required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.ClientID == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		cfg.ClientID = "dev-" + cfg.DeviceID + "-" + hex.EncodeToString(b[:])
	}
	u, err := url.Parse(cfg.Broker)
	if err != nil {
		return nil, fmt.Errorf("mqtt device: broker URL: %w", err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	d := &Device{cfg: cfg, ready: make(chan struct{}), waiters: map[[32]byte]chan *mqttwire.Reply{}, cancel: cancel}
	topic := mqttwire.ReceiptTopic(cfg.Prefix, cfg.DeviceID)
	cm, err := autopaho.NewConnection(rctx, autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{u},
		TlsCfg:                        cfg.TLS,
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		ConnectTimeout:                10 * time.Second,
		ReconnectBackoff:              func(int) time.Duration { return 500 * time.Millisecond },
		ConnectUsername:               cfg.Username,
		ConnectPassword:               cfg.Password,
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			d.subs.Add(1)
			go func() {
				defer d.subs.Done()
				if _, err := cm.Subscribe(rctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: 1}}}); err == nil {
					d.once.Do(func() { close(d.ready) })
				}
			}()
		},
		ClientConfig: paho.ClientConfig{
			ClientID: cfg.ClientID,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				d.deliver(pr.Packet.Payload)
				return true, nil
			}},
		},
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("mqtt device: %w", err)
	}
	d.cm = cm
	select {
	case <-d.ready:
		return d, nil
	case <-ctx.Done():
		_ = d.Close(context.Background())
		return nil, fmt.Errorf("mqtt device: subscribe to %s: %w", topic, ctx.Err())
	}
}

func (d *Device) deliver(b []byte) {
	r, err := mqttwire.ParseReply(b)
	if err != nil {
		return // not for us to judge: a reply we cannot read is as good as none (retry)
	}
	var ch chan *mqttwire.Reply
	d.mu.Lock()
	if h, ok := r.UploadHash(); ok {
		ch = d.waiters[h]
		delete(d.waiters, h)
	} else if len(d.anonymous) > 0 {
		ch, d.anonymous = d.anonymous[0], d.anonymous[1:]
	}
	d.mu.Unlock()
	if ch != nil {
		ch <- r
	}
}

// HashOf returns the upload hash of an envelope (zero when raw is not one).
func HashOf(raw []byte) [32]byte {
	env, err := envelope.ParseEnvelope(raw, envelope.Limits{})
	if err != nil {
		return [32]byte{}
	}
	return envelope.Hash(env.Body)
}

// Expect returns a channel that receives the reply naming upload hash h (for uploads
// published by another client, such as mosquitto_pub).
func (d *Device) Expect(h [32]byte) <-chan *mqttwire.Reply {
	ch := make(chan *mqttwire.Reply, 1)
	d.mu.Lock()
	d.waiters[h] = ch
	d.mu.Unlock()
	return ch
}

// SendRaw publishes bytes that need not be a decodable envelope and waits for the next
// reply that names no upload (Vigil's answer to an undecodable message). One at a time.
func (d *Device) SendRaw(ctx context.Context, raw []byte) (*mqttwire.Reply, error) {
	ch := make(chan *mqttwire.Reply, 1)
	d.mu.Lock()
	d.anonymous = append(d.anonymous, ch)
	d.mu.Unlock()
	if err := d.Publish(ctx, raw); err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("mqtt device: waiting for the reply: %w", ctx.Err())
	}
}

// Publish sends raw bytes on the device's up topic (QoS 1) without waiting for a reply.
func (d *Device) Publish(ctx context.Context, raw []byte) error {
	_, err := d.cm.Publish(ctx, &paho.Publish{QoS: 1, Topic: mqttwire.UpTopic(d.cfg.Prefix, d.cfg.DeviceID), Payload: raw})
	if err != nil {
		return fmt.Errorf("mqtt device: publish: %w", err)
	}
	return nil
}

// Send publishes a signed upload envelope and waits for Vigil's reply to it (matched by
// upload hash) until ctx ends.
func (d *Device) Send(ctx context.Context, raw []byte) (*mqttwire.Reply, error) {
	env, err := envelope.ParseEnvelope(raw, envelope.Limits{})
	if err != nil {
		return nil, fmt.Errorf("mqtt device: %w", err)
	}
	h := envelope.Hash(env.Body)
	ch := make(chan *mqttwire.Reply, 1)
	d.mu.Lock()
	d.waiters[h] = ch
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		if d.waiters[h] == ch {
			delete(d.waiters, h)
		}
		d.mu.Unlock()
	}()
	if err := d.Publish(ctx, raw); err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("mqtt device: waiting for the reply: %w", ctx.Err())
	}
}

// Upload implements sdk.Transport: the receipt of an accepted upload, a *sdk.RejectedError
// for a refusal.
func (d *Device) Upload(ctx context.Context, raw []byte) ([]byte, error) {
	r, err := d.Send(ctx, raw)
	if err != nil {
		return nil, err
	}
	if r.Status == mqttwire.StatusAccepted {
		return r.Receipt, nil
	}
	return nil, &sdk.RejectedError{Code: r.Error.Code, Message: r.Error.Message,
		RetryAfter: time.Duration(r.Error.RetryAfterSeconds) * time.Second}
}

// Close disconnects; no goroutine of the Device runs after it returns.
func (d *Device) Close(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := d.cm.Disconnect(dctx)
	d.cancel()
	select {
	case <-d.cm.Done():
		d.subs.Wait()
	case <-dctx.Done():
	}
	if errors.Is(err, autopaho.ConnectionDownError) {
		err = nil
	}
	return err
}
