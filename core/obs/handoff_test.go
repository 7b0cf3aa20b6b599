package obs_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/core/obs"
	"github.com/vigilhealth/vigil/internal/testclock"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// batch is one patient's observation number i.
func batch(p uuid.UUID, i int) obs.Committed {
	return obs.Committed{PatientID: p, Observations: []obs.Observation{{PatientID: p, Code: "8867-4", Value: float64(i),
		Unit: "/min", EffectiveAt: testclock.T0.Add(time.Duration(i) * time.Second)}}}
}

// consumer keeps what it was given, per patient.
type consumer struct {
	mu  sync.Mutex
	got map[uuid.UUID][]float64
}

func (c *consumer) consume(_ context.Context, b obs.Committed) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.got == nil {
		c.got = map[uuid.UUID][]float64{}
	}
	for _, o := range b.Observations {
		c.got[b.PatientID] = append(c.got[b.PatientID], o.Value)
	}
	return nil
}

// A full queue makes Submit wait — it never drops a committed observation — and whatever
// waited is consumed once the consumer runs, each patient's batches in the order submitted.
// Verifies: REQ-CORE-017
func TestHandoffNeverDropsAndKeepsPatientOrder(t *testing.T) {
	t.Parallel()
	h := obs.NewHandoff(obs.HandoffConfig{Shards: 2, Capacity: 3, Logger: quiet})
	patients := []uuid.UUID{uuid.New(), uuid.New(), uuid.New()}
	ctx := context.Background()
	// No consumer yet: fill the queue until a submission has to wait.
	n := 0
	for {
		p := patients[n%len(patients)]
		cctx, cancel := context.WithCancel(ctx)
		cancel() // a submission that would have to wait gives up at once
		if err := h.Submit(cctx, batch(p, n)); err != nil {
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Submit(full) = %v, want context.Canceled", err)
			}
			break
		}
		n++
		if n > 100 {
			t.Fatal("Submit never waited with Capacity 3")
		}
	}
	if st := h.Stats(); st.Waited == 0 || st.Queued != n || st.Submitted != int64(n) {
		t.Fatalf("Stats() after filling = %+v, want Waited > 0, Queued = Submitted = %d", st, n)
	}
	// A producer that must wait blocks until the consumer makes room.
	var c consumer
	submitted := make(chan error, 1)
	go func() { submitted <- h.Submit(ctx, batch(patients[n%len(patients)], n)) }()
	if err := h.Start(c.consume); err != nil {
		t.Fatal(err)
	}
	if err := <-submitted; err != nil {
		t.Fatalf("Submit(waiting) = %v, want nil once the consumer runs", err)
	}
	n++
	if err := h.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, p := range patients {
		vs := c.got[p]
		total += len(vs)
		for i := 1; i < len(vs); i++ {
			if vs[i] <= vs[i-1] {
				t.Errorf("patient %s consumed %v, want submission order", p, vs)
				break
			}
		}
	}
	if total != n {
		t.Errorf("consumed %d batches, want every one of the %d submitted", total, n)
	}
	if st := h.Stats(); st.Consumed != int64(n) || st.Queued != 0 || st.Failed != 0 {
		t.Errorf("Stats() = %+v, want %d consumed, none queued or failed", st, n)
	}
}

// A failed consumption is retried once; a second failure is counted, and the next batch is
// consumed as usual. Stop consumes what is queued; what is submitted after it waits for the
// next Start.
// Verifies: REQ-CORE-014, REQ-CORE-017
func TestHandoffRetryStopAndRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := obs.NewHandoff(obs.HandoffConfig{Logger: quiet})
	p := uuid.New()
	var mu sync.Mutex
	calls := 0
	fail := func(context.Context, obs.Committed) error { // fail, fail, succeed, fail, fail, …
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls%3 != 0 {
			return errors.New("engine down")
		}
		return nil
	}
	if err := h.Start(fail); err != nil {
		t.Fatal(err)
	}
	if err := h.Start(fail); !errors.Is(err, obs.ErrStarted) {
		t.Errorf("Start(twice) = %v, want ErrStarted", err)
	}
	if err := h.Submit(ctx, batch(p, 1)); err != nil {
		t.Fatal(err)
	}
	if err := h.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if st := h.Stats(); calls != 2 || st.Retried != 1 || st.Failed != 1 {
		t.Errorf("after a failing consumer: %d calls, %+v; want 2 calls, 1 retried, 1 failed", calls, st)
	}
	if err := h.Submit(ctx, batch(p, 2)); err != nil {
		t.Fatal(err)
	}
	if err := h.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if st := h.Stats(); calls != 3 || st.Failed != 1 || st.Consumed != 2 {
		t.Errorf("after a retry that succeeds: %d calls, %+v; want 3 calls, 1 failed, 2 consumed", calls, st)
	}
	if err := h.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	// Submitted with no consumer: waits, and is consumed after the next Start.
	if err := h.Submit(ctx, batch(p, 3), obs.Committed{PatientID: p}); err != nil {
		t.Fatal(err)
	}
	if st := h.Stats(); st.Queued != 1 || st.Submitted != 3 {
		t.Errorf("Stats() while stopped = %+v, want 1 queued (the empty batch skipped), 3 submitted", st)
	}
	var c consumer
	if err := h.Start(c.consume); err != nil {
		t.Fatal(err)
	}
	if err := h.Stop(ctx); err != nil { // Stop consumes what is queued
		t.Fatal(err)
	}
	if got := c.got[p]; len(got) != 1 || got[0] != 3 {
		t.Errorf("consumed after restart = %v, want [3]", got)
	}
}
