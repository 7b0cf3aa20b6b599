package devices

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/devices/envelope"
	"github.com/vigilhealth/vigil/internal/pglisten"
)

// Ingester stores the samples of verified uploads; *core.Service satisfies it. Devices owns
// this interface (the consumer) and the upload transaction; core implements the three steps.
type Ingester interface {
	// Prepare validates and normalizes a batch and MUST write nothing: a refusal is an error
	// with a stable ErrorCode() (devices audits it as the upload's rejection).
	Prepare(ctx context.Context, b core.Batch) (*core.Prepared, error)
	// Store writes prepared batches — observations, provenance, one upload.accepted audit
	// event each — inside tx and MUST NOT commit or roll it back, nor modify ps (a failed
	// group is stored again, in parts, in new transactions).
	Store(ctx context.Context, tx pgx.Tx, ps []*core.Prepared) ([]core.Stored, error)
	// Publish hands what a committed Store wrote to the live stream and the rules. Devices
	// calls it once per committed transaction, after answering the devices; it may wait
	// while the rules fall behind and MUST NOT drop anything.
	Publish(ctx context.Context, stored []core.Stored) error
}

// ReceiptSigner signs receipts with the installation's receipt-signing key (in production a
// keys.Signer backed by Vault Transit or the local key ring).
type ReceiptSigner interface {
	// Sign returns the signature over msg: Ed25519 over msg itself, or ECDSA (ASN.1) over
	// SHA-256(msg). It MUST be safe for concurrent use and MUST NOT retain msg.
	Sign(ctx context.Context, msg []byte) ([]byte, error)
	// KeyID names the signing key with its version; it is carried in every receipt.
	KeyID() string
	// Public returns the public key devices verify receipts with.
	Public() crypto.PublicKey
}

// ProofSource answers with the audit log's proof that an event was logged; the audit
// package provides it.
type ProofSource interface {
	// EventProof returns a JSON-marshalable proof that audit event id is included in the
	// log. It MUST return an error wrapping ErrProofPending while the event is not yet in
	// the log, and MUST NOT return (nil, nil).
	EventProof(ctx context.Context, id uuid.UUID) (any, error)
}

// LeafIndexer is implemented by a ProofSource that can say which audit log leaf holds an
// event; receipts re-issued after integration then carry the leaf index.
type LeafIndexer interface {
	// EventLeafIndex returns the leaf index of the batch holding audit event id, and false
	// while the event is not yet in the log.
	EventLeafIndex(ctx context.Context, id uuid.UUID) (int64, bool, error)
}

// Admitter says whether new uploads may be admitted now; *audit.Outbox is one.
type Admitter interface {
	// Admit returns nil, or an error wrapping audit.ErrPushback (a *audit.PushbackError
	// carrying the Retry-After the device is told) when new work must wait. It MUST return
	// quickly: it runs for every upload.
	Admit() error
}

// AdmitFunc adapts a function to Admitter.
type AdmitFunc func() error

// Admit calls f.
func (f AdmitFunc) Admit() error { return f() }

// ErrProofPending is returned by Proof while the upload's audit event waits in the outbox.
var ErrProofPending = errors.New("upload not yet in the audit log")

// Config configures the Service. Zero values take the documented defaults.
type Config struct {
	// Pool is the installation's database. Required.
	Pool *pgxpool.Pool
	// Recorder records every audit event of the device area: registry changes, accepted and
	// rejected uploads, retention (the process's audit.Outbox). Required.
	Recorder audit.Recorder
	// Ingester stores verified uploads (the core service). Required for Accept.
	Ingester Ingester
	// ReceiptSigner signs receipts. Required for Accept.
	ReceiptSigner ReceiptSigner
	// Proofs answers Proof; when nil, Proof reports ErrProofPending.
	Proofs ProofSource
	// Pushback is the global back-pressure: while it refuses (audit.ErrPushback: the audit
	// log is far behind), uploads are refused with ErrBackpressure and its Retry-After.
	// Default: the Recorder, when it is an Admitter (the audit.Outbox, owner of the audit
	// backlog, is).
	Pushback Admitter
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// MaxSkew is how far sent_at may be from the server's clock, either way. Default 5 min.
	MaxSkew time.Duration
	// Limits bound envelope sizes. Default envelope.DefaultLimits.
	Limits envelope.Limits
	// RatePerSecond and RateBurst are each device's token bucket for uploads. Default 20/s,
	// burst 100. A negative rate disables the limit.
	RatePerSecond float64
	RateBurst     int
	// SampleQuotaPerHour is the most samples (plus waveform points / 100) a device may send
	// per hour, refilled continuously. Default 1,000,000. Negative disables it.
	SampleQuotaPerHour float64
	// BatchMaxUploads is the most uploads committed in one transaction. Default 512.
	BatchMaxUploads int
	// BatchMaxWait is how long the first upload of a batch waits for more. Default 2 ms.
	BatchMaxWait time.Duration
	// Committers is how many group commits run at once. Default 2.
	Committers int
	// QueueLimit is the most uploads waiting for commit before new ones get ErrBackpressure.
	// Default 8192.
	QueueLimit int
	// Retention is how long accepted uploads' rows (receipts, waveforms) are kept; see
	// EnforceRetention. Defaults match core's.
	Retention Retention
	// MaxCachedDevices is the most devices whose state (status, current key with its
	// precomputed verification tables, sequence) is kept in memory, ≈ 1.7 KB each; beyond it
	// an arbitrary cached device is dropped and reloaded from the database on its next
	// upload. Default 100,000 (≈ 170 MB).
	MaxCachedDevices int
	// EnrollmentTokenTTL is how long an enrollment token stays valid. Default 24 h.
	EnrollmentTokenTTL time.Duration
	// Logger receives operational messages of the background committer. Default slog.Default().
	Logger *slog.Logger
	// NoChangeListener turns off the listener that drops cached devices when another process
	// changes them (PostgreSQL LISTEN). For one-shot tools.
	NoChangeListener bool
	// Listener is the process's shared notification listener (internal/pglisten), on which
	// the change listener follows vigil_devices_changed; the caller runs it. Nil: the Service
	// listens on a connection of its own (stopped by Close).
	Listener *pglisten.Listener
}

func (c *Config) setDefaults() {
	if a, ok := c.Recorder.(Admitter); ok && c.Pushback == nil {
		c.Pushback = a
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.MaxSkew <= 0 {
		c.MaxSkew = 5 * time.Minute
	}
	if c.RatePerSecond == 0 {
		c.RatePerSecond = 20
	}
	if c.RateBurst <= 0 {
		c.RateBurst = 100
	}
	if c.SampleQuotaPerHour == 0 {
		c.SampleQuotaPerHour = 1_000_000
	}
	if c.BatchMaxUploads <= 0 {
		c.BatchMaxUploads = 512
	}
	if c.BatchMaxWait <= 0 {
		c.BatchMaxWait = 2 * time.Millisecond
	}
	if c.Committers <= 0 {
		c.Committers = 2
	}
	if c.QueueLimit <= 0 {
		c.QueueLimit = 8192
	}
	c.Retention.setDefaults()
	if c.MaxCachedDevices <= 0 {
		c.MaxCachedDevices = 100_000
	}
	if c.EnrollmentTokenTTL <= 0 {
		c.EnrollmentTokenTTL = 24 * time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Meta says how an upload arrived, for its audit event and provenance.
type Meta struct {
	Transport  string // "http" or "mqtt"
	RequestID  string // the request or message id, made by the server for this request
	SourceAddr string // the client's address as the transport saw it
	// CorrelationID is the client's own id for the request (HTTP X-Correlation-Id, MQTT 5
	// correlation data), already checked for length and characters, or "". It is recorded in
	// a rejection's audit payload, never used as the request id.
	CorrelationID string
}

// Receipt is what an accepted upload gets back.
type Receipt struct {
	// Wire is the signed receipt's bytes (envelope.SignedReceipt, CBOR): send them as they are.
	Wire []byte
	// Signed and Body are Wire decoded.
	Signed envelope.SignedReceipt
	Body   envelope.Receipt
	// UploadHash is SHA-256 of the upload's canonical body.
	UploadHash [32]byte
	// Replayed is true when the upload was an exact re-send of one accepted before and this
	// is the receipt stored then (nothing new was stored).
	Replayed bool
	// DeviceSignature and DeviceSignedAt: the device's own Ed25519 signature over the upload's
	// canonical body and the time the device says it signed (sent_at); set by UploadReceipt
	// (the evidence a FHIR Provenance carries), empty for uploads stored before they were kept.
	DeviceSignature []byte
	DeviceSignedAt  time.Time
}

// Service is the device registry, enrollment, and the verification and ingestion of signed
// uploads. It is safe for concurrent use; Close stops its background committers.
type Service struct {
	cfg   Config
	cache *deviceCache
	bat   *batcher

	closeOnce  sync.Once
	stopListen context.CancelFunc
	listenDone chan struct{}

	stats struct {
		accepted, rejected, replayed, groups, fallbacks, commitNanos, hookNanos, publishNanos atomic.Int64
	}
}

// Stats are counters of the upload path since the Service started.
type Stats struct {
	Accepted  int64 // uploads committed
	Replayed  int64 // exact re-sends answered with their stored receipt
	Rejected  int64 // uploads refused (each audited)
	Groups    int64 // group-commit transactions that committed
	Fallbacks int64 // groups that failed and were committed one upload at a time
	// CommitTime is the total time spent in group-commit transactions (core.Store, the
	// device state, commit), successful or not.
	CommitTime time.Duration
	// Pending is the number of uploads admitted and waiting for their commit right now.
	Pending int
	// HookTime is the part of CommitTime spent writing device state (sequence numbers,
	// receipts) inside the transaction.
	HookTime time.Duration
	// PublishTime is the total time spent handing committed uploads to core.Publish (the
	// live stream and the rules' hand-off): it grows when the rules fall behind.
	PublishTime time.Duration
	// CachedDevices is the number of devices whose state is in memory right now (at most
	// Config.MaxCachedDevices).
	CachedDevices int
}

// Stats returns the counters of the upload path.
func (s *Service) Stats() Stats {
	return Stats{Accepted: s.stats.accepted.Load(), Replayed: s.stats.replayed.Load(), Rejected: s.stats.rejected.Load(),
		Groups: s.stats.groups.Load(), Fallbacks: s.stats.fallbacks.Load(),
		CommitTime: time.Duration(s.stats.commitNanos.Load()), HookTime: time.Duration(s.stats.hookNanos.Load()),
		PublishTime: time.Duration(s.stats.publishNanos.Load()),
		Pending:     s.bat.pendingCount(), CachedDevices: s.cache.len()}
}

// New builds the Service and starts its group committers.
func New(cfg Config) (*Service, error) {
	if cfg.Pool == nil || cfg.Recorder == nil {
		return nil, errors.New("devices: Config.Pool and Config.Recorder are required")
	}
	cfg.setDefaults()
	s := &Service{cfg: cfg, cache: newDeviceCache(cfg.MaxCachedDevices)}
	s.bat = newBatcher(s)
	switch {
	case cfg.NoChangeListener:
	case cfg.Listener != nil:
		s.listenOn(cfg.Listener)
	default:
		l := pglisten.New(cfg.Pool, cfg.Logger)
		s.listenOn(l)
		lctx, cancel := context.WithCancel(context.Background())
		s.stopListen = cancel
		s.listenDone = make(chan struct{})
		go func() { defer close(s.listenDone); _ = l.Run(lctx) }()
	}
	return s, nil
}

// Close stops the group committers after the uploads already queued are committed (or ctx
// ends). Accept after Close fails with ErrBackpressure.
func (s *Service) Close(ctx context.Context) error {
	var err error
	s.closeOnce.Do(func() {
		if s.stopListen != nil {
			s.stopListen()
			<-s.listenDone
		}
		err = s.bat.close(ctx)
	})
	if err != nil {
		return fmt.Errorf("devices: close: %w", err)
	}
	return nil
}

// ReceiptKey returns the id and public key receipts are signed with (for device makers and
// the SDK to verify receipts).
func (s *Service) ReceiptKey() (keyID string, pub crypto.PublicKey, err error) {
	if s.cfg.ReceiptSigner == nil {
		return "", nil, errors.New("devices: no receipt signer configured")
	}
	return s.cfg.ReceiptSigner.KeyID(), s.cfg.ReceiptSigner.Public(), nil
}

// MaxEnvelopeBytes is the largest upload envelope accepted (transports read at most one
// byte more, so that a larger one is refused as ErrTooLarge and audited).
func (s *Service) MaxEnvelopeBytes() int {
	if s.cfg.Limits.MaxEnvelopeBytes > 0 {
		return s.cfg.Limits.MaxEnvelopeBytes
	}
	return envelope.DefaultLimits.MaxEnvelopeBytes
}
