package auth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
)

// Principal is an authenticated caller: a user signed in to a session, or a service account
// using an API token.
type Principal struct {
	Kind       audit.ActorKind `json:"kind"`           // audit.ActorUser or audit.ActorService
	ID         uuid.UUID       `json:"id"`             // user id or service account id
	Subject    string          `json:"subject"`        // policy subject: user:<id> or token:<id>
	Name       string          `json:"name,omitempty"` // service account name; empty for users (personal data)
	AuthMethod string          `json:"auth_method"`
	SessionID  uuid.UUID       `json:"session_id,omitzero"` // browser session; zero for API tokens
	TokenID    uuid.UUID       `json:"token_id,omitzero"`   // API token; zero for sessions
}

// Actor is the audit actor of the principal's actions.
func (p *Principal) Actor() audit.Actor {
	return audit.Actor{Kind: p.Kind, ID: p.ID.String(), AuthMethod: p.AuthMethod}
}

// Origin is the audit origin of the principal's actions in one request.
func (p *Principal) Origin(requestID, sourceAddr string) Origin {
	return Origin{Actor: p.Actor(), RequestID: requestID, SourceAddr: sourceAddr}
}

// Session is a browser session. Token is the opaque secret of the cookie: it is returned only
// when the session is created and stored only as its SHA-256.
type Session struct {
	ID         uuid.UUID `json:"id"`
	UserID     uuid.UUID `json:"user_id"`
	Token      string    `json:"-"`
	AuthMethod string    `json:"auth_method"`
	CreatedAt  time.Time `json:"created_at"`
	ExpiresAt  time.Time `json:"expires_at"` // absolute end
}

const sessionPrefix = "vgs_"

func (s *Service) createSession(ctx context.Context, tx pgx.Tx, user uuid.UUID, method, src string, now time.Time) (Session, error) {
	b, err := s.random(32)
	if err != nil {
		return Session{}, err
	}
	sess := Session{ID: uuid.Must(uuid.NewV7()), UserID: user, Token: sessionPrefix + base64.RawURLEncoding.EncodeToString(b),
		AuthMethod: method, CreatedAt: now, ExpiresAt: now.Add(s.cfg.Session.MaxLifetime)}
	_, err = tx.Exec(ctx, `INSERT INTO auth_sessions (id, token_hash, user_id, auth_method, source_addr, created_at, last_seen_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $6, $7)`, sess.ID, tokenHash(sess.Token), user, method, src, now, sess.ExpiresAt)
	return sess, err
}

func endSessions(ctx context.Context, tx pgx.Tx, user uuid.UUID, now time.Time, reason string) (int64, error) {
	tag, err := tx.Exec(ctx, "UPDATE auth_sessions SET ended_at = $2, end_reason = $3 WHERE user_id = $1 AND ended_at IS NULL", user, now, reason)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), notifySessions(ctx, tx, user)
}

// Cookie returns the session cookie for sess: HttpOnly, Secure, SameSite=Strict, Path=/, no
// Domain, no expiry (the server ends sessions; the browser drops it when closed).
func (s *Service) Cookie(sess Session) *http.Cookie {
	return &http.Cookie{Name: s.cfg.Session.CookieName, Value: sess.Token, Path: "/", HttpOnly: true,
		Secure: !s.cfg.Session.Insecure, SameSite: http.SameSiteStrictMode}
}

// ClearCookie returns the cookie that removes the session cookie (after sign-out).
func (s *Service) ClearCookie() *http.Cookie {
	return &http.Cookie{Name: s.cfg.Session.CookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		Secure: !s.cfg.Session.Insecure, SameSite: http.SameSiteStrictMode}
}

// Credentials are what a request presents: the session cookie's value or a bearer token.
type Credentials struct {
	SessionToken string
	BearerToken  string
	SourceAddr   string
	RequestID    string
	// Background marks a request the client made by itself, not because the person did
	// something (a tile refreshed on a timer, a live stream reconnecting): it is authenticated
	// like any other but does not count as activity, so it never postpones the idle timeout
	// (automatic logoff). CredentialsFrom sets it from the BackgroundHeader.
	Background bool
}

// BackgroundHeader marks a background request: "X-Vigil-Background: 1" (see
// Credentials.Background). A client can only make its own session time out sooner with it.
const BackgroundHeader = "X-Vigil-Background"

// CredentialsFrom reads the session cookie and the Authorization: Bearer header of r.
// sourceAddr is the client address as the server determined it.
func (s *Service) CredentialsFrom(r *http.Request, sourceAddr, requestID string) Credentials {
	c := Credentials{SourceAddr: sourceAddr, RequestID: requestID, Background: r.Header.Get(BackgroundHeader) == "1"}
	if ck, err := r.Cookie(s.cfg.Session.CookieName); err == nil {
		c.SessionToken = ck.Value
	}
	if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		c.BearerToken = strings.TrimSpace(h[7:])
	}
	return c
}

// Authenticate returns the principal of a request's credentials: the bearer token if there is
// one, else the session cookie. A refusal is audited ("auth.session.rejected" or
// "auth.token.rejected", reason-coded) and returned as ErrUnauthenticated or ErrSessionExpired.
// A session's last use is advanced (at most every SessionConfig.TouchInterval), except by a
// background request (Credentials.Background).
func (s *Service) Authenticate(ctx context.Context, c Credentials) (*Principal, error) {
	switch {
	case c.BearerToken != "":
		return s.authenticateToken(ctx, c)
	case c.SessionToken != "":
		return s.authenticateSession(ctx, c)
	}
	return nil, fail(ErrUnauthenticated, "no_credentials")
}

func (s *Service) authenticateSession(ctx context.Context, c Credentials) (*Principal, error) {
	now := s.now()
	o := Origin{RequestID: c.RequestID, SourceAddr: c.SourceAddr}
	reject := func(user, sess uuid.UUID, pub *Error, reason string) (*Principal, error) {
		if user != uuid.Nil {
			o.Actor = audit.Actor{Kind: audit.ActorUser, ID: user.String(), AuthMethod: "session"}
		}
		id := ""
		if sess != uuid.Nil {
			id = sess.String()
		}
		if _, err := s.cfg.Audit.RecordNow(ctx, o.event(now, "auth.session.rejected", audit.Object{Type: "session", ID: id},
			audit.OutcomeRejected, reason, nil)); err != nil {
			return nil, fmt.Errorf("authenticate: audit refusal: %w", err)
		}
		return nil, fail(pub, reason)
	}
	if !strings.HasPrefix(c.SessionToken, sessionPrefix) || len(c.SessionToken) != len(sessionPrefix)+43 {
		return reject(uuid.Nil, uuid.Nil, ErrUnauthenticated, "session_malformed")
	}
	var id, user uuid.UUID
	var method, status string
	var lastSeen, expires time.Time
	var ended *time.Time
	err := s.pool.QueryRow(ctx, `SELECT s.id, s.user_id, s.auth_method, s.last_seen_at, s.expires_at, s.ended_at, u.status
		FROM auth_sessions s JOIN auth_users u ON u.id = s.user_id WHERE s.token_hash = $1`, tokenHash(c.SessionToken)).
		Scan(&id, &user, &method, &lastSeen, &expires, &ended, &status)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return reject(uuid.Nil, uuid.Nil, ErrUnauthenticated, "session_unknown")
	case err != nil:
		return nil, fmt.Errorf("authenticate: %w", err)
	case ended != nil:
		return reject(user, id, ErrSessionExpired, "session_ended")
	case status != StatusActive:
		return reject(user, id, ErrUnauthenticated, "user_disabled")
	case !now.Before(expires):
		if err := s.endSession(ctx, id, user, now, "absolute_lifetime"); err != nil {
			return nil, err
		}
		return reject(user, id, ErrSessionExpired, "session_lifetime")
	case now.Sub(lastSeen) >= s.cfg.Session.IdleTimeout:
		if err := s.endSession(ctx, id, user, now, "idle_timeout"); err != nil {
			return nil, err
		}
		return reject(user, id, ErrSessionExpired, "session_idle_timeout")
	}
	if !c.Background && now.Sub(lastSeen) >= s.cfg.Session.TouchInterval {
		if _, err := s.pool.Exec(ctx, "UPDATE auth_sessions SET last_seen_at = $2 WHERE id = $1 AND last_seen_at < $2", id, now); err != nil {
			return nil, fmt.Errorf("authenticate: %w", err)
		}
	}
	return &Principal{Kind: audit.ActorUser, ID: user, Subject: UserSubject(user), AuthMethod: method, SessionID: id}, nil
}

// endSession ends one session for a timeout, audited as "auth.session.ended".
func (s *Service) endSession(ctx context.Context, id, user uuid.UUID, now time.Time, reason string) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "UPDATE auth_sessions SET ended_at = $2, end_reason = $3 WHERE id = $1 AND ended_at IS NULL", id, now, reason)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		if err := notifySessions(ctx, tx, user); err != nil {
			return err
		}
		o := Origin{Actor: audit.Actor{Kind: audit.ActorService, ID: "auth", AuthMethod: "internal"}}
		_, err = s.cfg.Audit.Record(ctx, tx, o.event(now, "auth.session.ended", audit.Object{Type: "session", ID: id.String()},
			audit.OutcomeSuccess, reason, map[string]any{"user_id": user}))
		return err
	})
}

// SignOut ends the principal's session, audited as "auth.logout".
func (s *Service) SignOut(ctx context.Context, p *Principal, requestID, sourceAddr string) error {
	if p == nil || p.SessionID == uuid.Nil {
		return fail(ErrUnauthenticated, "no_session")
	}
	now := s.now()
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "UPDATE auth_sessions SET ended_at = $2, end_reason = 'logout' WHERE id = $1 AND ended_at IS NULL",
			p.SessionID, now); err != nil {
			return err
		}
		if err := notifySessions(ctx, tx, p.ID); err != nil {
			return err
		}
		_, err := s.cfg.Audit.Record(ctx, tx, p.Origin(requestID, sourceAddr).event(now, "auth.logout",
			audit.Object{Type: "session", ID: p.SessionID.String()}, audit.OutcomeSuccess, "", nil))
		return err
	})
}

// SignOutEverywhere ends every session of a user (their own request, or an administrator's),
// audited as "auth.logout_everywhere" with the count.
func (s *Service) SignOutEverywhere(ctx context.Context, o Origin, user uuid.UUID) (int64, error) {
	now := s.now()
	var n int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		if n, err = endSessions(ctx, tx, user, now, "logout_everywhere"); err != nil {
			return err
		}
		_, err = s.cfg.Audit.Record(ctx, tx, o.event(now, "auth.logout_everywhere", audit.Object{Type: "user", ID: user.String()},
			audit.OutcomeSuccess, "", map[string]any{"sessions_ended": n}))
		return err
	})
	return n, err
}

// Sessions lists a user's open sessions.
func (s *Service) Sessions(ctx context.Context, user uuid.UUID) ([]Session, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, user_id, auth_method, created_at, expires_at FROM auth_sessions
		WHERE user_id = $1 AND ended_at IS NULL AND expires_at > $2 ORDER BY created_at`, user, s.now())
	if err != nil {
		return nil, fmt.Errorf("sessions: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Session, error) {
		var x Session
		err := r.Scan(&x.ID, &x.UserID, &x.AuthMethod, &x.CreatedAt, &x.ExpiresAt)
		return x, err
	})
}

// ---- CSRF: a synchronizer token bound to the session, derived from the session's secret
// (HMAC-SHA-256 keyed with the cookie's token), so it needs no storage, differs per session
// and cannot be computed without the HttpOnly cookie.

// CSRFHeader and CSRFField are where a state-changing browser request carries the token.
const (
	CSRFHeader = "X-CSRF-Token"
	CSRFField  = "csrf_token"
)

// CSRFToken returns the CSRF token of a session token (to embed in pages and forms).
func CSRFToken(sessionToken string) string {
	m := hmac.New(sha256.New, []byte(sessionToken))
	m.Write([]byte("vigil/csrf/v1"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// CheckCSRF verifies a request's CSRF token. Safe methods (GET, HEAD, OPTIONS) and requests
// authenticated by a bearer token (no cookie: not a browser's ambient credential) pass. Any
// other request must carry CSRFToken(session cookie) in the X-CSRF-Token header or the
// csrf_token form field; otherwise ErrCSRFInvalid, audited as "auth.csrf.rejected".
func (s *Service) CheckCSRF(ctx context.Context, r *http.Request, p *Principal, c Credentials) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return nil
	}
	if c.SessionToken == "" && c.BearerToken != "" {
		return nil
	}
	got := r.Header.Get(CSRFHeader)
	if got == "" && strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		got = r.PostFormValue(CSRFField)
	}
	reason := ""
	switch {
	case c.SessionToken == "":
		reason = "csrf_no_session"
	case got == "":
		reason = "csrf_missing"
	case !hmac.Equal([]byte(got), []byte(CSRFToken(c.SessionToken))):
		reason = "csrf_mismatch"
	default:
		return nil
	}
	o := Origin{RequestID: c.RequestID, SourceAddr: c.SourceAddr}
	obj := audit.Object{Type: "session"}
	if p != nil {
		o.Actor = p.Actor()
		obj.ID = p.SessionID.String()
	}
	if _, err := s.cfg.Audit.RecordNow(ctx, o.event(s.now(), "auth.csrf.rejected", obj, audit.OutcomeRejected, reason,
		map[string]any{"method": r.Method, "path": r.URL.Path})); err != nil {
		return fmt.Errorf("csrf: audit refusal: %w", err)
	}
	return fail(ErrCSRFInvalid, reason)
}
