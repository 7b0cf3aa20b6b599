package chain

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/leaf"
	"github.com/vigilhealth/vigil/internal/every"
)

// CheckpointSigner signs checkpoints with an Ed25519 key. It is owned by this package; the
// key ring's signer for keys.AuditCheckpoint satisfies it as is, and NewEd25519Signer wraps a
// key held in memory (tests, tools).
type CheckpointSigner interface {
	// KeyID names the key; it MUST be stable for the key's lifetime.
	KeyID() string
	// Public returns the Ed25519 public key (an ed25519.PublicKey); it MUST match the key
	// Sign uses and MUST NOT do I/O. Any other key type is refused.
	Public() crypto.PublicKey
	// Sign returns the Ed25519 signature of msg. It MUST NOT alter msg and MUST return an
	// error (never a partial signature) when the key is unavailable.
	Sign(ctx context.Context, msg []byte) ([]byte, error)
}

// NewEd25519Signer is a CheckpointSigner over a private key held in memory (tests, tools).
func NewEd25519Signer(keyID string, priv ed25519.PrivateKey) CheckpointSigner {
	return memSigner{id: keyID, priv: priv}
}

type memSigner struct {
	id   string
	priv ed25519.PrivateKey
}

func (m memSigner) KeyID() string            { return m.id }
func (m memSigner) Public() crypto.PublicKey { return m.priv.Public() }
func (m memSigner) Sign(_ context.Context, msg []byte) ([]byte, error) {
	return ed25519.Sign(m.priv, msg), nil
}

// ErrInconsistent means the log is not an append-only extension of an earlier checkpoint:
// a fork or a rewrite. It is an incident: audited, logged, and readiness goes red.
var ErrInconsistent = errors.New("audit log is inconsistent with an earlier checkpoint")

// ErrNoCheckpoint is returned when no checkpoint has been issued yet.
var ErrNoCheckpoint = errors.New("no audit checkpoint issued yet")

// Checkpoint is a signed C2SP tlog-checkpoint of the log.
type Checkpoint struct {
	ID               int64     `json:"id"`
	CreatedAt        time.Time `json:"created_at"`
	Size             uint64    `json:"size"`
	Root             leaf.Hash `json:"-"`
	Note             string    `json:"note"` // the signed note, as served and verified
	KeyID            string    `json:"key_id"`
	PrevSize         uint64    `json:"prev_size"`
	ConsistencyProof [][]byte  `json:"consistency_proof,omitempty"` // from PrevSize to Size
}

// CheckpointBody is the C2SP tlog-checkpoint body: origin, size, base64 root hash.
func CheckpointBody(origin string, size uint64, root leaf.Hash) string {
	return fmt.Sprintf("%s\n%d\n%s\n", origin, size, base64.StdEncoding.EncodeToString(root[:]))
}

// VerifierKey returns the note verifier key ("name+hash+base64key") for a checkpoint key.
func VerifierKey(name string, pub crypto.PublicKey) (string, error) {
	ed, ok := pub.(ed25519.PublicKey)
	if !ok {
		return "", fmt.Errorf("checkpoint key: %T is not an Ed25519 public key", pub)
	}
	return note.NewEd25519VerifierKey(name, ed)
}

// OpenCheckpoint verifies a signed checkpoint note against the verifier key and returns its
// origin, size and root.
func OpenCheckpoint(signed, verifierKey string) (origin string, size uint64, root leaf.Hash, err error) {
	v, err := note.NewVerifier(verifierKey)
	if err != nil {
		return "", 0, root, fmt.Errorf("checkpoint verifier key: %w", err)
	}
	n, err := note.Open([]byte(signed), note.VerifierList(v))
	if err != nil {
		return "", 0, root, fmt.Errorf("checkpoint signature: %w", err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 || lines[len(lines)-1] != "" {
		return "", 0, root, fmt.Errorf("checkpoint body: want origin, size, root")
	}
	size, err = strconv.ParseUint(lines[1], 10, 64)
	if err != nil {
		return "", 0, root, fmt.Errorf("checkpoint size: %w", err)
	}
	h, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(h) != leaf.HashSize {
		return "", 0, root, fmt.Errorf("checkpoint root hash is not 32 base64 bytes")
	}
	copy(root[:], h)
	return lines[0], size, root, nil
}

// noteSigner adapts a CheckpointSigner to note.Signer.
type noteSigner struct {
	ctx  context.Context
	name string
	hash uint32
	s    CheckpointSigner
}

func newNoteSigner(ctx context.Context, name string, s CheckpointSigner) (*noteSigner, error) {
	vkey, err := VerifierKey(name, s.Public())
	if err != nil {
		return nil, fmt.Errorf("checkpoint key: %w", err)
	}
	parts := strings.SplitN(vkey, "+", 3)
	h, err := strconv.ParseUint(parts[1], 16, 32)
	if err != nil {
		return nil, fmt.Errorf("checkpoint key hash: %w", err)
	}
	return &noteSigner{ctx: ctx, name: name, hash: uint32(h), s: s}, nil
}

func (n *noteSigner) Name() string                    { return n.name }
func (n *noteSigner) KeyHash() uint32                 { return n.hash }
func (n *noteSigner) Sign(msg []byte) ([]byte, error) { return n.s.Sign(n.ctx, msg) }

// CheckpointerConfig configures the checkpointer. Zero values take the documented defaults.
type CheckpointerConfig struct {
	Pool     *pgxpool.Pool    // required
	Log      *Log             // required
	Signer   CheckpointSigner // required
	Recorder audit.Recorder   // records incidents; required
	// Origin is the checkpoint origin line, and the name of the signing key in the note.
	// Default "vigil.audit/<installation id>".
	Origin string
	// Interval between checkpoints while the log grows. Default 5s.
	Interval time.Duration
	// After is called by the background loop after each new checkpoint (witnessing).
	// Optional.
	After func(ctx context.Context, cp Checkpoint)
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Logger receives incidents. Default slog.Default().
	Logger *slog.Logger
}

// Checkpointer issues signed checkpoints of the log, each proven consistent with the previous
// one before it is stored.
type Checkpointer struct {
	cfg  CheckpointerConfig
	mu   sync.Mutex // one checkpoint at a time
	stop context.CancelFunc
	done chan struct{}
	once sync.Once
}

// NewCheckpointer checks cfg and fills the defaults (reading the installation id for the
// default origin).
func NewCheckpointer(ctx context.Context, cfg CheckpointerConfig) (*Checkpointer, error) {
	if cfg.Pool == nil || cfg.Log == nil || cfg.Signer == nil || cfg.Recorder == nil {
		return nil, errors.New("audit checkpointer: Pool, Log, Signer and Recorder are required")
	}
	if cfg.Origin == "" {
		var id string
		if err := cfg.Pool.QueryRow(ctx, "SELECT id::text FROM installation").Scan(&id); err != nil {
			return nil, fmt.Errorf("audit checkpointer: installation id: %w", err)
		}
		cfg.Origin = "vigil.audit/" + id
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Checkpointer{cfg: cfg}, nil
}

// Origin is the checkpoint origin (and key name).
func (c *Checkpointer) Origin() string { return c.cfg.Origin }

// VerifierKey is the note verifier key of the checkpoint signer.
func (c *Checkpointer) VerifierKey() (string, error) {
	return VerifierKey(c.cfg.Origin, c.cfg.Signer.Public())
}

// Start issues checkpoints every Interval while the log grows, until Close.
func (c *Checkpointer) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	c.stop, c.done = cancel, make(chan struct{})
	go func() {
		defer close(c.done)
		var last int64
		every.Tick(ctx, c.cfg.Interval, func(ctx context.Context) {
			cp, err := c.Checkpoint(ctx)
			if err != nil && ctx.Err() == nil && !errors.Is(err, ErrInconsistent) {
				c.cfg.Logger.WarnContext(ctx, "audit checkpoint failed", slog.String("error", err.Error()))
			}
			if err == nil && cp.ID != last && c.cfg.After != nil {
				last = cp.ID
				c.cfg.After(ctx, cp)
			}
		})
	}()
}

// Close stops the background loop and waits for it.
func (c *Checkpointer) Close(ctx context.Context) error {
	c.once.Do(func() {
		if c.stop == nil {
			return
		}
		c.stop()
		select {
		case <-c.done:
		case <-ctx.Done():
		}
	})
	return nil
}

// Checkpoint issues a checkpoint of the log's current root if it grew since the last one
// (otherwise it returns the last one). The new root is proven consistent with the previous
// checkpoint first; if it is not, the incident is recorded and ErrInconsistent returned.
func (c *Checkpointer) Checkpoint(ctx context.Context) (Checkpoint, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Replicas on one database checkpoint one at a time: the second finds the first's
	// checkpoint and, the root unchanged, issues none (no two checkpoints of one root).
	conn, err := c.cfg.Pool.Acquire(ctx)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("audit checkpoint: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", checkpointLock); err != nil {
		return Checkpoint{}, fmt.Errorf("audit checkpoint: lock: %w", err)
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", checkpointLock) }()
	prev, err := LatestCheckpoint(ctx, c.cfg.Pool)
	havePrev := err == nil
	if err != nil && !errors.Is(err, ErrNoCheckpoint) {
		return Checkpoint{}, err
	}
	root, err := c.cfg.Log.LatestRoot(ctx)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("audit checkpoint: %w", err)
	}
	if havePrev && root.Size == prev.Size && root.Hash == prev.Root {
		return prev, nil
	}
	cp := Checkpoint{Size: root.Size, Root: root.Hash, KeyID: c.cfg.Signer.KeyID(), CreatedAt: c.cfg.Now().UTC()}
	if havePrev {
		cp.PrevSize = prev.Size
		if root.Size < prev.Size || (root.Size == prev.Size && root.Hash != prev.Root) {
			return Checkpoint{}, c.incident(ctx, fmt.Sprintf("log root (size %d, %x) does not extend checkpoint %d (size %d, %x)",
				root.Size, root.Hash, prev.ID, prev.Size, prev.Root))
		}
		p, err := c.cfg.Log.ConsistencyProof(ctx, prev.Size, root.Size)
		if err != nil {
			return Checkpoint{}, fmt.Errorf("audit checkpoint: %w", err)
		}
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, prev.Size, root.Size, p, prev.Root[:], root.Hash[:]); err != nil {
			return Checkpoint{}, c.incident(ctx, fmt.Sprintf("log root (size %d, %x) is not consistent with checkpoint %d (size %d, %x): %v",
				root.Size, root.Hash, prev.ID, prev.Size, prev.Root, err))
		}
		cp.ConsistencyProof = p
	}
	ns, err := newNoteSigner(ctx, c.cfg.Origin, c.cfg.Signer)
	if err != nil {
		return Checkpoint{}, err
	}
	signed, err := note.Sign(&note.Note{Text: CheckpointBody(c.cfg.Origin, root.Size, root.Hash)}, ns)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("audit checkpoint: sign: %w", err)
	}
	cp.Note = string(signed)
	err = c.cfg.Pool.QueryRow(ctx, `INSERT INTO audit_checkpoints (created_at, tree_size, root_hash, note, key_id, prev_size, consistency_proof)
		VALUES ($1,$2,$3,$4,$5,$6,$7) RETURNING id`, cp.CreatedAt, int64(cp.Size), cp.Root[:], cp.Note, cp.KeyID,
		nullSize(havePrev, cp.PrevSize), bytes.Join(cp.ConsistencyProof, nil)).Scan(&cp.ID)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("audit checkpoint: store: %w", err)
	}
	return cp, nil
}

// checkpointLock is the PostgreSQL advisory lock that serializes checkpoints across the
// replicas of one database (next to sequencerLock).
const checkpointLock = 7466102

func nullSize(ok bool, v uint64) any {
	if !ok {
		return nil
	}
	return int64(v)
}

// incident records an inconsistency loudly: an incident row (readiness turns red), an audit
// event, and an error log line. It returns ErrInconsistent with the detail.
func (c *Checkpointer) incident(ctx context.Context, detail string) error {
	c.cfg.Logger.ErrorContext(ctx, "AUDIT LOG INCONSISTENT", slog.String("detail", detail))
	err := pgx.BeginFunc(ctx, c.cfg.Pool, func(tx pgx.Tx) error {
		// One open incident at a time: the checkpointer retries every interval and would
		// otherwise record the same inconsistency again and again.
		tag, err := tx.Exec(ctx, `INSERT INTO audit_incidents (at, kind, detail) SELECT $1, 'log_inconsistent', $2
			WHERE NOT EXISTS (SELECT 1 FROM audit_incidents WHERE kind = 'log_inconsistent' AND resolved_at IS NULL)`, c.cfg.Now(), detail)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		_, err = c.cfg.Recorder.Record(ctx, tx, audit.Event{
			Time: c.cfg.Now(), Actor: audit.Actor{Kind: audit.ActorService, ID: "audit.checkpointer", AuthMethod: "internal"},
			Action: "audit.log.inconsistent", Object: audit.Object{Type: "audit_log", ID: c.cfg.Origin},
			Outcome: audit.OutcomeFailure, Reason: "log_inconsistent", Payload: map[string]string{"detail": detail},
		})
		return err
	})
	if err != nil {
		c.cfg.Logger.ErrorContext(ctx, "could not record audit log incident", slog.String("error", err.Error()))
	}
	return fmt.Errorf("%w: %s", ErrInconsistent, detail)
}

// LatestCheckpoint returns the latest stored checkpoint, or ErrNoCheckpoint.
func LatestCheckpoint(ctx context.Context, q querier) (Checkpoint, error) {
	cps, err := loadCheckpoints(ctx, q, "ORDER BY id DESC LIMIT 1")
	if err != nil {
		return Checkpoint{}, err
	}
	if len(cps) == 0 {
		return Checkpoint{}, ErrNoCheckpoint
	}
	return cps[0], nil
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func loadCheckpoints(ctx context.Context, q querier, tail string) ([]Checkpoint, error) {
	rows, err := q.Query(ctx, `SELECT id, created_at, tree_size, root_hash, note, key_id, coalesce(prev_size, 0), consistency_proof
		FROM audit_checkpoints `+tail)
	if err != nil {
		return nil, fmt.Errorf("load checkpoints: %w", err)
	}
	cps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Checkpoint, error) {
		var cp Checkpoint
		var size, prev int64
		var root, pf []byte
		if err := r.Scan(&cp.ID, &cp.CreatedAt, &size, &root, &cp.Note, &cp.KeyID, &prev, &pf); err != nil {
			return cp, err
		}
		cp.Size, cp.PrevSize = uint64(size), uint64(prev)
		copy(cp.Root[:], root)
		cp.ConsistencyProof = splitHashes(pf)
		return cp, nil
	})
	if err != nil {
		return nil, fmt.Errorf("load checkpoints: %w", err)
	}
	return cps, nil
}

func splitHashes(b []byte) [][]byte {
	var out [][]byte
	for len(b) >= leaf.HashSize {
		out = append(out, b[:leaf.HashSize])
		b = b[leaf.HashSize:]
	}
	return out
}

// UnresolvedIncidents counts incidents of the audit chain not yet resolved.
func UnresolvedIncidents(ctx context.Context, q querier) (int64, error) {
	var n int64
	if err := q.QueryRow(ctx, "SELECT count(*) FROM audit_incidents WHERE resolved_at IS NULL").Scan(&n); err != nil {
		return 0, fmt.Errorf("count audit incidents: %w", err)
	}
	return n, nil
}
