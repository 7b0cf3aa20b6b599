// Package leader elects one process per database for the background passes that must run
// once per database, not once per replica (retention, among others): the leader is the
// process holding a PostgreSQL session advisory lock on a connection of its own. If the
// leader dies or loses its connection, the server releases the lock and another replica
// takes it at its next try.
package leader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Config configures an Elector. Zero values take the documented defaults.
type Config struct {
	// Pool is the installation's database; the elector opens one connection of its own
	// with the pool's settings. Required.
	Pool *pgxpool.Pool
	// Name of the leadership; the lock key is hashtext('vigil.leader:' || Name). Required.
	Name string
	// Interval is how often a follower tries to take the lock and the leader checks its
	// connection. Default 2 s.
	Interval time.Duration
	// Logger reports changes of leadership. Default slog.Default().
	Logger *slog.Logger
}

// Elector takes part in one leadership. Leader says whether this process leads now; a
// leader whose connection was lost stops leading at its next check (within Interval), and
// the database has already released its lock, so two leaders overlap by at most Interval.
// Passes run under leadership must therefore be safe if run twice at once (they are
// idempotent or locked); the leadership makes them run once, it does not fence them.
type Elector struct {
	cfg    Config
	leader atomic.Bool

	mu   sync.Mutex
	conn *pgx.Conn
}

// New prepares an Elector; Run (or Step) takes part.
func New(cfg Config) (*Elector, error) {
	if cfg.Pool == nil || cfg.Name == "" {
		return nil, errors.New("leader: Config.Pool and Config.Name are required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Elector{cfg: cfg}, nil
}

// Leader reports whether this process holds the leadership.
func (e *Elector) Leader() bool { return e.leader.Load() }

// Run takes part until ctx ends, then gives the leadership up (Close).
func (e *Elector) Run(ctx context.Context) {
	t := time.NewTicker(e.cfg.Interval)
	defer t.Stop()
	defer e.Close(context.WithoutCancel(ctx))
	for {
		if err := e.Step(ctx); err != nil && ctx.Err() == nil {
			e.cfg.Logger.WarnContext(ctx, "leader: "+e.cfg.Name, slog.String("error", err.Error()))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Step is one round of Run: a leader checks its connection, a follower tries the lock.
func (e *Elector) Step(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.conn == nil {
		conn, err := pgx.ConnectConfig(ctx, e.cfg.Pool.Config().ConnConfig.Copy())
		if err != nil {
			e.setLeader(ctx, false)
			return fmt.Errorf("connect: %w", err)
		}
		e.conn = conn
	}
	if e.leader.Load() {
		if err := e.conn.Ping(ctx); err != nil {
			e.dropConn(ctx)
			return fmt.Errorf("leader connection lost: %w", err)
		}
		return nil
	}
	var got bool
	if err := e.conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext('vigil.leader:' || $1))`, e.cfg.Name).Scan(&got); err != nil {
		e.dropConn(ctx)
		return fmt.Errorf("try lock: %w", err)
	}
	e.setLeader(ctx, got)
	return nil
}

// Close gives the leadership up (closing the connection releases the lock).
func (e *Elector) Close(ctx context.Context) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.dropConn(ctx)
}

func (e *Elector) dropConn(ctx context.Context) {
	e.setLeader(ctx, false)
	if e.conn != nil {
		_ = e.conn.Close(ctx)
		e.conn = nil
	}
}

func (e *Elector) setLeader(ctx context.Context, v bool) {
	if e.leader.Swap(v) != v {
		e.cfg.Logger.InfoContext(ctx, "leader: "+e.cfg.Name, slog.Bool("leading", v))
	}
}
