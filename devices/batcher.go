package devices

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/devices/envelope"
)

// pending is one admitted upload waiting for its group commit.
type pending struct {
	v            *Verified
	meta         Meta
	prepared     *core.Prepared // its samples, validated and normalized by core
	receivedAt   time.Time
	prevReserved uint64

	// Set by the committer before done is closed.
	receipt     envelope.Receipt
	receiptBody []byte
	receiptSig  []byte // set when the group's receipts were signed together
	err         error
	done        chan struct{}
}

// batcher runs the group commits: uploads are routed to one of cfg.Committers queues by
// device (so that one device's uploads commit in the order they were admitted), and each
// committer commits what its queue holds — up to BatchMaxUploads, waiting at most
// BatchMaxWait for more — in one transaction of its own: core stores the samples (Store),
// devices writes the sequence numbers and receipts, commit, the devices are answered, and the
// committed observations are handed to core.Publish (live stream, rules).
type batcher struct {
	s      *Service
	queues []chan *pending
	seed   maphash.Seed

	pmu     sync.Mutex
	byHash  map[[32]byte]*pending
	closing bool

	wg sync.WaitGroup
}

func newBatcher(s *Service) *batcher {
	b := &batcher{s: s, seed: maphash.MakeSeed(), byHash: make(map[[32]byte]*pending)}
	per := max(s.cfg.QueueLimit/s.cfg.Committers, 1)
	for i := 0; i < s.cfg.Committers; i++ {
		q := make(chan *pending, per)
		b.queues = append(b.queues, q)
		b.wg.Add(1)
		go b.run(q)
	}
	return b
}

func (b *batcher) enqueue(p *pending) error {
	q := b.queues[maphash.Comparable(b.seed, p.v.Device)%uint64(len(b.queues))]
	b.pmu.Lock()
	defer b.pmu.Unlock()
	if b.closing {
		return reject(ErrBackpressure, "ingestion is shutting down")
	}
	if _, dup := b.byHash[p.v.Hash]; dup {
		return reject(ErrReplay, "the same upload is being committed")
	}
	select {
	case q <- p:
		b.byHash[p.v.Hash] = p
		return nil
	default:
		e := reject(ErrBackpressure, "too many uploads waiting for commit")
		e.RetryAfter = time.Second
		return e
	}
}

func (b *batcher) forget(p *pending) {
	b.pmu.Lock()
	if b.byHash[p.v.Hash] == p {
		delete(b.byHash, p.v.Hash)
	}
	b.pmu.Unlock()
}

func (b *batcher) pendingCount() int {
	b.pmu.Lock()
	defer b.pmu.Unlock()
	return len(b.byHash)
}

// pendingFor returns the upload with this hash waiting for commit, if any.
func (b *batcher) pendingFor(h [32]byte) *pending {
	b.pmu.Lock()
	defer b.pmu.Unlock()
	return b.byHash[h]
}

func (b *batcher) close(ctx context.Context) error {
	b.pmu.Lock()
	if b.closing {
		b.pmu.Unlock()
		return nil
	}
	b.closing = true
	for _, q := range b.queues {
		close(q)
	}
	b.pmu.Unlock()
	done := make(chan struct{})
	go func() { b.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run is one committer.
func (b *batcher) run(q chan *pending) {
	defer b.wg.Done()
	cfg := &b.s.cfg
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	group := make([]*pending, 0, cfg.BatchMaxUploads)
	for first := range q {
		group = append(group[:0], first)
		timer.Reset(cfg.BatchMaxWait)
	collect:
		for len(group) < cfg.BatchMaxUploads {
			select {
			case p, ok := <-q:
				if !ok {
					break collect
				}
				group = append(group, p)
			case <-timer.C:
				break collect
			}
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		b.commit(group)
		clear(group)
	}
}

// commit stores a group in one transaction, answers its devices, then publishes the
// committed observations. When the transaction fails and the group has more than one upload,
// each upload is committed on its own, so that one bad upload (or a device suspended
// meanwhile) does not fail the others.
func (b *batcher) commit(group []*pending) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stored, err := b.commitGroup(ctx, group)
	if err != nil && len(group) > 1 {
		b.s.stats.fallbacks.Add(1)
		b.s.cfg.Logger.DebugContext(ctx, "group commit failed; committing one by one",
			slog.Int("uploads", len(group)), slog.String("error", err.Error()))
		for _, p := range group {
			stored, err := b.commitGroup(ctx, []*pending{p})
			b.finish(ctx, []*pending{p}, err)
			if err == nil {
				b.publish(stored)
			}
		}
		return
	}
	b.finish(ctx, group, err)
	if err == nil {
		b.publish(stored)
	}
}

// publish hands committed uploads to core (the live stream and the rules' hand-off), after
// their devices were answered: a receipt never waits for the rules. When the rules fall
// behind, Publish waits — a committed observation is never dropped — and holds this
// committer: its queue fills and new uploads are refused with ErrBackpressure until the
// rules catch up.
func (b *batcher) publish(stored []core.Stored) {
	t0 := time.Now()
	if err := b.s.cfg.Ingester.Publish(context.Background(), stored); err != nil {
		b.s.cfg.Logger.Error("devices: committed uploads not handed to the rules", slog.Int("uploads", len(stored)),
			slog.String("error", err.Error()))
	}
	b.s.stats.publishNanos.Add(int64(time.Since(t0)))
}

// finish publishes the outcome to the waiting callers and updates the device cache.
func (b *batcher) finish(ctx context.Context, group []*pending, err error) {
	if err != nil {
		err = b.explain(ctx, group[0], err)
	} else {
		b.s.stats.groups.Add(1)
		b.s.stats.accepted.Add(int64(len(group)))
	}
	for _, p := range group {
		d := p.v.state
		d.mu.Lock()
		if err == nil {
			d.committed = max(d.committed, p.v.Upload.Seq)
		} else if d.reserved == p.v.Upload.Seq {
			d.reserved = max(p.prevReserved, d.committed)
		}
		d.mu.Unlock()
		p.err = err
		b.forget(p)
	}
	bs, batch := b.s.cfg.ReceiptSigner.(batchSigner)
	if err != nil || !batch || len(group) < 2 {
		for _, p := range group {
			close(p.done)
		}
		return
	}
	// A signer that signs many messages in one call (Vault Transit: one round trip) signs the
	// group's receipts in chunks, in parallel, off the committer so that the next commit can
	// start.
	for start := 0; start < len(group); start += receiptChunk {
		chunk := append([]*pending(nil), group[start:min(start+receiptChunk, len(group))]...)
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			bodies := make([][]byte, len(chunk))
			for i, p := range chunk {
				bodies[i] = p.receiptBody
			}
			sigs, serr := bs.SignBatch(ctx, bodies)
			for i, p := range chunk {
				if serr == nil && len(sigs) == len(chunk) {
					p.receiptSig = sigs[i]
				} // else each caller signs its own receipt
				close(p.done)
			}
		}()
	}
}

// receiptChunk is how many receipts one SignBatch call signs.
const receiptChunk = 32

// batchSigner is implemented by receipt signers that sign many messages in one call
// (keys.BatchSigner).
type batchSigner interface {
	SignBatch(ctx context.Context, msgs [][]byte) ([][]byte, error)
}

// explain turns a failed single-upload commit into the rejection it stands for when the
// device's state in the database changed under the cache (suspended, rotated, sequence
// advanced by another server), and invalidates the cache entry.
func (b *batcher) explain(ctx context.Context, p *pending, err error) error {
	if !errors.Is(err, errStale) {
		return err
	}
	b.s.cache.invalidate(p.v.Device)
	d, lerr := b.s.loadDevice(ctx, p.v.Device)
	if lerr != nil {
		return lerr
	}
	switch {
	case d.status == StatusSuspended:
		return reject(ErrDeviceSuspended, "device %s is suspended", p.v.Device)
	case d.status == StatusDecommissioned:
		return reject(ErrDeviceDecommissioned, "device %s is decommissioned", p.v.Device)
	case d.keyVersion != p.v.Upload.KeyVersion:
		return reject(ErrUnknownKey, "key version %d was rotated out", p.v.Upload.KeyVersion)
	default:
		return reject(ErrReplay, "sequence number %d is not above the last accepted", p.v.Upload.Seq)
	}
}

// errStale: the database refused the device-state update (status, key or sequence changed).
var errStale = errors.New("device state changed since verification")

// commitGroup runs the group's transaction: core stores the samples, provenance and audit
// events (Store), then the group's device state is written — each device's sequence advanced
// (conditionally on status, key and sequence) and each upload's receipt body stored, in one
// round trip — and the transaction commits.
func (b *batcher) commitGroup(ctx context.Context, group []*pending) ([]core.Stored, error) {
	ps := make([]*core.Prepared, len(group))
	for i, p := range group {
		ps[i] = p.prepared
	}
	var stored []core.Stored
	t0 := time.Now()
	err := pgx.BeginFunc(ctx, b.s.cfg.Pool, func(tx pgx.Tx) error {
		var err error
		if stored, err = b.s.cfg.Ingester.Store(ctx, tx, ps); err != nil {
			return err
		}
		t1 := time.Now()
		err = b.writeDeviceState(ctx, tx, group, stored)
		b.s.stats.hookNanos.Add(int64(time.Since(t1)))
		return err
	})
	b.s.stats.commitNanos.Add(int64(time.Since(t0)))
	if err != nil {
		for _, p := range group {
			p.receiptBody = nil
		}
		return nil, err
	}
	return stored, nil
}

func (b *batcher) writeDeviceState(ctx context.Context, tx pgx.Tx, group []*pending, results []core.Stored) error {
	n := len(group)
	// Highest sequence per device (a device may have several uploads in one group).
	type adv struct {
		seq uint64
		kv  uint64
	}
	top := make(map[uuid.UUID]adv, n)
	hashes := make([][]byte, n)
	devs := make([]uuid.UUID, n)
	seqs := make([]int64, n)
	kvs := make([]int64, n)
	times := make([]time.Time, n)
	events := make([]uuid.UUID, n)
	transports := make([]string, n)
	receipts := make([][]byte, n)
	waves := make([][]byte, n)
	sigs := make([][]byte, n)
	signedAt := make([]time.Time, n)
	for i, p := range group {
		u := p.v.Upload
		if a, ok := top[p.v.Device]; !ok || u.Seq > a.seq {
			top[p.v.Device] = adv{u.Seq, u.KeyVersion}
		}
		p.receipt = envelope.Receipt{
			Type: envelope.TypeReceipt, Upload: p.v.Hash[:], Device: u.Device, Seq: u.Seq,
			ServerTime: p.receivedAt.UnixMilli(), AuditEvent: results[i].AuditEventID.String(),
		}
		rb, err := envelope.Canonical(&p.receipt)
		if err != nil {
			return fmt.Errorf("encode receipt: %w", err)
		}
		p.receiptBody = rb
		if len(u.Waveforms) > 0 {
			if waves[i], err = envelope.Canonical(u.Waveforms); err != nil {
				return fmt.Errorf("encode waveforms: %w", err)
			}
		}
		h := p.v.Hash
		hashes[i] = h[:]
		devs[i], seqs[i], kvs[i] = p.v.Device, int64(u.Seq), int64(u.KeyVersion)
		times[i], events[i], transports[i], receipts[i] = p.receivedAt, results[i].AuditEventID, p.meta.Transport, rb
		sigs[i], signedAt[i] = p.v.Sig, u.SentTime()
	}
	ids := make([]uuid.UUID, 0, len(top))
	tops := make([]int64, 0, len(top))
	tkvs := make([]int64, 0, len(top))
	for id, a := range top {
		ids = append(ids, id)
		tops = append(tops, int64(a.seq))
		tkvs = append(tkvs, int64(a.kv))
	}
	var bt pgx.Batch
	bt.Queue(`UPDATE devices_devices d SET last_seq = v.seq
		FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS v(id, seq, kv)
		WHERE d.id = v.id AND d.status = 'active' AND d.key_version = v.kv AND d.last_seq < v.seq`, ids, tops, tkvs)
	bt.Queue(`INSERT INTO devices_uploads (hash, device_id, seq, key_version, received_at, audit_event_id, transport, receipt, waveforms, signature, signed_at)
		SELECT * FROM unnest($1::bytea[], $2::uuid[], $3::bigint[], $4::bigint[], $5::timestamptz[], $6::uuid[], $7::text[], $8::bytea[], $9::bytea[], $10::bytea[], $11::timestamptz[])`,
		hashes, devs, seqs, kvs, times, events, transports, receipts, waves, sigs, signedAt)
	br := tx.SendBatch(ctx, &bt)
	tag, err := br.Exec()
	if err != nil {
		_ = br.Close()
		return fmt.Errorf("advance device sequences: %w", err)
	}
	if tag.RowsAffected() != int64(len(ids)) {
		_ = br.Close()
		return errStale
	}
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		if isUniqueViolation(err) {
			return errStale
		}
		return fmt.Errorf("store upload receipts: %w", err)
	}
	if err := br.Close(); err != nil {
		return fmt.Errorf("device state batch: %w", err)
	}
	return nil
}
