package devices

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/devices/envelope"
)

// Device statuses.
const (
	StatusActive         = "active"
	StatusSuspended      = "suspended"
	StatusDecommissioned = "decommissioned"
)

// deviceState is the in-memory view of one device used on the upload path: its status, its
// current key, its patient, its sequence numbers and its rate-limit buckets. The database is
// the authority: every commit re-checks status, key version and sequence in SQL, so a stale
// entry can never let an upload through that the database would refuse.
type deviceState struct {
	id         uuid.UUID
	status     string
	keyVersion uint64
	verifier   *envelope.Verifier // the current key, expanded once; nil when the device has no key yet
	patient    uuid.UUID          // uuid.Nil when unassigned
	assignedAt time.Time          // start of the current assignment (zero when unknown)
	prevUntil  time.Time          // end of the last assignment to another patient (zero: none)

	mu        sync.Mutex
	committed uint64 // highest sequence number known committed
	reserved  uint64 // highest sequence number admitted (committed or waiting for commit)

	lim *limiter // the device's rate buckets: kept across cache invalidations
}

// limiter is one device's token bucket (uploads) and sample quota.
type limiter struct {
	mu       sync.Mutex
	tokens   float64
	quota    float64
	refilled time.Time
}

// deviceCache holds deviceStates. Invalidate drops an entry at once (suspension, rotation,
// reassignment); a load racing with an invalidation is discarded (generation check). It
// holds at most max entries: a load into a full cache first drops an arbitrary entry (Go's
// map order), which the database gives back on that device's next upload — the database is
// the source of truth for status, key and sequence, so dropping an entry is never wrong,
// only a reload.
type deviceCache struct {
	mu  sync.RWMutex
	m   map[uuid.UUID]*deviceState
	max int
	gen atomic.Uint64

	limiters sync.Map // uuid.UUID → *limiter; never invalidated
}

func newDeviceCache(max int) *deviceCache {
	return &deviceCache{m: make(map[uuid.UUID]*deviceState), max: max}
}

func (c *deviceCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

func (c *deviceCache) invalidate(id uuid.UUID) {
	c.gen.Add(1)
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}

func (c *deviceCache) invalidateAll() {
	c.gen.Add(1)
	c.mu.Lock()
	clear(c.m)
	c.mu.Unlock()
}

// get returns the device's state, loading it from the database on a miss. A device that
// does not exist yields ErrUnknownDevice.
func (s *Service) device(ctx context.Context, id uuid.UUID) (*deviceState, error) {
	c := s.cache
	c.mu.RLock()
	d := c.m[id]
	c.mu.RUnlock()
	if d != nil {
		return d, nil
	}
	gen := c.gen.Load()
	d, err := s.loadDevice(ctx, id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur := c.m[id]; cur != nil {
		return cur, nil
	}
	if c.gen.Load() == gen {
		if len(c.m) >= c.max {
			for k := range c.m {
				delete(c.m, k)
				break
			}
		}
		c.m[id] = d
	}
	return d, nil
}

func (s *Service) loadDevice(ctx context.Context, id uuid.UUID) (*deviceState, error) {
	d := &deviceState{id: id}
	var (
		kv      int64
		lastSeq int64
		pub     []byte
		patient *uuid.UUID
		since   *time.Time
		prev    *time.Time
	)
	err := s.cfg.Pool.QueryRow(ctx, `SELECT d.status, d.key_version, d.last_seq, d.patient_id, k.public_key,
		(SELECT max(a.started_at) FROM devices_assignments a WHERE a.device_id = d.id AND a.ended_at IS NULL AND a.patient_id = d.patient_id),
		(SELECT max(a.ended_at) FROM devices_assignments a WHERE a.device_id = d.id AND a.patient_id IS NOT NULL AND a.patient_id IS DISTINCT FROM d.patient_id)
		FROM devices_devices d
		LEFT JOIN devices_keys k ON k.device_id = d.id AND k.version = d.key_version
		WHERE d.id = $1`, id).Scan(&d.status, &kv, &lastSeq, &patient, &pub, &since, &prev)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, reject(ErrUnknownDevice, "device %s is not registered", id)
	}
	if err != nil {
		return nil, fmt.Errorf("load device %s: %w", id, err)
	}
	d.keyVersion = uint64(kv)
	if len(pub) == ed25519.PublicKeySize {
		if d.verifier, err = envelope.NewVerifier(ed25519.PublicKey(pub)); err != nil {
			return nil, fmt.Errorf("load device %s key: %w", id, err)
		}
	}
	if patient != nil {
		d.patient = *patient
	}
	if since != nil {
		d.assignedAt = *since
	}
	if prev != nil {
		d.prevUntil = *prev
	}
	d.committed, d.reserved = uint64(lastSeq), uint64(lastSeq)
	if l, ok := s.cache.limiters.Load(id); ok {
		d.lim = l.(*limiter)
	} else {
		l, _ := s.cache.limiters.LoadOrStore(id, &limiter{tokens: float64(s.cfg.RateBurst), quota: s.cfg.SampleQuotaPerHour, refilled: s.cfg.Now()})
		d.lim = l.(*limiter)
	}
	return d, nil
}

// admit checks and takes rate-limit tokens and quota for an upload of n data points. It
// returns a *RejectError with RetryAfter when the device must slow down.
func (s *Service) admit(d *limiter, n int, now time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	el := now.Sub(d.refilled).Seconds()
	if el > 0 {
		d.refilled = now
		if s.cfg.RatePerSecond > 0 {
			d.tokens = math.Min(float64(s.cfg.RateBurst), d.tokens+el*s.cfg.RatePerSecond)
		}
		if s.cfg.SampleQuotaPerHour > 0 {
			d.quota = math.Min(s.cfg.SampleQuotaPerHour, d.quota+el*s.cfg.SampleQuotaPerHour/3600)
		}
	}
	if s.cfg.RatePerSecond > 0 && d.tokens < 1 {
		e := reject(ErrRateLimited, "more than %g uploads/s (burst %d)", s.cfg.RatePerSecond, s.cfg.RateBurst)
		e.RetryAfter = time.Duration((1 - d.tokens) / s.cfg.RatePerSecond * float64(time.Second))
		return e
	}
	if s.cfg.SampleQuotaPerHour > 0 && d.quota < float64(n) {
		e := reject(ErrQuotaExceeded, "more than %g samples per hour", s.cfg.SampleQuotaPerHour)
		need := float64(n) - d.quota
		if float64(n) > s.cfg.SampleQuotaPerHour {
			need = s.cfg.SampleQuotaPerHour // never fits: tell it to wait an hour
		}
		e.RetryAfter = time.Duration(need / (s.cfg.SampleQuotaPerHour / 3600) * float64(time.Second))
		return e
	}
	if s.cfg.RatePerSecond > 0 {
		d.tokens--
	}
	if s.cfg.SampleQuotaPerHour > 0 {
		d.quota -= float64(n)
	}
	return nil
}
