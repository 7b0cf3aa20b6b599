package auth_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pquerna/otp/totp"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys"
)

var t0 = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

// newRing is a real local key ring in a temporary directory.
func newRing(t testing.TB) *keys.Ring {
	t.Helper()
	local, err := keys.NewLocal(keys.LocalConfig{Dir: t.TempDir(), Passphrase: []byte("auth test passphrase"), ScryptN: 1 << 10})
	if err != nil {
		t.Fatalf("keys.NewLocal = %v", err)
	}
	ring, err := keys.NewRing(keys.Config{Backend: local})
	if err != nil {
		t.Fatalf("keys.NewRing = %v", err)
	}
	t.Cleanup(func() { _ = ring.Close() })
	if _, err := ring.EnsureKeys(context.Background()); err != nil {
		t.Fatalf("EnsureKeys = %v", err)
	}
	return ring
}

type env struct {
	ctx   context.Context
	pool  *pgxpool.Pool
	url   string
	ring  *keys.Ring
	clock *clock
	svc   *auth.Service
	cfg   auth.Config
}

var admin = auth.Origin{Actor: audit.Actor{Kind: audit.ActorUser, ID: "os:test-admin", AuthMethod: "database-credentials"}, RequestID: "req-admin"}

func newEnv(t testing.TB, mod func(*auth.Config)) *env {
	t.Helper()
	pool, url := testdb.NewWithURL(t)
	e := &env{ctx: context.Background(), pool: pool, url: url, ring: newRing(t), clock: &clock{t: t0}}
	e.cfg = auth.Config{Pool: pool, Sealer: e.ring.PHI(), Audit: audittest.Recorder(t, pool, nil), Now: e.clock.Now,
		Password: auth.PasswordConfig{Time: 1, MemoryKiB: 8 * 1024, Threads: 1}}
	if mod != nil {
		mod(&e.cfg)
	}
	svc, err := auth.New(e.ctx, e.cfg)
	if err != nil {
		t.Fatalf("auth.New = %v", err)
	}
	e.svc = svc
	return e
}

// another opens a second service on the same database (another server process).
func (e *env) another(t testing.TB) *auth.Service {
	t.Helper()
	svc, err := auth.New(e.ctx, e.cfg)
	if err != nil {
		t.Fatalf("auth.New = %v", err)
	}
	return svc
}

const password = "correct horse battery staple"

// user creates a user with roles, enrolled with password and TOTP; it returns the user, the
// TOTP secret and the recovery codes.
func (e *env) user(t testing.TB, email string, grants ...[2]string) (auth.User, string, []string) {
	t.Helper()
	u, err := e.svc.CreateUser(e.ctx, admin, auth.Profile{Email: email, DisplayName: "Test " + email})
	if err != nil {
		t.Fatalf("CreateUser(%s) = %v", email, err)
	}
	for _, g := range grants {
		d, err := auth.ParseDomain(g[1])
		if err != nil {
			t.Fatal(err)
		}
		if err := e.svc.GrantRole(e.ctx, admin, auth.UserSubject(u.ID), g[0], d); err != nil {
			t.Fatalf("GrantRole(%s, %s) = %v", g[0], g[1], err)
		}
	}
	en, err := e.svc.IssueEnrollment(e.ctx, admin, u.ID)
	if err != nil {
		t.Fatalf("IssueEnrollment = %v", err)
	}
	offer, err := e.svc.StartEnrollment(e.ctx, auth.Origin{}, en.Token)
	if err != nil {
		t.Fatalf("StartEnrollment = %v", err)
	}
	codes, err := e.svc.CompleteEnrollment(e.ctx, auth.Origin{}, en.Token, password, e.code(t, offer.Secret))
	if err != nil {
		t.Fatalf("CompleteEnrollment = %v", err)
	}
	// The enrollment used the current step: move past it so that the first sign-in has a fresh code.
	e.clock.Add(30 * time.Second)
	return u, offer.Secret, codes
}

func (e *env) code(t testing.TB, secret string) string {
	t.Helper()
	c, err := totp.GenerateCode(secret, e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// login signs in with password and the current TOTP code, and authenticates the session.
func (e *env) login(t testing.TB, email, secret string) (auth.Session, *auth.Principal) {
	t.Helper()
	sess, err := e.svc.Login(e.ctx, auth.LoginRequest{Email: email, Password: password, TOTPCode: e.code(t, secret), SourceAddr: "192.0.2.10"})
	if err != nil {
		t.Fatalf("Login(%s) = %v (%s)", email, err, auth.ReasonOf(err))
	}
	e.clock.Add(30 * time.Second) // a code is good once
	p, err := e.svc.Authenticate(e.ctx, auth.Credentials{SessionToken: sess.Token})
	if err != nil {
		t.Fatalf("Authenticate = %v", err)
	}
	return sess, p
}

type auditRow struct {
	ActorKind, ActorID, ActorAuth, Object, Outcome, Reason string
	Payload                                                []byte
}

// events returns the audit events of action, oldest first.
func (e *env) events(t testing.TB, action string) []auditRow {
	t.Helper()
	rows, err := e.pool.Query(e.ctx, `SELECT actor_kind, actor_id, actor_auth, object_id, outcome, reason, coalesce(payload::text, '')
		FROM audit_events WHERE action = $1 ORDER BY occurred_at, id`, action)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []auditRow
	for rows.Next() {
		var r auditRow
		var p string
		if err := rows.Scan(&r.ActorKind, &r.ActorID, &r.ActorAuth, &r.Object, &r.Outcome, &r.Reason, &p); err != nil {
			t.Fatal(err)
		}
		r.Payload = []byte(p)
		out = append(out, r)
	}
	return out
}

// lastReason returns the reason of the newest event of action.
func (e *env) lastReason(t testing.TB, action string) string {
	t.Helper()
	evs := e.events(t, action)
	if len(evs) == 0 {
		t.Fatalf("no %s event", action)
	}
	return evs[len(evs)-1].Reason
}

// wantCode checks err's public code and audit reason.
func wantCode(t testing.TB, what string, err error, code, reason string) {
	t.Helper()
	if auth.CodeOf(err) != code || (reason != "" && auth.ReasonOf(err) != reason) {
		t.Fatalf("%s = %v (code %q, reason %q), want code %q reason %q", what, err, auth.CodeOf(err), auth.ReasonOf(err), code, reason)
	}
}

var errAny = errors.New("any")

func ward() uuid.UUID { return uuid.Must(uuid.NewV7()) }

func errorsIs(err, target error) bool { return errors.Is(err, target) }

func hexOf(s string) string {
	const h = "0123456789abcdef"
	out := make([]byte, 0, 2*len(s))
	for i := 0; i < len(s); i++ {
		out = append(out, h[s[i]>>4], h[s[i]&15])
	}
	return string(out)
}

func totpAt(secret string, at time.Time) (string, error) { return totp.GenerateCode(secret, at) }
