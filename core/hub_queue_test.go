package core_test

import (
	"runtime"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/core"
)

// A subscription reserves no queue it does not use: a stream that keeps up (or resumes with
// nothing to replay) holds a channel of a few events, not Buffer (+ Replay) of them; the
// queue grows only while the subscriber is behind, still delivers everything in order up to
// the limit, and drops the subscriber past it. Closing leaves no goroutine behind.
// Verifies: REQ-FND-015
func TestHubQueuesAllocatedLazily(t *testing.T) {
	const buffer, replay = 1024, 4096
	h := core.NewHub(core.HubConfig{Buffer: buffer, Replay: replay})
	p := uuid.New()
	var ids []uint64
	for range 100 {
		ids = append(ids, h.Publish(core.Event{Type: "alarm.opened", PatientID: p}))
	}

	// Memory: 200 resumed streams with nothing to replay, like SSE clients reconnecting.
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	subs := make([]*core.Subscription, 0, 200)
	for range 200 {
		s, complete := h.SubscribeAfter(core.Filter{}, ids[len(ids)-1])
		if !complete {
			t.Fatal("SubscribeAfter(the last id) incomplete, want complete")
		}
		subs = append(subs, s)
	}
	runtime.ReadMemStats(&after)
	// Reserving Buffer+Replay events (96 bytes each) per stream would be about 98 MB.
	if got := after.TotalAlloc - before.TotalAlloc; got > 8<<20 {
		t.Errorf("200 idle resumed subscriptions allocated %d bytes, want < 8 MiB (queues allocated lazily)", got)
	}
	if c := cap(subs[0].C); c > 16 {
		t.Errorf("cap(SubscribeAfter(nothing to replay).C) = %d, want ≤ 16", c)
	}
	for _, s := range subs {
		s.Close()
	}
	if c := cap(h.Subscribe(core.Filter{}).C); c > 16 {
		t.Errorf("cap(Subscribe().C) = %d, want ≤ 16", c)
	}

	// Replay beyond the channel: all 99 events after the first, in order, then live ones.
	re, complete := h.SubscribeAfter(core.Filter{}, ids[0])
	if !complete {
		t.Fatal("SubscribeAfter(first id) incomplete, want complete")
	}
	live := h.Publish(core.Event{Type: "alarm.resolved", PatientID: p})
	want := append(append([]uint64(nil), ids[1:]...), live)
	for i, w := range want {
		if ev := <-re.C; ev.ID != w {
			t.Fatalf("resumed event %d = id %d, want %d", i, ev.ID, w)
		}
	}
	re.Close()

	// A subscriber that reads nothing is dropped after exactly Buffer events, all delivered.
	slow := h.Subscribe(core.Filter{})
	for range buffer + 1 {
		h.Publish(core.Event{Type: "alarm.opened", PatientID: p})
	}
	n := 0
	for range slow.C {
		n++
	}
	if !slow.Dropped() || n != buffer {
		t.Errorf("slow subscriber: dropped %v after %d events, want dropped after %d", slow.Dropped(), n, buffer)
	}

	// A subscriber behind (its pump running) when the hub closes: no goroutine is left.
	behind := h.Subscribe(core.Filter{})
	for range 100 {
		h.Publish(core.Event{Type: "alarm.opened", PatientID: p})
	}
	h.Close()
	for range behind.C {
	}
	// Close has waited for the pumps; one may still be returning from its last deferred call.
	buf := make([]byte, 1<<20)
	st := ""
	for i := 0; i < 1000; i++ {
		if st = string(buf[:runtime.Stack(buf, true)]); !strings.Contains(st, "(*Subscription).pump") {
			break
		}
		runtime.Gosched()
	}
	if strings.Contains(st, "(*Subscription).pump") {
		t.Errorf("a subscription's pump goroutine outlives the Hub's Close:\n%s", st)
	}
}
