package alarms

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/internal/every"
)

// Config configures a Service. Zero values take the documented defaults.
type Config struct {
	// Pool is the installation's database. Required.
	Pool *pgxpool.Pool
	// Recorder records every transition and rejection (the process's audit.Outbox). Required.
	Recorder audit.Recorder
	// Notifier receives committed transitions. Default: none.
	Notifier Notifier
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// EscalateAfter is how long an alarm may stay unacknowledged at one tier before it is
	// escalated to the next. Default 5 minutes.
	EscalateAfter time.Duration
	// MaxTier is the highest escalation tier. Default 2 (primary, charge nurse, physician).
	MaxTier int
	// ReminderFirst is the delay from opening (or from a silence expiring) to the first
	// reminder of an unacknowledged alarm. Default 2 minutes.
	ReminderFirst time.Duration
	// ReminderFactor multiplies the interval after each reminder: below 1 the interval decays
	// (reminders come faster the longer an alarm is ignored). Default 0.5.
	ReminderFactor float64
	// ReminderMin is the shortest reminder interval. Default 30 seconds.
	ReminderMin time.Duration
	// MaxSilence is the longest silence allowed. Default 30 minutes.
	MaxSilence time.Duration
	// Logger for the Run loop. Default slog.Default().
	Logger *slog.Logger
}

// Service manages alarms. It is safe for concurrent use.
type Service struct {
	cfg     Config
	explain atomic.Pointer[func(Alarm) any]
}

// SetExplainer installs f, which renders an alarm for a clinician: Notify puts f(alarm) in
// every transition's Readable before handing it to the Notifier. f MUST be safe for
// concurrent use, fast (no I/O) and MUST NOT call back into the Service.
func (s *Service) SetExplainer(f func(Alarm) any) {
	if f == nil {
		s.explain.Store(nil)
		return
	}
	s.explain.Store(&f)
}

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Pool == nil || cfg.Recorder == nil {
		return nil, errors.New("alarms: Config.Pool and Config.Recorder are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.EscalateAfter <= 0 {
		cfg.EscalateAfter = 5 * time.Minute
	}
	if cfg.MaxTier <= 0 {
		cfg.MaxTier = 2
	}
	if cfg.ReminderFirst <= 0 {
		cfg.ReminderFirst = 2 * time.Minute
	}
	if cfg.ReminderFactor <= 0 {
		cfg.ReminderFactor = 0.5
	}
	if cfg.ReminderMin <= 0 {
		cfg.ReminderMin = 30 * time.Second
	}
	if cfg.MaxSilence <= 0 {
		cfg.MaxSilence = 30 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Service{cfg: cfg}, nil
}

// Apply applies a rule's signal inside tx (the caller's transaction): it opens, re-triggers,
// changes the severity of, or auto-resolves the patient's open alarm for the rule, recording
// each transition with Config.Recorder in tx. A cleared signal with no open alarm is a no-op.
// The caller MUST pass the returned transitions to Notify after tx commits, and MUST discard
// them if it rolls back.
func (s *Service) Apply(ctx context.Context, tx pgx.Tx, sig Signal) ([]Transition, error) {
	return s.apply(ctx, tx, sig)
}

// Notify hands committed transitions to the Notifier, in order.
func (s *Service) Notify(ctx context.Context, ts []Transition) {
	if s.cfg.Notifier == nil {
		return
	}
	explain := s.explain.Load()
	for _, t := range ts {
		if explain != nil && t.Readable == nil {
			t.Readable = (*explain)(t.Alarm)
		}
		s.cfg.Notifier.AlarmTransition(ctx, t)
	}
}

// Acknowledge records that by.Actor has taken responsibility for the alarm: it stops escalation
// and reminders. by carries the actor, request id and source address (server.EventFor).
// ErrNotFound for an unknown id, ErrConflict unless the alarm is active (rejections audited).
func (s *Service) Acknowledge(ctx context.Context, id uuid.UUID, by audit.Event, note string) (Alarm, error) {
	return s.acknowledge(ctx, id, by, note)
}

// Silence mutes reminders of an open alarm for d (at most Config.MaxSilence) with a reason.
// Silence is not acknowledgement: an unacknowledged silenced alarm still escalates.
// ErrInvalidRequest for an empty reason or a non-positive or too long duration.
func (s *Service) Silence(ctx context.Context, id uuid.UUID, by audit.Event, reason string, d time.Duration) (Alarm, error) {
	return s.silence(ctx, id, by, reason, d)
}

// Resolve closes an open alarm by hand with a reason (required). ErrConflict if already resolved.
func (s *Service) Resolve(ctx context.Context, id uuid.UUID, by audit.Event, reason string) (Alarm, error) {
	return s.resolve(ctx, id, by, reason)
}

// Get returns one alarm, or ErrNotFound.
func (s *Service) Get(ctx context.Context, id uuid.UUID) (Alarm, error) { return s.get(ctx, id) }

// List returns alarms matching f, most recently opened first.
func (s *Service) List(ctx context.Context, f Filter) ([]Alarm, error) { return s.list(ctx, f) }

// Tick performs every time-driven transition due at Config.Now(): silence expiries, escalations
// and reminders, each audited in its own transaction and notified after commit. It returns the
// transitions made. Safe to call from several processes (rows are locked, SKIP LOCKED).
func (s *Service) Tick(ctx context.Context) ([]Transition, error) { return s.tick(ctx) }

// Run calls Tick every interval until ctx is cancelled; errors are logged and retried.
func (s *Service) Run(ctx context.Context, interval time.Duration) {
	every.Tick(ctx, interval, func(ctx context.Context) {
		if _, err := s.Tick(ctx); err != nil && ctx.Err() == nil {
			s.cfg.Logger.WarnContext(ctx, "alarm tick failed", slog.String("error", err.Error()))
		}
	})
}
