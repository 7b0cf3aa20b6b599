package mqtt

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/envelope"
)

// Accepter verifies and stores one signed upload; *devices.Service satisfies it.
type Accepter interface {
	// Accept MUST verify raw (signature, replay, skew, limits) and store it with its audit
	// event, or refuse it with a *devices.RejectError having stored nothing and audited the
	// rejection. An exact re-send of an accepted upload MUST return the original receipt.
	Accept(ctx context.Context, raw []byte, meta devices.Meta) (*devices.Receipt, error)
}

// Config configures the Ingestor. Zero values take the documented defaults.
type Config struct {
	// Broker is the broker's URL: mqtt://host:1883, tls://host:8883 (or ws://, wss://). Required.
	Broker string
	// TLS configures tls:// (mqtts://, ssl://) and wss:// connections: the CA to trust, a
	// client certificate. Default: the system's roots, no client certificate.
	TLS *tls.Config
	// Username and Password authenticate Vigil to the broker, when it asks for it.
	Username string
	Password []byte
	// ClientID is Vigil's MQTT client id. Give each instance a stable one so the broker keeps
	// its session (and the uploads queued for it) across restarts. Default "vigil-" + random,
	// and then no persistent session (see SessionExpiry).
	ClientID string
	// Prefix is the topic prefix. Default DefaultPrefix ("vigil/devices").
	Prefix string
	// ShareGroup is the shared-subscription group ($share/<group>/<prefix>/+/up), so that
	// several instances split the uploads. Default "vigil". Set NoShare to subscribe plainly.
	ShareGroup string
	NoShare    bool
	// SessionExpiry is how long the broker keeps Vigil's session (subscription and queued
	// QoS 1 uploads) while Vigil is disconnected. Default 1 h with a configured ClientID; with
	// a random one 0 (the session ends with the connection): nobody could ever resume it, and
	// an orphaned member of the share group would keep receiving its share of the uploads.
	SessionExpiry time.Duration
	// KeepAlive is the MQTT keep-alive. Default 30 s.
	KeepAlive time.Duration
	// ReconnectBackoff is the longest wait between connection attempts (they back off
	// exponentially from 250 ms up to it). Default 10 s.
	ReconnectBackoff time.Duration
	// Workers is how many uploads are processed at once (uploads of one device always go to
	// the same worker, in order; more workers than busy devices keeps them from sharing one). Default 256.
	Workers int
	// ReceiveMaximum is the most unacknowledged uploads the broker may send at once
	// (MQTT 5 flow control). Default 1024.
	ReceiveMaximum uint16
	// ReplyQoS0 publishes replies at QoS 0 instead of 1. QoS 1 (the default) has the broker
	// queue a reply for a device that is briefly disconnected (with a persistent session);
	// QoS 0 avoids the broker's in-flight window on Vigil's replies (Mosquitto allows 20
	// unacknowledged messages per client by default), for higher throughput. A device that
	// misses a reply re-sends the same upload and gets the same receipt: nothing is lost.
	ReplyQoS0 bool
	// AcceptTimeout bounds the processing of one upload. Default 10 s.
	AcceptTimeout time.Duration
	// Accepter verifies and stores uploads (the devices service). Required.
	Accepter Accepter
	// Recorder audits the rejections this adapter makes itself (an envelope signed for
	// another device than its topic names): the process's audit.Outbox. Required.
	Recorder audit.Recorder
	// Logger receives connection events and failures. Default slog.Default().
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

func (c *Config) setDefaults() error {
	if c.Broker == "" {
		return errors.New("mqtt: Config.Broker is required")
	}
	if c.Accepter == nil {
		return errors.New("mqtt: Config.Accepter is required")
	}
	if c.Recorder == nil {
		return errors.New("mqtt: Config.Recorder is required")
	}
	if c.ClientID == "" {
		var b [6]byte
		_, _ = rand.Read(b[:])
		c.ClientID = "vigil-" + hex.EncodeToString(b[:])
		c.SessionExpiry = 0
	} else if c.SessionExpiry <= 0 {
		c.SessionExpiry = time.Hour
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.ShareGroup == "" {
		c.ShareGroup = "vigil"
	}
	if c.KeepAlive <= 0 {
		c.KeepAlive = 30 * time.Second
	}
	if c.ReconnectBackoff <= 0 {
		c.ReconnectBackoff = 10 * time.Second
	}
	if c.Workers <= 0 {
		c.Workers = 256
	}
	if c.ReceiveMaximum == 0 {
		c.ReceiveMaximum = 1024
	}
	if c.AcceptTimeout <= 0 {
		c.AcceptTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Stats counts what the Ingestor did since it started.
type Stats struct {
	Received uint64 // messages taken off upload topics
	Accepted uint64 // uploads stored (or exact re-sends answered with their receipt)
	Rejected uint64 // uploads refused with a coded reason
	Failed   uint64 // uploads that failed for an internal reason (answered internal_error)
	Replies  uint64 // replies published
	Connects uint64 // successful connections (1 + reconnections)
	// Subscriptions counts the upload subscriptions the broker granted (one per connection,
	// a moment after it): uploads published before it on a fresh session are not delivered.
	Subscriptions uint64
	// AcceptTime and ReplyTime are the total time spent in verification and storage
	// (Accepter.Accept) and in publishing replies and acknowledging: divided by Received they
	// say where an upload's time goes.
	AcceptTime, ReplyTime time.Duration
}

// Ingestor is the running MQTT adapter. Start it with Start; stop it with Close.
type Ingestor struct {
	cfg    Config
	filter string
	cm     *autopaho.ConnectionManager

	ctx     context.Context // cancelled by Close: ends processing
	cancel  context.CancelFunc
	closing chan struct{} // closed by Close: stops intake
	shards  []chan message
	wg      sync.WaitGroup // workers
	subs    sync.WaitGroup // subscription goroutines (added only while the connection manager runs)
	once    sync.Once
	up      chan struct{} // closed at the first successful subscription
	upOnce  sync.Once

	received, accepted, rejected, failed, replies, connects, subscribed atomic.Uint64
	acceptNanos, replyNanos                                             atomic.Int64
}

type message struct {
	pub    *paho.Publish
	client *paho.Client
}

// Start connects to the broker (retrying in the background until it answers), subscribes
// to the upload topics and processes uploads until Close. It returns at once; use Ready to
// wait for the first subscription.
func Start(cfg Config) (*Ingestor, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	u, err := url.Parse(cfg.Broker)
	if err != nil {
		return nil, fmt.Errorf("mqtt: broker URL: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	in := &Ingestor{
		cfg: cfg, ctx: ctx, cancel: cancel,
		closing: make(chan struct{}), up: make(chan struct{}),
		shards: make([]chan message, cfg.Workers),
	}
	in.filter = UpFilter(cfg.Prefix)
	if !cfg.NoShare {
		in.filter = "$share/" + cfg.ShareGroup + "/" + in.filter
	}
	for i := range in.shards {
		in.shards[i] = make(chan message, 64)
		in.wg.Add(1)
		go in.work(in.shards[i])
	}
	expiry := uint32(cfg.SessionExpiry / time.Second)
	maxBackoff := cfg.ReconnectBackoff
	acc := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{u},
		TlsCfg:                        cfg.TLS,
		KeepAlive:                     uint16(cfg.KeepAlive / time.Second),
		CleanStartOnInitialConnection: false,
		SessionExpiryInterval:         expiry,
		ConnectTimeout:                10 * time.Second,
		ReconnectBackoff: func(attempt int) time.Duration {
			d := 250 * time.Millisecond << min(attempt, 8)
			return min(d, maxBackoff)
		},
		ConnectUsername: cfg.Username,
		ConnectPassword: cfg.Password,
		ConnectPacketBuilder: func(c *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			if c.Properties == nil {
				c.Properties = &paho.ConnectProperties{}
			}
			rm := cfg.ReceiveMaximum
			c.Properties.ReceiveMaximum = &rm
			return c, nil
		},
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			in.connects.Add(1)
			cfg.Logger.InfoContext(ctx, "mqtt: connected", slog.String("broker", u.Redacted()), slog.String("client_id", cfg.ClientID))
			// Subscribe from a goroutine of the connection manager's lifetime: OnConnectionUp
			// must not block. Ends when the subscription answers or ctx ends.
			in.subs.Add(1)
			go func() {
				defer in.subs.Done()
				if _, err := cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: in.filter, QoS: 1}}}); err != nil {
					if ctx.Err() == nil {
						cfg.Logger.ErrorContext(ctx, "mqtt: subscribe failed", slog.String("filter", in.filter), slog.String("error", err.Error()))
					}
					return
				}
				in.subscribed.Add(1)
				in.upOnce.Do(func() { close(in.up) })
			}()
		},
		OnConnectionDown: func() bool {
			cfg.Logger.WarnContext(ctx, "mqtt: connection lost; reconnecting", slog.String("broker", u.Redacted()))
			return true
		},
		OnConnectError: func(err error) {
			if ctx.Err() == nil {
				cfg.Logger.WarnContext(ctx, "mqtt: connect failed", slog.String("broker", u.Redacted()), slog.String("error", err.Error()))
			}
		},
		ClientConfig: paho.ClientConfig{
			ClientID:                   cfg.ClientID,
			EnableManualAcknowledgment: true,
			SendAcksInterval:           5 * time.Millisecond,
			OnPublishReceived:          []func(paho.PublishReceived) (bool, error){in.dispatch},
			OnClientError: func(err error) {
				cfg.Logger.WarnContext(ctx, "mqtt: client error", slog.String("error", err.Error()))
			},
		},
	}
	cm, err := autopaho.NewConnection(ctx, acc)
	if err != nil {
		cancel()
		close(in.closing)
		in.wg.Wait()
		return nil, fmt.Errorf("mqtt: %w", err)
	}
	in.cm = cm
	return in, nil
}

// Ready waits until the Ingestor is connected and subscribed (or ctx ends).
func (in *Ingestor) Ready(ctx context.Context) error {
	select {
	case <-in.up:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("mqtt: waiting for subscription to %s: %w", in.filter, ctx.Err())
	}
}

// Subscribed reports whether the Ingestor has subscribed at least once (it stays true
// across reconnections, which resubscribe).
func (in *Ingestor) Subscribed() bool {
	select {
	case <-in.up:
		return true
	default:
		return false
	}
}

// Stats returns the counters.
func (in *Ingestor) Stats() Stats {
	return Stats{Received: in.received.Load(), Accepted: in.accepted.Load(), Rejected: in.rejected.Load(),
		Failed: in.failed.Load(), Replies: in.replies.Load(), Connects: in.connects.Load(), Subscriptions: in.subscribed.Load(),
		AcceptTime: time.Duration(in.acceptNanos.Load()), ReplyTime: time.Duration(in.replyNanos.Load())}
}

// Close stops taking uploads, lets those being processed finish (until ctx ends), then
// disconnects. Uploads received but not yet processed are not acknowledged: the broker
// delivers them again (to this session later, or to another member of the share group).
// No goroutine of the Ingestor runs after Close returns.
func (in *Ingestor) Close(ctx context.Context) error {
	var err error
	in.once.Do(func() {
		close(in.closing)
		done := make(chan struct{})
		go func() { in.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			in.cancel() // abort uploads in flight; they stay unacknowledged
			<-done
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if derr := in.cm.Disconnect(dctx); derr != nil && !errors.Is(derr, autopaho.ConnectionDownError) {
			err = fmt.Errorf("mqtt: disconnect: %w", derr)
		}
		in.cancel()
		select {
		case <-in.cm.Done():
			in.subs.Wait() // no new ones once the connection manager has stopped; ctx is cancelled
		case <-dctx.Done():
			err = errors.Join(err, errors.New("mqtt: connection manager did not stop"))
		}
	})
	return err
}

// dispatch runs on paho's delivery goroutine: it routes the message to its device's worker
// (blocking when that worker is busy, which holds back the broker through ReceiveMaximum).
func (in *Ingestor) dispatch(pr paho.PublishReceived) (bool, error) {
	p := pr.Packet
	shard := 0
	if id, err := ParseUpTopic(in.cfg.Prefix, p.Topic); err == nil {
		h := fnv.New32a()
		_, _ = h.Write([]byte(id))
		shard = int(h.Sum32() % uint32(len(in.shards)))
	}
	select {
	case in.shards[shard] <- message{pub: p, client: pr.Client}:
		return true, nil
	case <-in.closing:
		return true, nil // not acknowledged: the broker delivers it again
	}
}

func (in *Ingestor) work(q <-chan message) {
	defer in.wg.Done()
	for {
		select {
		case <-in.closing:
			return
		case m := <-q:
			in.handle(m)
		}
	}
}

// handle processes one upload to the end: verified and stored or refused, reply published,
// message acknowledged.
func (in *Ingestor) handle(m message) {
	in.received.Add(1)
	ctx, cancel := context.WithTimeout(in.ctx, in.cfg.AcceptTimeout)
	defer cancel()
	// Every message gets a request id made here; the device's correlation data (MQTT 5) is
	// kept apart as its correlation id, never as the request id.
	meta := devices.Meta{Transport: "mqtt", RequestID: newRequestID(), CorrelationID: correlationID(m.pub), SourceAddr: "mqtt:" + in.cfg.Broker}
	topicDevice, err := ParseUpTopic(in.cfg.Prefix, m.pub.Topic)
	if err != nil {
		// Cannot happen with our subscription filter but for ids we refuse to echo into a
		// topic; there is nowhere safe to answer. Audit and drop.
		in.rejected.Add(1)
		in.auditOwnRejection(ctx, meta, "", "", "bad_topic", err)
		in.ack(m)
		return
	}
	reply := Reply{Type: ReplyType}
	// Learn the signed device id, hash and sequence number (when the envelope decodes), to
	// bind the upload to its topic and to label the reply. Accept decodes and checks it again
	// with the signature: nothing here is trusted.
	var signedDevice string
	if env, perr := envelope.ParseEnvelope(m.pub.Payload, envelope.Limits{}); perr == nil {
		if u, uerr := envelope.ParseUpload(env.Body, envelope.Limits{}); uerr == nil {
			h := envelope.Hash(env.Body)
			reply.Upload = hex.EncodeToString(h[:])
			reply.Seq = u.Seq
			signedDevice = u.Device
		}
	}
	if signedDevice != "" && signedDevice != topicDevice {
		in.rejected.Add(1)
		msg := fmt.Sprintf("envelope is signed for device %s but was published on the topic of device %s", signedDevice, clip(topicDevice))
		in.auditOwnRejection(ctx, meta, topicDevice, reply.Upload, CodeTopicMismatch, errors.New(msg))
		reply.Status = StatusRejected
		reply.Error = &ReplyError{Code: CodeTopicMismatch, Message: msg}
		in.publish(ctx, m, topicDevice, &reply)
		return
	}
	t0 := time.Now()
	rc, err := in.cfg.Accepter.Accept(ctx, m.pub.Payload, meta)
	in.acceptNanos.Add(int64(time.Since(t0)))
	var re *devices.RejectError
	switch {
	case err == nil:
		in.accepted.Add(1)
		reply.Status = StatusAccepted
		reply.Receipt = rc.Wire
		reply.Replayed = rc.Replayed
		reply.Upload = hex.EncodeToString(rc.UploadHash[:])
		reply.Seq = rc.Body.Seq
	case errors.As(err, &re):
		in.rejected.Add(1)
		reply.Status = StatusRejected
		reply.Error = &ReplyError{Code: re.Code, Message: re.Error(), RetryAfterSeconds: re.RetryAfterSeconds()}
	default:
		if in.ctx.Err() != nil {
			return // closing: leave it unacknowledged for redelivery
		}
		in.failed.Add(1)
		in.cfg.Logger.ErrorContext(ctx, "mqtt: upload failed", slog.String("device", clip(topicDevice)), slog.String("error", err.Error()))
		reply.Status = StatusRejected
		reply.Error = &ReplyError{Code: CodeInternal, Message: "the upload could not be processed; nothing was stored; send it again", RetryAfterSeconds: 1}
	}
	in.publish(ctx, m, topicDevice, &reply)
}

// publish sends the reply (QoS 1), then acknowledges the upload. If the reply cannot be
// sent the upload is still acknowledged when it was stored or refused for good: a re-send by
// the device gets its receipt again.
func (in *Ingestor) publish(ctx context.Context, m message, device string, r *Reply) {
	defer func(t0 time.Time) { in.replyNanos.Add(int64(time.Since(t0))) }(time.Now())
	b, err := json.Marshal(r)
	if err == nil {
		p := &paho.Publish{
			QoS: replyQoS(in.cfg.ReplyQoS0), Topic: ReceiptTopic(in.cfg.Prefix, device), Payload: b,
			Properties: &paho.PublishProperties{ContentType: "application/json"},
		}
		if m.pub.Properties != nil && len(m.pub.Properties.CorrelationData) > 0 && len(m.pub.Properties.CorrelationData) <= 256 {
			p.Properties.CorrelationData = m.pub.Properties.CorrelationData
		}
		_, err = in.cm.Publish(ctx, p)
	}
	if err != nil {
		if in.ctx.Err() == nil {
			in.cfg.Logger.WarnContext(ctx, "mqtt: publish reply failed", slog.String("device", clip(device)), slog.String("error", err.Error()))
		}
	} else {
		in.replies.Add(1)
	}
	in.ack(m)
}

func replyQoS(qos0 bool) byte {
	if qos0 {
		return 0
	}
	return 1
}

func (in *Ingestor) ack(m message) {
	if m.client == nil {
		return
	}
	if err := m.client.Ack(m.pub); err != nil && in.ctx.Err() == nil {
		in.cfg.Logger.WarnContext(in.ctx, "mqtt: ack failed", slog.String("error", err.Error()))
	}
}

// auditOwnRejection records a rejection this adapter decided itself (group-committed).
func (in *Ingestor) auditOwnRejection(ctx context.Context, meta devices.Meta, device, upload, code string, cause error) {
	payload := map[string]any{"transport": "mqtt", "detail": cause.Error()}
	if meta.CorrelationID != "" {
		payload["correlation_id"] = meta.CorrelationID
	}
	ev := audit.Event{
		Actor:      audit.Actor{Kind: audit.ActorDevice, ID: "unverified:" + clip(device), AuthMethod: "none"},
		Action:     "upload.rejected",
		Object:     audit.Object{Type: "upload", ID: upload},
		Outcome:    audit.OutcomeRejected,
		Reason:     code,
		RequestID:  meta.RequestID,
		SourceAddr: meta.SourceAddr,
		Time:       in.cfg.Now(),
		Payload:    payload,
	}
	if ev.Object.ID == "" {
		ev.Object.ID = "(undecodable)"
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := in.cfg.Recorder.RecordNow(actx, ev); err != nil {
		in.cfg.Logger.ErrorContext(ctx, "mqtt: audit of rejected upload failed", slog.String("code", code), slog.String("error", err.Error()))
	}
}

// newRequestID names one MQTT message for the audit trail: "mqtt-" and 16 random hex digits,
// made here whatever the device sent.
func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "mqtt-" + hex.EncodeToString(b[:])
}

// correlationID returns the message's MQTT 5 correlation data in hex when the device set
// some (at most 64 bytes; longer is ignored), else "".
func correlationID(p *paho.Publish) string {
	if p.Properties != nil && len(p.Properties.CorrelationData) > 0 && len(p.Properties.CorrelationData) <= 64 {
		return hex.EncodeToString(p.Properties.CorrelationData)
	}
	return ""
}
