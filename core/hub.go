package core

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/core/alarms"
)

// HubConfig configures a Hub. Zero values take the documented defaults.
type HubConfig struct {
	// Buffer is the most events queued for one subscriber. A subscriber that falls this far
	// behind is disconnected (its channel closed, Dropped() true) rather than slowing the
	// publisher or silently missing events: an SSE client reconnects and reloads state. The
	// queue is allocated as it fills (a subscriber that keeps up holds a channel of at most 16
	// events), so the bound costs memory only for subscribers that are really behind.
	// Default 1024.
	Buffer int
	// Replay is how many recent events the Hub keeps so that a reconnecting stream resumes
	// after its Last-Event-ID without a gap (SubscribeAfter). Default 4096.
	Replay int
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Event is one notification. Data is JSON; it may hold PHI (alarm messages), so it is sent
// only to authorized streams and never logged.
type Event struct {
	ID        uint64          `json:"id"`   // increasing; starts at the Hub's creation time in µs, so ids grow across restarts
	Type      string          `json:"type"` // e.g. "alarm.opened", "alarm.acknowledged"
	PatientID uuid.UUID       `json:"patient_id"`
	At        time.Time       `json:"at"`
	Data      json.RawMessage `json:"data"`
	// Body, when set, is what a webhook delivery of the event posts instead of the event as
	// JSON (EnqueueWebhooks): a FHIR notification Bundle. The hub never uses it.
	Body json.RawMessage `json:"-"`

	// live: a high-volume event (TypeObservations) delivered only to subscribers that ask for
	// its type explicitly, and never kept for replay (it would push alarms out of the buffer).
	live bool
	// remote: published by another replica (hub_replicas.go).
	remote bool
	// enc: the event's JSON encoding, made once for every subscriber that receives it (JSON).
	enc *eventEncoding
}

type eventEncoding struct {
	once sync.Once
	b    []byte
	err  error
}

// JSON returns the event's JSON encoding. For an event received from a subscription it is
// encoded once, on first use, and the same bytes are shared by every subscriber that
// receives the event: the caller MUST NOT modify them.
func (ev Event) JSON() ([]byte, error) {
	if ev.enc == nil {
		return json.Marshal(ev)
	}
	ev.enc.once.Do(func() {
		e := ev
		e.enc = nil
		ev.enc.b, ev.enc.err = json.Marshal(e)
	})
	return ev.enc.b, ev.enc.err
}

// TypeObservations is the event type of newly stored observations (live charts). Only
// subscribers whose Filter.Types names it receive it; it is not replayed after a reconnect.
const TypeObservations = "observations"

func (f Filter) matchLive(ev *Event) bool {
	return f.Types[ev.Type] && (f.Patients == nil || f.Patients[ev.PatientID]) && !(f.Local && ev.remote)
}

// Wants reports whether some subscriber would receive a live event of typ for patient, so
// that the publisher can skip building it.
func (h *Hub) Wants(typ string, patient uuid.UUID) bool { return h.wants(typ, patient, false) }

// wants is Wants for an event published here (remote false) or by another replica (remote
// true: subscribers that take only local events, Filter.Local, do not want it).
func (h *Hub) wants(typ string, patient uuid.UUID, remote bool) bool {
	ev := Event{Type: typ, PatientID: patient, remote: remote}
	h.mu.RLock()
	defer h.mu.RUnlock()
	for s := range h.byPatient[patient] {
		if s.filter.matchLive(&ev) {
			return true
		}
	}
	for s := range h.anyPatient {
		if s.filter.matchLive(&ev) {
			return true
		}
	}
	return false
}

// Filter selects the events a subscriber receives. Zero fields select everything.
type Filter struct {
	Patients map[uuid.UUID]bool // only these patients (the caller's care team, say); not changed once subscribed (the hub indexes it)
	Types    map[string]bool    // only these event types
	// Local: only events published by this process, not those of the other replicas that
	// reach it through the database (the webhook feed: each event enqueued once).
	Local bool
}

func (f Filter) match(ev *Event) bool {
	if f.Local && ev.remote {
		return false
	}
	if f.Patients != nil && !f.Patients[ev.PatientID] {
		return false
	}
	if f.Types != nil && !f.Types[ev.Type] {
		return false
	}
	return true
}

// Hub fans notifications out to in-process subscribers (SSE streams, the webhook
// dispatcher). Publish never blocks. It satisfies alarms.Notifier.
type Hub struct {
	cfg  HubConfig
	seq  atomic.Uint64
	mu   sync.RWMutex
	subs map[*Subscription]struct{}
	// The subscriptions indexed by the patients they follow (Filter.Patients), and those
	// following every patient: an event is matched only against the subscribers that may
	// want it, not against every stream of the server.
	byPatient  map[uuid.UUID]map[*Subscription]struct{}
	anyPatient map[*Subscription]struct{}
	ring       []Event // the last cfg.Replay events, oldest first once full
	head       int
	closed     bool
	pumps      sync.WaitGroup             // the subscriptions' pump goroutines
	active     map[*Subscription]struct{} // subscriptions whose pump runs (also dropped ones)
	relay      atomic.Pointer[HubRelay]   // with several replicas: events go through the database
}

// chanQueue is the capacity of a subscription's channel; events beyond it wait in the
// subscription's backlog, allocated only while there are some.
const chanQueue = 16

// Subscription is one subscriber. Read events from C until it is closed (by Close, by the
// Hub's Close, or because the subscriber fell behind: Dropped reports that).
//
// Events are queued in C's small buffer and, when the subscriber is behind, in a backlog
// that grows on demand up to the subscription's limit; a pump goroutine, running only while
// the backlog is not empty, moves them into C in order.
type Subscription struct {
	C <-chan Event
	// Urgent receives (at most one pending signal) when an event other than a live one
	// (TypeObservations) is queued: a reader that stops reading C for a moment to write live
	// events together waits on it too, and writes such events at once.
	Urgent  <-chan struct{}
	urgent  chan struct{}
	c       chan Event
	hub     *Hub
	filter  Filter
	dropped atomic.Bool

	// Guarded by hub.mu.
	limit   int           // most events queued (in c and backlog) before the subscriber is dropped
	backlog []Event       // events behind a full c, oldest first
	pumping bool          // a pump goroutine is moving backlog into c; it closes c if closed meanwhile
	closed  bool          // no more events are queued (closed, or dropped: the backlog is still delivered)
	stopped bool          // closed by Close or the Hub's Close: the backlog is discarded
	done    chan struct{} // closed when stopped: wakes the pump
	pumped  chan struct{} // closed when the last pump goroutine has returned
}

// newSub returns a subscription with filter f that queues at most limit events; h.mu held.
func (h *Hub) newSub(f Filter, limit int) *Subscription {
	c := make(chan Event, min(chanQueue, limit))
	u := make(chan struct{}, 1)
	return &Subscription{C: c, c: c, Urgent: u, urgent: u, hub: h, filter: f, limit: limit, done: make(chan struct{})}
}

// enqueue queues ev, without blocking; false when the subscriber is limit events behind.
// h.mu held.
func (s *Subscription) enqueue(ev Event) bool {
	if !ev.live {
		defer func() {
			select {
			case s.urgent <- struct{}{}:
			default:
			}
		}()
	}
	if !s.pumping {
		select {
		case s.c <- ev:
			return true
		default:
		}
	}
	if len(s.c)+len(s.backlog) >= s.limit {
		return false
	}
	s.backlog = append(s.backlog, ev)
	if !s.pumping {
		s.pumping = true
		s.pumped = make(chan struct{})
		s.hub.active[s] = struct{}{}
		s.hub.pumps.Add(1)
		go s.pump(s.pumped)
	}
	return true
}

// pump moves the backlog into c, oldest first, until the backlog is empty or the
// subscription is stopped; it closes c when the subscription is closed by then.
func (s *Subscription) pump(pumped chan struct{}) {
	h := s.hub
	defer h.pumps.Done()
	defer close(pumped)
	for {
		h.mu.Lock()
		if s.stopped || len(s.backlog) == 0 {
			if s.closed {
				close(s.c)
			}
			s.pumping, s.backlog = false, nil
			delete(h.active, s)
			h.mu.Unlock()
			return
		}
		ev := s.backlog[0]
		h.mu.Unlock()
		select {
		case s.c <- ev:
			h.mu.Lock()
			s.backlog[0] = Event{}
			s.backlog = s.backlog[1:]
			h.mu.Unlock()
		case <-s.done:
		}
	}
}

// NewHub returns a Hub.
func NewHub(cfg HubConfig) *Hub {
	if cfg.Buffer <= 0 {
		cfg.Buffer = 1024
	}
	if cfg.Replay <= 0 {
		cfg.Replay = 4096
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &Hub{cfg: cfg, subs: map[*Subscription]struct{}{}, active: map[*Subscription]struct{}{},
		byPatient: map[uuid.UUID]map[*Subscription]struct{}{}, anyPatient: map[*Subscription]struct{}{}}
	h.seq.Store(uint64(cfg.Now().UnixMicro()))
	return h
}

// SubscribeAfter is Subscribe for a stream resuming after event lastID (an SSE Last-Event-ID):
// the retained events after lastID that match f are queued first, with no gap before live
// ones. complete is false when events after lastID may have been lost (too old for the replay
// buffer, or from another process lifetime): the client must reload its state.
func (h *Hub) SubscribeAfter(f Filter, lastID uint64) (sub *Subscription, complete bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.newSub(f, h.cfg.Buffer+h.cfg.Replay)
	if h.closed {
		s.closeLocked(true)
		return s, false
	}
	h.add(s)
	last := h.seq.Load()
	old := h.retained()
	complete = lastID <= last && (len(old) > 0 && old[0].ID <= lastID+1 || len(old) == 0 && lastID == last)
	for _, ev := range old {
		if ev.ID > lastID && f.match(&ev) {
			s.enqueue(ev) // always room: the limit is above the replay buffer's size
		}
	}
	return s, complete
}

// add registers s, indexed by the patients it follows; h.mu held.
func (h *Hub) add(s *Subscription) {
	h.subs[s] = struct{}{}
	if s.filter.Patients == nil {
		h.anyPatient[s] = struct{}{}
		return
	}
	for p, ok := range s.filter.Patients {
		if !ok {
			continue
		}
		m := h.byPatient[p]
		if m == nil {
			m = map[*Subscription]struct{}{}
			h.byPatient[p] = m
		}
		m[s] = struct{}{}
	}
}

// remove unregisters s; h.mu held.
func (h *Hub) remove(s *Subscription) {
	if _, ok := h.subs[s]; !ok {
		return
	}
	delete(h.subs, s)
	if s.filter.Patients == nil {
		delete(h.anyPatient, s)
		return
	}
	for p := range s.filter.Patients {
		if m := h.byPatient[p]; m != nil {
			delete(m, s)
			if len(m) == 0 {
				delete(h.byPatient, p)
			}
		}
	}
}

// retained returns the replay buffer oldest first; h.mu held.
func (h *Hub) retained() []Event {
	if len(h.ring) < h.cfg.Replay {
		return h.ring
	}
	return append(append([]Event(nil), h.ring[h.head:]...), h.ring[:h.head]...)
}

// Subscribe returns a new subscription with filter f.
func (h *Hub) Subscribe(f Filter) *Subscription {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.newSub(f, h.cfg.Buffer)
	if h.closed {
		s.closeLocked(true)
		return s
	}
	h.add(s)
	return s
}

// Close ends the subscription, closes C and waits for its pump goroutine, if one runs.
// Safe to call more than once.
func (s *Subscription) Close() {
	s.hub.mu.Lock()
	s.closeLocked(true)
	pumped := s.pumped
	s.hub.mu.Unlock()
	if pumped != nil {
		<-pumped
	}
}

// closeLocked ends the subscription; hub.mu held. With stop (Close, the Hub's Close) what is
// still in the backlog is discarded; without (a subscriber dropped for being too slow) it is
// still delivered before C closes. C is closed here, or by the pump when one runs (it may be
// sending on C).
func (s *Subscription) closeLocked(stop bool) {
	if !s.closed {
		s.closed = true
		s.hub.remove(s)
		if !s.pumping {
			close(s.c)
			s.backlog = nil
		}
	}
	if stop && !s.stopped {
		s.stopped = true
		close(s.done)
	}
}

// Dropped reports whether the Hub disconnected the subscriber because it fell behind.
func (s *Subscription) Dropped() bool { return s.dropped.Load() }

// Publish assigns ev an id (and a time when zero) and queues it for every matching
// subscriber, without blocking. It returns the id.
//
// With a HubRelay (several replicas), an event other than live observations is appended to
// the database and delivered when read back, with the id it got there (the same on every
// replica); Publish then returns 0.
func (h *Hub) Publish(ev Event) uint64 {
	if ev.At.IsZero() {
		ev.At = h.cfg.Now()
	}
	if r := h.relay.Load(); r != nil && ev.Type != TypeObservations {
		r.send(ev)
		return 0
	}
	return h.deliver(ev, 0, false)
}

// deliver queues ev for the matching subscribers under id (0: the next local id; with a
// relay, a live event takes the last id, after which a resumed stream continues). An event
// whose id is not above the last one delivered is a repeat and ignored.
func (h *Hub) deliver(ev Event, id uint64, remote bool) uint64 {
	var slow []*Subscription
	h.mu.Lock()
	switch {
	case id != 0 && id <= h.seq.Load():
		h.mu.Unlock()
		return 0
	case id != 0:
		h.seq.Store(id)
		ev.ID = id
	case h.relay.Load() != nil:
		ev.ID = h.seq.Load()
	default:
		ev.ID = h.seq.Add(1)
	}
	ev.remote = remote
	ev.live = ev.Type == TypeObservations
	if !ev.live {
		if len(h.ring) < h.cfg.Replay {
			h.ring = append(h.ring, ev)
		} else {
			h.ring[h.head] = ev
			h.head = (h.head + 1) % h.cfg.Replay
		}
	}
	ev.enc = &eventEncoding{}
	offer := func(s *Subscription) {
		if ev.live && !s.filter.matchLive(&ev) || !ev.live && !s.filter.match(&ev) {
			return
		}
		if !s.enqueue(ev) {
			slow = append(slow, s)
		}
	}
	for s := range h.byPatient[ev.PatientID] {
		offer(s)
	}
	for s := range h.anyPatient {
		offer(s)
	}
	for _, s := range slow {
		s.dropped.Store(true)
		s.closeLocked(false)
	}
	h.mu.Unlock()
	return ev.ID
}

// Subscribers returns the number of live subscriptions.
func (h *Hub) Subscribers() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.subs)
}

// Close disconnects every subscriber and waits for their pump goroutines; later
// subscriptions are closed at once.
func (h *Hub) Close() {
	h.mu.Lock()
	h.closed = true
	for s := range h.subs {
		s.closeLocked(true)
	}
	for s := range h.active { // dropped subscriptions still delivering their backlog
		s.closeLocked(true)
	}
	h.mu.Unlock()
	h.pumps.Wait()
}

// AlarmTransition publishes a committed alarm transition as event "alarm.<kind>" (it makes
// the Hub an alarms.Notifier).
func (h *Hub) AlarmTransition(_ context.Context, t alarms.Transition) {
	data, err := json.Marshal(t)
	if err != nil {
		data, _ = json.Marshal(map[string]any{"alarm_id": t.Alarm.ID, "kind": t.Kind})
	}
	h.Publish(Event{Type: "alarm." + string(t.Kind), PatientID: t.Alarm.PatientID, At: t.At, Data: data})
}

var _ alarms.Notifier = (*Hub)(nil)
