package obs

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// HandoffConfig configures a Handoff. Zero values take the documented defaults.
type HandoffConfig struct {
	// Shards is how many batches are consumed at once. A patient's batches always go to the
	// same shard, so each patient's observations are consumed one batch at a time, in the
	// order they were submitted. Default 4.
	Shards int
	// Capacity is the most batches waiting in one shard. Submit blocks while the patient's
	// shard is full: committed observations are never dropped, the producer is slowed down
	// instead (and with it, through its own queue, the devices that upload). Default 1024.
	Capacity int
	// ConsumeTimeout bounds one consume call. Default 30 s.
	ConsumeTimeout time.Duration
	// Logger receives the batches that failed twice. Default slog.Default().
	Logger *slog.Logger
}

// Handoff is the bounded queue between the commit of observations and their evaluation by
// the rules engine. The producer (core, after the upload transaction commits) Submits each
// patient's new observations; the consumer (the rules engine) drains them through Start. A
// batch whose consumption fails is retried once; a second failure is logged and counted
// (the observations stay committed, and the engine rebuilds the patient's state from storage
// on its next evaluation). Nothing is ever dropped: when the consumer falls behind, Submit
// waits.
//
// Batches submitted while no consumer runs (before Start, between Stop and the next Start)
// wait in the queue.
type Handoff struct {
	cfg    HandoffConfig
	seed   maphash.Seed
	shards []*shard

	mu      sync.Mutex // guards consume, stop, wg use
	consume func(context.Context, Committed) error
	stop    chan struct{}
	wg      sync.WaitGroup

	submitted, consumed, retried, failed, waited atomic.Int64
}

type shard struct {
	mu sync.Mutex // serializes senders, so that sends keep their order
	ch chan item
}

// item is a batch, or a flush marker (done set).
type item struct {
	c    Committed
	done chan struct{}
}

// HandoffStats are counters since the Handoff was made.
type HandoffStats struct {
	Submitted int64 // batches submitted
	Consumed  int64 // batches consumed (successfully or not)
	Retried   int64 // batches whose first consumption failed
	Failed    int64 // batches whose consumption failed twice
	Waited    int64 // Submit calls that found a shard full and had to wait
	Queued    int   // batches waiting right now
}

// NewHandoff returns an empty Handoff with no consumer.
func NewHandoff(cfg HandoffConfig) *Handoff {
	if cfg.Shards <= 0 {
		cfg.Shards = 4
	}
	if cfg.Capacity <= 0 {
		cfg.Capacity = 1024
	}
	if cfg.ConsumeTimeout <= 0 {
		cfg.ConsumeTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	h := &Handoff{cfg: cfg, seed: maphash.MakeSeed()}
	for range cfg.Shards {
		h.shards = append(h.shards, &shard{ch: make(chan item, cfg.Capacity)})
	}
	return h
}

// Submit queues each batch on its patient's shard, in order, waiting while the shard is full.
// It returns ctx's error if ctx ends first (batches queued before that stay queued). Empty
// batches are skipped.
func (h *Handoff) Submit(ctx context.Context, batches ...Committed) error {
	for _, c := range batches {
		if len(c.Observations) == 0 {
			continue
		}
		if err := h.send(ctx, h.shardOf(c), item{c: c}); err != nil {
			return fmt.Errorf("hand off observations of patient %s: %w", c.PatientID, err)
		}
		h.submitted.Add(1)
	}
	return nil
}

func (h *Handoff) shardOf(c Committed) *shard {
	return h.shards[maphash.Comparable(h.seed, c.PatientID)%uint64(len(h.shards))]
}

func (h *Handoff) send(ctx context.Context, s *shard, it item) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case s.ch <- it:
		return nil
	default:
	}
	h.waited.Add(1)
	select {
	case s.ch <- it:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ErrStarted is returned by Start when a consumer already runs.
var ErrStarted = errors.New("handoff already has a consumer")

// Start runs consume on every batch, one goroutine per shard, until Stop. consume MUST be
// safe for concurrent use across patients and MUST be safe to call again with the same batch
// after it returned an error (it is retried once).
func (h *Handoff) Start(consume func(ctx context.Context, c Committed) error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.consume != nil {
		return ErrStarted
	}
	h.consume, h.stop = consume, make(chan struct{})
	for _, s := range h.shards {
		h.wg.Add(1)
		go h.run(s, h.stop)
	}
	return nil
}

// Stop consumes what is queued, then stops the consumer and waits for it (or for ctx).
// Batches submitted meanwhile or afterwards wait for the next Start.
func (h *Handoff) Stop(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.consume == nil {
		return nil
	}
	close(h.stop)
	done := make(chan struct{})
	go func() { h.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("stop observation hand-off: %w", ctx.Err())
	}
	h.consume = nil
	return nil
}

// Flush returns once every batch submitted before the call has been consumed (a running
// consumer is needed), or ctx ends.
func (h *Handoff) Flush(ctx context.Context) error {
	marks := make([]chan struct{}, len(h.shards))
	for i, s := range h.shards {
		marks[i] = make(chan struct{})
		if err := h.send(ctx, s, item{done: marks[i]}); err != nil {
			return fmt.Errorf("flush observation hand-off: %w", err)
		}
	}
	for _, m := range marks {
		select {
		case <-m:
		case <-ctx.Done():
			return fmt.Errorf("flush observation hand-off: %w", ctx.Err())
		}
	}
	return nil
}

// Stats returns the counters.
func (h *Handoff) Stats() HandoffStats {
	st := HandoffStats{Submitted: h.submitted.Load(), Consumed: h.consumed.Load(), Retried: h.retried.Load(),
		Failed: h.failed.Load(), Waited: h.waited.Load()}
	for _, s := range h.shards {
		st.Queued += len(s.ch)
	}
	return st
}

func (h *Handoff) run(s *shard, stop chan struct{}) {
	defer h.wg.Done()
	for {
		select {
		case it := <-s.ch:
			h.handle(it)
			continue
		default:
		}
		select {
		case it := <-s.ch:
			h.handle(it)
		case <-stop:
			for { // consume what is queued, then stop
				select {
				case it := <-s.ch:
					h.handle(it)
				default:
					return
				}
			}
		}
	}
}

func (h *Handoff) handle(it item) {
	if it.done != nil {
		close(it.done)
		return
	}
	defer h.consumed.Add(1)
	err := h.try(it.c)
	if err == nil {
		return
	}
	h.retried.Add(1)
	if err = h.try(it.c); err == nil {
		return
	}
	h.failed.Add(1)
	h.cfg.Logger.Error("rules failed on committed observations",
		slog.String("patient_id", it.c.PatientID.String()), slog.Int("observations", len(it.c.Observations)),
		slog.String("error", err.Error()))
}

func (h *Handoff) try(c Committed) error {
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.ConsumeTimeout)
	defer cancel()
	return h.consume(ctx, c)
}
