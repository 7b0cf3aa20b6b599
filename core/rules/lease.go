package rules

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Buckets is how many lease buckets the patients are hashed into (rules_leases has one row
// each). It is fixed: every replica of a database must hash alike.
const Buckets = 64

// BucketOf is the lease bucket of a patient: FNV-1a of its 16 bytes, modulo Buckets.
func BucketOf(patientID uuid.UUID) int {
	h := fnv.New64a()
	_, _ = h.Write(patientID[:])
	return int(h.Sum64() % Buckets)
}

// ErrNotOwner is the outcome of a write of a patient's rule state by a replica that does not
// hold the patient's bucket with the fencing token the state was loaded under: nothing was
// written; the owner evaluates the patient.
var ErrNotOwner = errors.New("rules: this replica does not own the patient's evaluation")

// LeaseConfig configures Leases. Zero values take the documented defaults.
type LeaseConfig struct {
	// Pool is the installation's database. Required.
	Pool *pgxpool.Pool
	// Replica names this process among the replicas; it must be unique while it runs.
	// Default: host name, process id and a random suffix.
	Replica string
	// TTL is how long a lease lasts without renewal: a replica that stops renewing loses its
	// buckets to the others after TTL (plus one Renew). Default 6 s.
	TTL time.Duration
	// Renew is how often leases are renewed and buckets rebalanced. Default TTL/3.
	Renew time.Duration
	// Logger reports renewal failures. Default slog.Default().
	Logger *slog.Logger
}

// Leases holds this replica's share of the lease buckets (rules_leases) and keeps it: every
// Renew it renews its leases, notes which were taken from it (it was too late), announces
// itself (rules_replicas), takes free or expired buckets up to its fair share
// (ceil(Buckets / live replicas)) and gives back what exceeds that share, so that a new
// replica gets work and a lost one's patients move within TTL + Renew. Times are the
// database's (now()), so replicas' clocks do not matter.
//
// Each bucket's token grows when it changes hands; an Engine with Config.Leases writes a
// patient's state only under a key-share lock on the lease row, with the owner and token the
// state was loaded under (the fencing check), so a replica that lost a bucket cannot write
// after the new owner has read.
type Leases struct {
	cfg LeaseConfig

	mu       sync.Mutex
	held     map[int]int64 // bucket → token
	acquired []func(ctx context.Context, buckets []int)
	lost     []func(buckets []int)
	released bool
}

// NewLeases prepares the leases of one replica; Run (or Step) takes them.
func NewLeases(cfg LeaseConfig) (*Leases, error) {
	if cfg.Pool == nil {
		return nil, errors.New("rules: LeaseConfig.Pool is required")
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 6 * time.Second
	}
	if cfg.Renew <= 0 {
		cfg.Renew = cfg.TTL / 3
	}
	if cfg.Replica == "" {
		host, _ := os.Hostname()
		var b [4]byte
		_, _ = rand.Read(b[:])
		cfg.Replica = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Leases{cfg: cfg, held: map[int]int64{}}, nil
}

// Replica is this replica's name.
func (l *Leases) Replica() string { return l.cfg.Replica }

// OnAcquire registers fn, called (in Step, synchronously) with the buckets just taken.
func (l *Leases) OnAcquire(fn func(ctx context.Context, buckets []int)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.acquired = append(l.acquired, fn)
}

// OnLose registers fn, called with the buckets this replica no longer holds.
func (l *Leases) OnLose(fn func(buckets []int)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lost = append(l.lost, fn)
}

// Token is the fencing token of the bucket held by this replica, or 0 when it is not held.
func (l *Leases) Token(bucket int) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held[bucket]
}

// Held returns the buckets held, in order.
func (l *Leases) Held() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]int, 0, len(l.held))
	for b := range l.held {
		out = append(out, b)
	}
	sort.Ints(out)
	return out
}

// FenceMany is Fence for several buckets at once (a transaction that writes many patients):
// it key-share-locks their lease rows, in bucket order, until tx ends and returns the token under
// which this replica holds each of them (a bucket held by another replica is absent). A
// patient's writes are allowed when its state was loaded under the returned token.
func (l *Leases) FenceMany(ctx context.Context, tx pgx.Tx, buckets []int) (map[int]int64, error) {
	rows, err := tx.Query(ctx, `SELECT bucket, token FROM rules_leases WHERE bucket = ANY($1) AND owner = $2 ORDER BY bucket FOR KEY SHARE`, buckets, l.cfg.Replica)
	if err != nil {
		return nil, fmt.Errorf("rules: fence buckets: %w", err)
	}
	defer rows.Close()
	out := make(map[int]int64, len(buckets))
	for rows.Next() {
		var b int
		var tok int64
		if err := rows.Scan(&b, &tok); err != nil {
			return nil, fmt.Errorf("rules: fence buckets: %w", err)
		}
		out[b] = tok
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("rules: fence buckets: %w", err)
	}
	return out, nil
}

// Fence checks, inside tx, that this replica still holds bucket with token, and locks the
// lease row FOR KEY SHARE until tx ends, so that no other replica takes the bucket (a change
// of its token, a key of the row: migration 00803) before tx commits, while the renewal of
// the lease (its expiry only) does not wait for tx, nor tx for it.
// ErrNotOwner when the bucket is held by another replica or under another token.
func (l *Leases) Fence(ctx context.Context, tx pgx.Tx, bucket int, token int64) error {
	if token == 0 {
		return ErrNotOwner
	}
	var owner string
	var got int64
	err := tx.QueryRow(ctx, `SELECT owner, token FROM rules_leases WHERE bucket=$1 FOR KEY SHARE`, bucket).Scan(&owner, &got)
	if err != nil {
		return fmt.Errorf("rules: fence bucket %d: %w", bucket, err)
	}
	if owner != l.cfg.Replica || got != token {
		// (The next Step notices the loss and tells the engine; the caller holds a
		// patient's lock here, so nothing is called back now.)
		return fmt.Errorf("%w (bucket %d held by %q under token %d, state loaded under %d)", ErrNotOwner, bucket, owner, got, token)
	}
	return nil
}

// Run keeps the leases until ctx ends, then gives them back (Release).
func (l *Leases) Run(ctx context.Context) {
	t := time.NewTicker(l.cfg.Renew)
	defer t.Stop()
	for {
		if err := l.Step(ctx); err != nil && ctx.Err() == nil {
			l.cfg.Logger.WarnContext(ctx, "rules leases: renewal failed", slog.String("error", err.Error()))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Step renews, announces, takes and gives back once (what Run does every Renew).
func (l *Leases) Step(ctx context.Context) error {
	l.mu.Lock()
	if l.released {
		l.mu.Unlock()
		return nil
	}
	l.mu.Unlock()
	ttl := l.cfg.TTL.Seconds()
	if _, err := l.cfg.Pool.Exec(ctx, `INSERT INTO rules_replicas (replica, started_at, seen_at) VALUES ($1, now(), now())
		ON CONFLICT (replica) DO UPDATE SET seen_at = now()`, l.cfg.Replica); err != nil {
		return fmt.Errorf("rules leases: announce: %w", err)
	}
	// Renew what is still ours; whatever is not was taken while this replica was late.
	rows, err := l.cfg.Pool.Query(ctx, `UPDATE rules_leases SET expires_at = now() + make_interval(secs => $2)
		WHERE owner = $1 RETURNING bucket, token`, l.cfg.Replica, ttl)
	if err != nil {
		return fmt.Errorf("rules leases: renew: %w", err)
	}
	renewed, err := collectLeases(rows)
	if err != nil {
		return fmt.Errorf("rules leases: renew: %w", err)
	}
	l.mu.Lock()
	var lost []int
	for b, tok := range l.held {
		if renewed[b] != tok {
			lost = append(lost, b)
			delete(l.held, b)
		}
	}
	l.mu.Unlock()
	l.notifyLost(lost)

	var live int
	if err := l.cfg.Pool.QueryRow(ctx, `SELECT count(*) FROM rules_replicas WHERE seen_at > now() - make_interval(secs => $1)`, ttl).Scan(&live); err != nil {
		return fmt.Errorf("rules leases: count replicas: %w", err)
	}
	live = max(live, 1)
	share := (Buckets + live - 1) / live
	held := len(renewed)
	switch {
	case held < share:
		rows, err := l.cfg.Pool.Query(ctx, `UPDATE rules_leases SET owner = $1, token = token + 1, expires_at = now() + make_interval(secs => $2)
			WHERE bucket IN (SELECT bucket FROM rules_leases WHERE owner = '' OR expires_at < now()
				ORDER BY bucket LIMIT $3 FOR UPDATE SKIP LOCKED)
			RETURNING bucket, token`, l.cfg.Replica, ttl, share-held)
		if err != nil {
			return fmt.Errorf("rules leases: take: %w", err)
		}
		got, err := collectLeases(rows)
		if err != nil {
			return fmt.Errorf("rules leases: take: %w", err)
		}
		if len(got) == 0 {
			break
		}
		var bs []int
		l.mu.Lock()
		for b, tok := range got {
			l.held[b] = tok
			bs = append(bs, b)
		}
		fns := append([]func(context.Context, []int){}, l.acquired...)
		l.mu.Unlock()
		sort.Ints(bs)
		l.cfg.Logger.InfoContext(ctx, "rules leases: buckets taken", slog.String("replica", l.cfg.Replica), slog.Int("buckets", len(bs)))
		for _, fn := range fns {
			fn(ctx, bs)
		}
	case held > share:
		// Give back the excess (the highest buckets) for a replica that has too few.
		bs := l.Held()
		return l.release(ctx, bs[share:])
	}
	return nil
}

// Release gives back every bucket (a replica that stops: the others take them at their next
// Renew, without waiting for the TTL) and stops taking new ones.
func (l *Leases) Release(ctx context.Context) error {
	l.mu.Lock()
	l.released = true
	l.mu.Unlock()
	err := l.release(ctx, l.Held())
	if _, derr := l.cfg.Pool.Exec(ctx, `DELETE FROM rules_replicas WHERE replica = $1`, l.cfg.Replica); derr != nil {
		err = errors.Join(err, fmt.Errorf("rules leases: leave: %w", derr))
	}
	return err
}

func (l *Leases) release(ctx context.Context, bs []int) error {
	if len(bs) == 0 {
		return nil
	}
	// Drop first: the engine stops writing under these tokens before anyone else can take them.
	l.mu.Lock()
	for _, b := range bs {
		delete(l.held, b)
	}
	l.mu.Unlock()
	l.notifyLost(bs)
	if _, err := l.cfg.Pool.Exec(ctx, `UPDATE rules_leases SET owner = '', expires_at = '-infinity'
		WHERE owner = $1 AND bucket = ANY($2)`, l.cfg.Replica, bs); err != nil {
		return fmt.Errorf("rules leases: release: %w", err)
	}
	return nil
}

func (l *Leases) notifyLost(bs []int) {
	if len(bs) == 0 {
		return
	}
	sort.Ints(bs)
	l.mu.Lock()
	fns := append([]func([]int){}, l.lost...)
	l.mu.Unlock()
	for _, fn := range fns {
		fn(bs)
	}
}

func collectLeases(rows pgx.Rows) (map[int]int64, error) {
	out := map[int]int64{}
	defer rows.Close()
	for rows.Next() {
		var b int
		var tok int64
		if err := rows.Scan(&b, &tok); err != nil {
			return nil, err
		}
		out[b] = tok
	}
	return out, rows.Err()
}
