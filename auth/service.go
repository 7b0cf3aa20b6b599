package auth

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/internal/pglisten"
)

// Recorder is how auth records its audit events: the process's audit recorder.
type Recorder = audit.Recorder

// Sealer protects personal data at rest, exactly like core's PHISealer: envelope encryption
// bound to associated data, and a keyed blind index. *keys.PHI satisfies it.
//
// Seal MUST bind the ciphertext to aad so that a value copied to another row fails to open;
// Open MUST fail (never return garbage) on tampering or the wrong aad; BlindIndex MUST be
// deterministic and not reversible without the key. All methods MUST be safe for concurrent use.
type Sealer interface {
	Seal(ctx context.Context, plaintext, aad []byte) ([]byte, error)
	Open(ctx context.Context, sealed, aad []byte) ([]byte, error)
	BlindIndex(ctx context.Context, value []byte) ([]byte, error)
}

// Config configures the auth service. Zero values take the documented defaults.
type Config struct {
	// Pool is the installation's database. Required.
	Pool *pgxpool.Pool
	// Sealer seals users' personal data and TOTP secrets (keys.Ring.PHI()). Required.
	Sealer Sealer
	// Audit records every sign-in attempt, session end, policy change and break-glass grant.
	// Required.
	Audit Recorder
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Rand is the source of tokens, secrets and salts. Default crypto/rand.Reader.
	Rand io.Reader
	// Logger receives background failures only (a failed last-used update). Default slog.Default().
	Logger *slog.Logger

	// Session: see SessionConfig.
	Session SessionConfig
	// Lockout: see LockoutConfig.
	Lockout LockoutConfig
	// Password: see PasswordConfig.
	Password PasswordConfig
	// TOTPIssuer is the issuer name shown by authenticator apps. Default "Vigil".
	TOTPIssuer string
	// EnrollmentTTL is how long an enrollment link stays valid. Default 72h.
	EnrollmentTTL time.Duration
	// BreakGlass: see BreakGlassConfig.
	BreakGlass BreakGlassConfig
	// NoDefaultPolicy leaves an empty policy empty (default: New installs DefaultPolicy, audited,
	// when the policy has never been written).
	NoDefaultPolicy bool
	// Listener is the process's shared notification listener (internal/pglisten), on which
	// the enforcer follows policy changes and session ends (Enforcer.Follow); the caller runs
	// it. Nil: Follow listens on a connection of its own.
	Listener *pglisten.Listener
}

// SessionConfig configures browser sessions.
type SessionConfig struct {
	// IdleTimeout ends a session not used for this long (automatic logoff, HIPAA
	// §164.312(a)(2)(iii)). Default 15 minutes.
	IdleTimeout time.Duration
	// MaxLifetime ends a session this long after sign-in whatever its use. Default 12 hours.
	MaxLifetime time.Duration
	// TouchInterval: a session's last use is written at most this often (saves a write per
	// request); the idle timeout is therefore exact to within TouchInterval. Default 30s.
	TouchInterval time.Duration
	// CookieName is the session cookie's name. Default "__Host-vigil_session" (the __Host-
	// prefix makes browsers insist on Secure, Path=/ and no Domain).
	CookieName string
	// Insecure drops the Secure attribute and the __Host- prefix, for plain-HTTP development
	// on loopback only (vigil demo without TLS). Default false.
	Insecure bool
}

// LockoutConfig configures failed sign-in throttling: after Threshold consecutive failures for
// an account (or SourceThreshold from one address), sign-in is refused for BaseDelay, doubling
// with each further failure up to MaxDelay. A success clears the account's counter; counters
// idle for Window are forgotten.
type LockoutConfig struct {
	Threshold       int           // default 5
	SourceThreshold int           // default 20
	BaseDelay       time.Duration // default 1 minute
	MaxDelay        time.Duration // default 1 hour
	Window          time.Duration // default 15 minutes
}

// PasswordConfig configures local passwords (argon2id, RFC 9106).
type PasswordConfig struct {
	MinLength int    // default 12
	Time      uint32 // argon2id passes; default 2
	MemoryKiB uint32 // default 64 MiB (65536)
	Threads   uint8  // default 2
}

// BreakGlassConfig bounds emergency access.
type BreakGlassConfig struct {
	Default time.Duration // duration when the caller does not ask for one; default 1 hour
	Max     time.Duration // longest grant; default 4 hours
}

func (c *Config) setDefaults() {
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	s := &c.Session
	if s.IdleTimeout <= 0 {
		s.IdleTimeout = 15 * time.Minute
	}
	if s.MaxLifetime <= 0 {
		s.MaxLifetime = 12 * time.Hour
	}
	if s.TouchInterval <= 0 {
		s.TouchInterval = 30 * time.Second
	}
	if s.TouchInterval > s.IdleTimeout/2 {
		s.TouchInterval = s.IdleTimeout / 2
	}
	if s.CookieName == "" {
		s.CookieName = "__Host-vigil_session"
		if s.Insecure {
			s.CookieName = "vigil_session"
		}
	}
	l := &c.Lockout
	if l.Threshold <= 0 {
		l.Threshold = 5
	}
	if l.SourceThreshold <= 0 {
		l.SourceThreshold = 20
	}
	if l.BaseDelay <= 0 {
		l.BaseDelay = time.Minute
	}
	if l.MaxDelay <= 0 {
		l.MaxDelay = time.Hour
	}
	if l.Window <= 0 {
		l.Window = 15 * time.Minute
	}
	p := &c.Password
	if p.MinLength <= 0 {
		p.MinLength = 12
	}
	if p.Time == 0 {
		p.Time = 2
	}
	if p.MemoryKiB == 0 {
		p.MemoryKiB = 64 * 1024
	}
	if p.Threads == 0 {
		p.Threads = 2
	}
	if c.TOTPIssuer == "" {
		c.TOTPIssuer = "Vigil"
	}
	if c.EnrollmentTTL <= 0 {
		c.EnrollmentTTL = 72 * time.Hour
	}
	b := &c.BreakGlass
	if b.Max <= 0 {
		b.Max = 4 * time.Hour
	}
	if b.Default <= 0 {
		b.Default = time.Hour
	}
	if b.Default > b.Max {
		b.Default = b.Max
	}
}

// Service is the auth area: principals, sign-in, sessions, tokens, and the enforcer.
type Service struct {
	cfg   Config
	pool  *pgxpool.Pool
	enf   *Enforcer
	dummy string // a password hash checked for unknown names, so they take as long
}

// New opens the auth service and loads the policy into its enforcer (installing DefaultPolicy
// on a database that has never had one, unless Config.NoDefaultPolicy).
func New(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.Pool == nil || cfg.Sealer == nil || cfg.Audit == nil {
		return nil, errors.New("auth: Config.Pool, Config.Sealer and Config.Audit are required")
	}
	cfg.setDefaults()
	s := &Service{cfg: cfg, pool: cfg.Pool}
	h, err := s.hashPassword("not a password of anyone: equalises timing")
	if err != nil {
		return nil, err
	}
	s.dummy = h
	if !cfg.NoDefaultPolicy {
		if err := s.installDefaultPolicy(ctx); err != nil {
			return nil, err
		}
	}
	s.enf, err = newEnforcer(ctx, cfg.Pool, cfg.Now)
	if err != nil {
		return nil, err
	}
	if cfg.Listener != nil {
		s.enf.follow.shared = true
		s.enf.listenOn(cfg.Listener)
	}
	return s, nil
}

// Enforcer is the authorization decision point.
func (s *Service) Enforcer() *Enforcer { return s.enf }

// Config returns the effective configuration (defaults applied).
func (s *Service) Config() Config { return s.cfg }

func (s *Service) now() time.Time { return s.cfg.Now().UTC().Truncate(time.Microsecond) }

// random returns n random bytes from Config.Rand.
func (s *Service) random(n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(s.cfg.Rand, b); err != nil {
		return nil, fmt.Errorf("auth: random: %w", err)
	}
	return b, nil
}

// Origin says who asks for an action and from where, for its audit event.
type Origin struct {
	Actor      audit.Actor
	RequestID  string
	SourceAddr string
}

func (o Origin) event(now time.Time, action string, obj audit.Object, outcome audit.Outcome, reason string, payload any) audit.Event {
	a := o.Actor
	if a.Kind == "" {
		a = audit.Unauthenticated // a sign-in not (yet) succeeded: the object names the account
	}
	return audit.Event{Time: now, Actor: a, Action: action, Object: obj, Outcome: outcome, Reason: reason,
		RequestID: o.RequestID, SourceAddr: o.SourceAddr, Payload: payload}
}
