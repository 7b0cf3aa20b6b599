// Package pglisten is a process's one PostgreSQL LISTEN connection, shared by every component
// that follows notifications (device cache invalidation, policy changes, the hub relay, the
// rules inbox).
//
// PostgreSQL wakes every backend of the database that listens on any channel at each commit
// that sent a notification, whatever the channel (each backend then reads the queue and
// discards what it does not listen to): the cost of a notifying commit grows with the
// listening connections, so a replica holds one for all its channels, not one per component.
//
// The connection and its reconnection are github.com/jackc/pgxlisten's; this package adds
// handlers per component (several on one channel), a callback each time LISTEN takes effect
// (on the first connection and after every reconnection: whatever was announced meanwhile was
// missed, so caches are dropped and state is read again), exponential backoff, and handlers
// added while it runs.
package pglisten

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgxlisten"
)

// Backoff bounds: the first reconnection waits MinBackoff, each failed one twice as long as
// the one before, up to MaxBackoff; a connection on which LISTEN took effect starts again at
// MinBackoff.
const (
	MinBackoff = 100 * time.Millisecond
	MaxBackoff = 10 * time.Second
)

// Handler is one component's side of a channel. Both functions are called on the listener's
// goroutine, one at a time: they must return quickly (anything that queries the database is
// handed to the component's own goroutine), and must never block on the listener.
type Handler struct {
	// Notify receives the payload of each notification on the channel. Optional.
	Notify func(payload string)
	// Listening is called each time LISTEN has taken effect on every channel of the
	// connection: once connected and after every reconnection. A notification sent before
	// it may have been missed (caches are dropped, state read again, backlogs drained);
	// every one committed after it is delivered to Notify. Optional.
	Listening func()
}

// Listener holds one connection LISTENing on the channels of its handlers and dispatches
// their notifications. Build it with New, add handlers with Handle, then Run it.
type Listener struct {
	cfg *pgx.ConnConfig
	log *slog.Logger

	mu       sync.Mutex
	handlers map[string][]Handler // by channel, in the order added
	order    []string             // channels in the order first added
	added    chan struct{}        // closed when the first handler is added
	running  bool
	conn     *pgx.Conn // the current connection (Run's), to drop it when a channel is added
	stale    bool      // a channel was added since the current connection listened

	// Owned by Run's goroutine.
	pl       pgxlisten.Listener
	channels map[string]bool // the channels registered with pl
	backoff  time.Duration
	retry    bool // the next connection is a reconnection (it waits backoff)
	listened int  // channels whose LISTEN took effect on the current connection
	want     int  // channels to LISTEN on the current connection

	connects atomic.Int64
}

// New returns a listener connecting as pool does (a connection of its own, outside the pool:
// a pooled connection must not stay LISTENing). log receives the lost connections; nil is
// slog.Default().
func New(pool *pgxpool.Pool, log *slog.Logger) *Listener {
	if log == nil {
		log = slog.Default()
	}
	return &Listener{cfg: pool.Config().ConnConfig.Copy(), log: log, handlers: map[string][]Handler{}, added: make(chan struct{})}
}

// Handle adds h for the notifications on channel. Handlers are best added before Run: one
// added while Run is connected makes it reconnect at once, so that LISTEN takes effect for it
// (every handler's Listening is called again).
func (l *Listener) Handle(channel string, h Handler) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.handlers) == 0 {
		close(l.added)
	}
	if _, ok := l.handlers[channel]; !ok {
		l.order = append(l.order, channel)
	}
	l.handlers[channel] = append(l.handlers[channel], h)
	if l.running {
		l.stale = true
		if l.conn != nil {
			// pgx connections are not safe for concurrent use, but closing the socket under
			// one is: the wait for notifications fails and Run reconnects at once.
			_ = l.conn.PgConn().Conn().Close()
		}
	}
}

// Connections returns how many connections Run has opened so far.
func (l *Listener) Connections() int64 { return l.connects.Load() }

// Run listens and dispatches until ctx ends, reconnecting with backoff whenever the
// connection is lost. It returns nil when ctx ends; an error only if it is already running.
// Without any handler it waits for the first.
func (l *Listener) Run(ctx context.Context) error {
	l.mu.Lock()
	if l.running {
		l.mu.Unlock()
		return errors.New("pglisten: Run called twice")
	}
	l.running = true
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.running, l.conn = false, nil
		l.mu.Unlock()
	}()
	select {
	case <-ctx.Done():
		return nil
	case <-l.added:
	}
	l.pl = pgxlisten.Listener{
		Connect:        l.connect,
		LogError:       l.logError,
		ReconnectDelay: -1, // connect waits the backoff itself
	}
	l.channels = map[string]bool{}
	l.backoff = MinBackoff
	l.register()
	_ = l.pl.Listen(ctx) // returns when ctx ends
	return nil
}

// register gives pgxlisten the channels added since the last connection (on Run's
// goroutine, before pgxlisten reads its handlers for the next connection).
func (l *Listener) register() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ch := range l.order {
		if !l.channels[ch] {
			l.channels[ch] = true
			l.pl.Handle(ch, dispatch{l: l, channel: ch})
		}
	}
	l.want, l.listened, l.stale = len(l.channels), 0, false
}

// connect is pgxlisten's Connect: it waits the backoff after a lost connection (not after
// one dropped to add a channel), registers new channels and connects.
func (l *Listener) connect(ctx context.Context) (*pgx.Conn, error) {
	l.mu.Lock()
	l.conn = nil
	stale := l.stale
	l.mu.Unlock()
	if l.retry && !stale {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(l.backoff):
		}
		l.backoff = min(2*l.backoff, MaxBackoff)
	}
	l.retry = true
	l.register()
	conn, err := pgx.ConnectConfig(ctx, l.cfg.Copy())
	if err != nil {
		return nil, err
	}
	l.connects.Add(1)
	l.mu.Lock()
	l.conn = conn
	if l.stale { // a channel added while connecting: listen again at once
		_ = conn.PgConn().Conn().Close()
	}
	l.mu.Unlock()
	return conn, nil
}

func (l *Listener) logError(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return
	}
	l.mu.Lock()
	stale := l.stale
	l.mu.Unlock()
	if stale {
		return // dropped on purpose to listen on a new channel
	}
	l.log.WarnContext(ctx, "pglisten: notification listener lost its connection; reconnecting",
		slog.String("error", err.Error()), slog.Duration("backoff", l.backoff))
}

// dispatch is the pgxlisten handler of one channel: it calls the channel's handlers, and once
// LISTEN took effect on every channel of the connection, every handler's Listening.
type dispatch struct {
	l       *Listener
	channel string
}

func (d dispatch) HandleNotification(_ context.Context, n *pgconn.Notification, _ *pgx.Conn) error {
	d.l.mu.Lock()
	hs := d.l.handlers[d.channel]
	d.l.mu.Unlock()
	for _, h := range hs {
		if h.Notify != nil {
			h.Notify(n.Payload)
		}
	}
	return nil
}

// HandleBacklog is called by pgxlisten right after the LISTEN of the channel.
func (d dispatch) HandleBacklog(context.Context, string, *pgx.Conn) error {
	l := d.l
	if l.listened++; l.listened != l.want {
		return nil
	}
	l.backoff = MinBackoff
	l.mu.Lock()
	var calls []func()
	for _, ch := range l.order {
		if !l.channels[ch] {
			continue
		}
		for _, h := range l.handlers[ch] {
			if h.Listening != nil {
				calls = append(calls, h.Listening)
			}
		}
	}
	l.mu.Unlock()
	for _, f := range calls {
		f()
	}
	return nil
}

// String names the listener's channels (logs, tests).
func (l *Listener) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprintf("pglisten%v", l.order)
}
