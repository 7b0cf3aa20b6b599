package sdk

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/vigilhealth/vigil/devices/envelope"
)

// Errors callers branch on.
var (
	// ErrBufferFull: the buffer holds Config.MaxBuffered uploads; nothing was added. The
	// caller decides what to drop: the SDK never drops data silently.
	ErrBufferFull = errors.New("sdk: upload buffer full")
	// ErrBadReceipt: Vigil answered with a receipt that does not verify or does not name the
	// upload sent. The upload stays buffered.
	ErrBadReceipt = errors.New("sdk: receipt does not verify")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("sdk: client closed")
)

// Config configures a Client. Zero values take the documented defaults.
type Config struct {
	// Identity is the device's id and key. Required.
	Identity Identity
	// Transport delivers uploads. Required (e.g. &HTTPTransport{BaseURL: …}).
	Transport Transport
	// ReceiptKey is Vigil's receipt-signing public key (Ed25519 or ECDSA), which every
	// receipt must verify under. Required unless SkipReceiptVerification.
	ReceiptKey crypto.PublicKey
	// SkipReceiptVerification accepts receipts without checking their signature (the upload
	// hash, device and sequence number are still checked). For tests and tools only.
	SkipReceiptVerification bool
	// Dir is the buffer directory. Uploads are written there before they are sent and
	// removed only when Vigil's receipt for them has been verified, so nothing is lost across
	// a restart of the device process. Empty: buffer in memory (lost on restart).
	Dir string
	// MaxBuffered is the most uploads the buffer holds. Default 100,000.
	MaxBuffered int
	// MaxAttempts is how many times one Flush tries the upload at the head of the buffer
	// before giving up for now. Default 5.
	MaxAttempts int
	// MinBackoff and MaxBackoff bound the wait between attempts (exponential, with jitter;
	// a Retry-After from Vigil is honoured up to MaxBackoff). Defaults 200 ms and 30 s.
	MinBackoff, MaxBackoff time.Duration
	// Now is the clock (sent_at of uploads). Default time.Now.
	Now func() time.Time
	// Rand draws the backoff jitter. Default a randomly seeded generator.
	Rand *rand.Rand
	// Sleep waits d or until ctx ends. Default a timer; tests may make it instant.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Receipt is a verified receipt for one delivered upload.
type Receipt struct {
	Wire   []byte           // the signed receipt as received (keep it as proof)
	Body   envelope.Receipt // decoded
	Seq    uint64           // the upload's sequence number
	Hash   [32]byte         // SHA-256 of the upload's canonical body
	Signed envelope.SignedReceipt
}

// Client signs, buffers and delivers one device's uploads. It is safe for concurrent use:
// Enqueue never waits for the network (a sensor loop may enqueue while another goroutine
// flushes), and deliveries are serialized (uploads go out in order, as sequence numbers
// require).
type Client struct {
	cfg    Config
	store  store
	device string // the device id (never changes; cfg.Identity's key does, under mu)

	sendMu sync.Mutex // serializes Flush
	mu     sync.Mutex // guards everything below and the store; never held across the network
	st     state
	queue  []item
	closed bool
}

// New opens the client and its buffer (reloading uploads left in Dir by an earlier run).
func New(cfg Config) (*Client, error) {
	if err := cfg.Identity.Validate(); err != nil {
		return nil, fmt.Errorf("sdk: %w", err)
	}
	if cfg.Transport == nil {
		return nil, errors.New("sdk: Config.Transport is required")
	}
	if cfg.ReceiptKey == nil && !cfg.SkipReceiptVerification {
		return nil, errors.New("sdk: Config.ReceiptKey is required (Vigil's receipt-signing public key)")
	}
	if cfg.MaxBuffered <= 0 {
		cfg.MaxBuffered = 100_000
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 5
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 200 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	if cfg.Sleep == nil {
		cfg.Sleep = sleepCtx
	}
	c := &Client{cfg: cfg, device: cfg.Identity.DeviceID}
	if cfg.Dir == "" {
		c.store = newMemStore()
	} else {
		ds, err := newDirStore(cfg.Dir)
		if err != nil {
			return nil, fmt.Errorf("sdk: %w", err)
		}
		c.store = ds
	}
	st, items, err := c.store.load()
	if err != nil {
		return nil, fmt.Errorf("sdk: %w", err)
	}
	c.st, c.queue = st, items
	return c, nil
}

// Pending returns how many uploads wait in the buffer.
func (c *Client) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

// Close closes the client. The buffer stays on disk for the next run.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

// Enqueue adds one upload of samples to the buffer (durably, when Dir is set) without
// sending it. Sample times are kept as given; the upload is signed when it is first sent.
func (c *Client) Enqueue(samples []envelope.Sample) error {
	if len(samples) == 0 {
		return errors.New("sdk: an upload needs at least one sample")
	}
	probe := envelope.Upload{Type: envelope.TypeUpload, Device: c.device, KeyVersion: 1, Seq: 1, SentAt: 1, Samples: samples}
	if err := probe.Validate(); err != nil {
		return fmt.Errorf("sdk: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	if len(c.queue) >= c.cfg.MaxBuffered {
		return ErrBufferFull
	}
	it := item{N: c.st.NextN, Samples: append([]envelope.Sample(nil), samples...)}
	next := c.st
	next.NextN++
	if err := c.store.putState(next); err != nil {
		return fmt.Errorf("sdk: %w", err)
	}
	c.st = next
	if err := c.store.put(it); err != nil {
		return fmt.Errorf("sdk: %w", err)
	}
	c.queue = append(c.queue, it)
	return nil
}

// Send enqueues one upload and flushes the buffer. When the network or Vigil is
// unavailable the upload stays buffered and Send returns the delivery error; call Flush
// later (nothing is lost).
func (c *Client) Send(ctx context.Context, samples []envelope.Sample) ([]Receipt, error) {
	if err := c.Enqueue(samples); err != nil {
		return nil, err
	}
	return c.Flush(ctx)
}

// Flush delivers buffered uploads, oldest first, until the buffer is empty or one cannot be
// delivered now. It returns the receipts of the uploads delivered. An upload Vigil refuses
// for good (a *RejectedError that is not Temporary) is moved out of the buffer (into
// Dir/rejected) and its error is returned joined with any other; delivery goes on with the
// next one. An upload refused for a clock skew is signed again with a fresh sent_at and a
// new sequence number and tried once more (Vigil stored nothing of it).
func (c *Client) Flush(ctx context.Context) ([]Receipt, error) {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	var receipts []Receipt
	var refused []error
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return receipts, errors.Join(append(refused, ErrClosed)...)
		}
		if len(c.queue) == 0 {
			c.mu.Unlock()
			return receipts, errors.Join(refused...)
		}
		head := c.queue[0] // only Flush removes items, and Flush is serialized: it stays the head
		c.mu.Unlock()

		rc, head, err := c.deliver(ctx, head)
		c.mu.Lock()
		switch re, rejected := isRejected(err); {
		case err == nil:
			err = c.store.remove(head.N)
			if err == nil {
				c.queue = c.queue[1:]
				receipts = append(receipts, *rc)
			} else {
				err = fmt.Errorf("sdk: delivered but not removed from the buffer: %w", err)
			}
		case rejected && !re.Temporary() && !errors.Is(err, ErrRotationPending):
			if qerr := c.store.quarantine(head, re.Error()); qerr != nil {
				err = errors.Join(err, qerr)
				break
			}
			c.queue = c.queue[1:]
			refused = append(refused, fmt.Errorf("upload %d (seq %d): %w", head.N, head.Seq, err))
			err = nil
		}
		c.mu.Unlock()
		if err != nil {
			return receipts, errors.Join(append(refused, err)...)
		}
	}
}

// deliver sends one buffered upload until it gets a verified receipt, a refusal, or runs
// out of attempts; it returns the item as last signed.
func (c *Client) deliver(ctx context.Context, it item) (*Receipt, item, error) {
	resigned := false
	var last error
	for attempt := 0; attempt < c.cfg.MaxAttempts; attempt++ {
		if attempt > 0 {
			if err := c.cfg.Sleep(ctx, c.backoff(attempt, last)); err != nil {
				return nil, it, errors.Join(last, err)
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, it, errors.Join(last, err)
		}
		if it.Signed == nil {
			if err := c.sign(&it); err != nil {
				return nil, it, err
			}
		}
		answer, err := c.cfg.Transport.Upload(ctx, it.Signed)
		if err != nil {
			last = err
			if re, ok := isRejected(err); ok {
				if (re.Code == "clock_skew" || re.Code == "unknown_key" && c.signedWithOldKey(it)) && !resigned {
					// Nothing was stored: sign again now (with the current time and key) and
					// retry at once.
					resigned = true
					if err := c.sign(&it); err != nil {
						return nil, it, err
					}
					attempt--
					continue
				}
				if re.Code == "unknown_key" && c.rotationPending() {
					// Vigil may hold a key this client has not taken up yet: keep the upload
					// until the rotation is completed.
					return nil, it, errors.Join(ErrRotationPending, err)
				}
				if !re.Temporary() {
					return nil, it, err
				}
			}
			continue
		}
		rc, err := c.verifyReceipt(answer, &it)
		return rc, it, err
	}
	return nil, it, fmt.Errorf("sdk: upload not delivered after %d attempts: %w", c.cfg.MaxAttempts, last)
}

// signedWithOldKey reports whether the item's envelope was signed with a key version older
// than the device's current one (a rotation happened since).
func (c *Client) signedWithOldKey(it item) bool {
	env, err := envelope.ParseEnvelope(it.Signed, envelope.Limits{})
	if err != nil {
		return false
	}
	u, err := envelope.ParseUpload(env.Body, envelope.Limits{})
	if err != nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return u.KeyVersion < c.cfg.Identity.KeyVersion
}

// sign gives the item (the head of the queue) a new sequence number, above every one used
// before (recorded before the envelope can leave the device), signs it with sent_at now,
// and writes it back to the buffer.
func (c *Client) sign(it *item) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Sequence numbers follow the clock (microseconds) when it is ahead of the counter, so a
	// device whose buffer was lost (factory reset, memory-only buffer) still continues above
	// every number it used before instead of being refused for replay.
	next := c.st
	next.LastSeq = max(c.st.LastSeq+1, uint64(max(c.cfg.Now().UnixMicro(), 0)))
	if err := c.store.putState(next); err != nil {
		return fmt.Errorf("sdk: %w", err)
	}
	c.st = next
	u := envelope.Upload{
		Type: envelope.TypeUpload, Device: c.cfg.Identity.DeviceID, KeyVersion: c.cfg.Identity.KeyVersion,
		Seq: next.LastSeq, SentAt: c.cfg.Now().UnixMilli(), Samples: it.Samples,
	}
	raw, _, err := envelope.Sign(&u, c.cfg.Identity.PrivateKey)
	if err != nil {
		return fmt.Errorf("sdk: sign upload: %w", err)
	}
	it.Seq, it.Signed = next.LastSeq, raw
	if err := c.store.put(*it); err != nil {
		return fmt.Errorf("sdk: %w", err)
	}
	if len(c.queue) > 0 && c.queue[0].N == it.N {
		c.queue[0] = *it
	}
	return nil
}

// verifyReceipt checks that answer is a receipt for exactly the upload in it, signed by
// Vigil's receipt key.
func (c *Client) verifyReceipt(answer []byte, it *item) (*Receipt, error) {
	env, err := envelope.ParseEnvelope(it.Signed, envelope.Limits{})
	if err != nil {
		return nil, fmt.Errorf("sdk: buffered envelope: %w", err)
	}
	hash := envelope.Hash(env.Body)
	rc, err := VerifyReceipt(answer, c.cfg.ReceiptKey, c.cfg.SkipReceiptVerification, c.device, it.Seq, hash)
	if err != nil {
		return nil, err
	}
	return rc, nil
}

// VerifyReceipt parses a signed receipt and checks that it is signed by pub (unless
// skipSig) and names the upload with the given device, sequence number and hash. Every
// failure wraps ErrBadReceipt.
func VerifyReceipt(wire []byte, pub crypto.PublicKey, skipSig bool, device string, seq uint64, hash [32]byte) (*Receipt, error) {
	sr, body, err := envelope.ParseSignedReceipt(wire)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadReceipt, err)
	}
	if !skipSig {
		if err := envelope.VerifyReceipt(pub, sr); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadReceipt, err)
		}
	}
	if !bytes.Equal(body.Upload, hash[:]) || body.Device != device || body.Seq != seq {
		return nil, fmt.Errorf("%w: receipt names upload %x of device %q seq %d, want %x of %q seq %d",
			ErrBadReceipt, body.Upload, body.Device, body.Seq, hash, device, seq)
	}
	return &Receipt{Wire: append([]byte(nil), wire...), Body: *body, Seq: seq, Hash: hash, Signed: *sr}, nil
}

// backoff is the wait before attempt (≥ 1): exponential from MinBackoff with full jitter
// in its upper half, at least the Retry-After Vigil asked for, at most MaxBackoff.
func (c *Client) backoff(attempt int, last error) time.Duration {
	d := c.cfg.MinBackoff << min(attempt-1, 20)
	if d <= 0 || d > c.cfg.MaxBackoff {
		d = c.cfg.MaxBackoff
	}
	d = d/2 + time.Duration(c.cfg.Rand.Int64N(int64(d/2)+1))
	if re, ok := isRejected(last); ok && re.RetryAfter > d {
		d = re.RetryAfter
	}
	return min(d, c.cfg.MaxBackoff)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// PublicKey returns the device's public key (what enrollment registers).
func (id Identity) PublicKey() ed25519.PublicKey {
	return id.PrivateKey.Public().(ed25519.PublicKey)
}
