package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/auditmark"
)

// Sign-in, sign-out and the caller's own session; break-glass; service accounts' API tokens.
// The logic (and every audit event: auth.login.*, auth.logout, policy.*, access.break_glass.*)
// lives in package auth; this file only translates HTTP. The routes' access lines are in
// permissions.go; docs/api.md#authentication-and-authorization documents them.
func (s *Server) mountAuth(api *echo.Group) {
	if s.cfg.Auth == nil {
		return
	}
	api.POST("/auth/sign-in", s.signIn)
	api.POST("/auth/enrollment", s.startEnrollment)
	api.POST("/auth/enrollment/complete", s.completeEnrollment)
	api.GET("/auth/me", s.me)
	api.POST("/auth/sign-out", s.signOut)
	api.POST("/auth/sign-out-everywhere", s.signOutEverywhere)
	if s.cfg.OIDC != nil {
		api.GET("/auth/oidc/login", s.oidcLogin)
		api.GET("/auth/oidc/callback", s.oidcCallback)
	}
	if s.cfg.Passkeys != nil {
		api.POST("/auth/passkeys/register/begin", s.passkeyRegisterBegin)
		api.POST("/auth/passkeys/register/finish", s.passkeyRegisterFinish)
		api.POST("/auth/passkeys/sign-in/begin", s.passkeySignInBegin)
		api.POST("/auth/passkeys/sign-in/finish", s.passkeySignInFinish)
	}
	if s.cfg.Core != nil {
		api.POST("/patients/:id/break-glass", s.breakGlass)
	}
	api.GET("/break-glass", s.listBreakGlass)
	api.POST("/break-glass/:id/review", s.reviewBreakGlass)
	api.GET("/service-accounts", s.listServiceAccounts)
	api.GET("/service-accounts/:id/tokens", s.listAPITokens)
	api.POST("/service-accounts/:id/tokens", s.issueAPIToken)
	api.DELETE("/api-tokens/:id", s.revokeAPIToken)
}

// origin is the audit origin of the request's principal.
func origin(c echo.Context) auth.Origin {
	ev := EventFor(c)
	return auth.Origin{Actor: ev.Actor, RequestID: ev.RequestID, SourceAddr: ev.SourceAddr}
}

// lockedOut carries Retry-After for account_locked.
type lockedOut struct{ err error }

func (e *lockedOut) Error() string { return e.err.Error() }
func (e *lockedOut) Unwrap() error { return e.err }
func (e *lockedOut) RetryAfterSeconds() int {
	return max(1, int((auth.RetryAfter(e.err)+time.Second-1)/time.Second))
}

// sessionAnswer is the answer to a successful sign-in: the session (its secret is only in the
// cookie) and the CSRF token the client sends in X-CSRF-Token on state-changing requests.
type sessionAnswer struct {
	UserID     uuid.UUID `json:"user_id"`
	SessionID  uuid.UUID `json:"session_id"`
	AuthMethod string    `json:"auth_method"`
	ExpiresAt  time.Time `json:"expires_at"`
	CSRFToken  string    `json:"csrf_token"`
}

func (s *Server) startSession(c echo.Context, sess auth.Session) error {
	c.SetCookie(s.cfg.Auth.Cookie(sess))
	Audited(c) // auth.login.succeeded, recorded with the session
	return c.JSON(http.StatusOK, sessionAnswer{UserID: sess.UserID, SessionID: sess.ID, AuthMethod: sess.AuthMethod,
		ExpiresAt: sess.ExpiresAt, CSRFToken: auth.CSRFToken(sess.Token)})
}

// signIn is POST /auth/sign-in {email, password, totp_code | recovery_code}.
func (s *Server) signIn(c echo.Context) error {
	var req struct {
		Email        string `json:"email"`
		Password     string `json:"password"`
		TOTPCode     string `json:"totp_code"`
		RecoveryCode string `json:"recovery_code"`
	}
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	sess, err := s.cfg.Auth.Login(c.Request().Context(), auth.LoginRequest{Email: req.Email, Password: req.Password,
		TOTPCode: req.TOTPCode, RecoveryCode: req.RecoveryCode, SourceAddr: c.RealIP(), RequestID: RequestID(c)})
	if err != nil {
		if auth.CodeOf(err) != "" {
			// Refused and recorded by auth (auth.login.failed, committed: a failed record is an
			// internal error): that event is the request's one record.
			Audited(c)
		}
		if errors.Is(err, auth.ErrAccountLocked) {
			return &lockedOut{err}
		}
		return err
	}
	return s.startSession(c, sess)
}

// signInRefused marks a single sign-on callback or passkey sign-in that auth refused coded
// audited: auth returns the coded refusal (oidc_failed, invalid_credentials) only once its
// auth.login.failed event, with the specific reason, is committed, so that event is the
// request's one record and the error handler adds no http.request.rejected. Any other error
// is a server error (a refusal whose record failed among them): the OIDC callback is a GET,
// which the state-change middleware does not record, so its failure is recorded here
// (http.request.failed); a POST's is recorded by the middleware.
func (s *Server) signInRefused(c echo.Context, err error) error {
	if auth.CodeOf(err) != "" {
		refusalAudited(c) // auth.login.failed
		return err
	}
	if status, code, _ := classify(err); status >= 500 && !auditmark.Tracked(c.Request().Context()) {
		s.auditFailed(c, status, code)
	}
	return err
}

// startEnrollment is POST /auth/enrollment {token}: the TOTP secret to add to an authenticator.
func (s *Server) startEnrollment(c echo.Context) error {
	var req struct {
		Token string `json:"token"`
	}
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	offer, err := s.cfg.Auth.StartEnrollment(c.Request().Context(), origin(c), req.Token)
	if err != nil {
		return enrollRefused(c, err)
	}
	return c.JSON(http.StatusOK, offer)
}

// enrollRefused marks a refused enrollment audited when auth recorded it: a coded refusal of
// StartEnrollment or CompleteEnrollment is returned only once its auth.enrollment.failed event
// is committed (a failed record is an internal error). A password the policy refuses
// (ErrInvalid, not coded) is recorded by the error handler.
func enrollRefused(c echo.Context, err error) error {
	if auth.CodeOf(err) != "" {
		Audited(c) // auth.enrollment.failed
	}
	return err
}

// completeEnrollment is POST /auth/enrollment/complete {token, password, totp_code}: it sets
// the password and confirms the authenticator; the answer holds the recovery codes, once.
func (s *Server) completeEnrollment(c echo.Context) error {
	var req struct {
		Token    string `json:"token"`
		Password string `json:"password"`
		TOTPCode string `json:"totp_code"`
	}
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	codes, err := s.cfg.Auth.CompleteEnrollment(c.Request().Context(), origin(c), req.Token, req.Password, req.TOTPCode)
	if err != nil {
		return enrollRefused(c, err)
	}
	Audited(c) // user.enrolled
	return c.JSON(http.StatusOK, map[string]any{"recovery_codes": codes})
}

// me is GET /auth/me: who the caller is, their roles, and (for a session) its CSRF token.
func (s *Server) me(c echo.Context) error {
	p := PrincipalOf(c)
	out := map[string]any{"principal": p, "roles": s.cfg.Auth.Enforcer().RolesOf(p.Subject)}
	if p.Kind == audit.ActorUser {
		u, err := s.cfg.Auth.User(c.Request().Context(), p.ID)
		if err != nil {
			return err
		}
		out["profile"] = u.Profile
		out["roles"] = u.Roles
	}
	if creds, ok := c.Get(credentialsKey).(auth.Credentials); ok && creds.SessionToken != "" && creds.BearerToken == "" {
		out["csrf_token"] = auth.CSRFToken(creds.SessionToken)
	}
	return c.JSON(http.StatusOK, out)
}

// signOut is POST /auth/sign-out: it ends the caller's session and removes the cookie.
func (s *Server) signOut(c echo.Context) error {
	if err := s.cfg.Auth.SignOut(c.Request().Context(), PrincipalOf(c), RequestID(c), c.RealIP()); err != nil {
		return err
	}
	Audited(c) // auth.logout
	c.SetCookie(s.cfg.Auth.ClearCookie())
	return c.NoContent(http.StatusNoContent)
}

// signOutEverywhere is POST /auth/sign-out-everywhere: it ends every session of the signed-in
// user.
func (s *Server) signOutEverywhere(c echo.Context) error {
	p := PrincipalOf(c)
	if p.Kind != audit.ActorUser {
		return auth.ErrForbidden
	}
	n, err := s.cfg.Auth.SignOutEverywhere(c.Request().Context(), origin(c), p.ID)
	if err != nil {
		return err
	}
	Audited(c) // auth.logout_everywhere
	c.SetCookie(s.cfg.Auth.ClearCookie())
	return c.JSON(http.StatusOK, map[string]any{"sessions_ended": n})
}

// oidcLogin is GET /auth/oidc/login: it redirects the browser to the identity provider, with
// the flow's state cookie set.
func (s *Server) oidcLogin(c echo.Context) error {
	f, err := s.cfg.OIDC.Begin(c.Request().Context())
	if err != nil {
		return err
	}
	c.SetCookie(s.cfg.OIDC.FlowCookie(f))
	return c.Redirect(http.StatusFound, f.URL)
}

// oidcCallback is GET /auth/oidc/callback: the provider's redirect back. On success the
// session cookie is set and the answer is the session, like a local sign-in's.
func (s *Server) oidcCallback(c echo.Context) error {
	q := c.Request().URL.Query()
	cb := auth.Callback{State: q.Get("state"), Code: q.Get("code"), Error: q.Get("error"),
		SourceAddr: c.RealIP(), RequestID: RequestID(c)}
	if ck, err := c.Cookie(auth.FlowCookieName); err == nil {
		cb.CookieState = ck.Value
	}
	sess, err := s.cfg.OIDC.Finish(c.Request().Context(), cb)
	c.SetCookie(&http.Cookie{Name: auth.FlowCookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		Secure: !s.cfg.Auth.Config().Session.Insecure, SameSite: http.SameSiteLaxMode})
	if err != nil {
		return s.signInRefused(c, err)
	}
	if s.cfg.Portal != nil && strings.Contains(c.Request().Header.Get(echo.HeaderAccept), "text/html") {
		// A browser sent here by the portal's "Sign in with …" button: to the portal.
		c.SetCookie(s.cfg.Auth.Cookie(sess))
		Audited(c) // auth.login.succeeded, recorded with the session
		return c.Redirect(http.StatusSeeOther, "/")
	}
	return s.startSession(c, sess)
}

// breakGlass is POST /patients/:id/break-glass {reason, duration}: emergency access to a
// patient outside the caller's wards and care teams, audited (access.break_glass.opened) and
// notified on the stream and to webhooks (access.break_glass.opened, without the reason).
func (s *Server) breakGlass(c echo.Context) error {
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return BadRequest("invalid_patient_id", "patient id must be a UUID")
	}
	var req struct {
		Reason   string `json:"reason"`
		Duration string `json:"duration"` // Go duration, e.g. "30m"; empty: the default (1 h)
	}
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	var d time.Duration
	if req.Duration != "" {
		if d, err = time.ParseDuration(req.Duration); err != nil || d <= 0 {
			return BadRequest(auth.ErrBreakGlassReason.Code, `duration must be a positive duration such as "30m"`)
		}
	}
	ctx := c.Request().Context()
	if _, err := s.cfg.Core.Patient(ctx, id); err != nil {
		return err
	}
	p := PrincipalOf(c)
	g, err := s.cfg.Auth.BreakGlass(ctx, p, origin(c), id, req.Reason, d)
	if err != nil {
		return err
	}
	Audited(c) // access.break_glass.opened, with the grant
	data, _ := json.Marshal(map[string]any{"grant_id": g.ID, "user_id": g.UserID, "expires_at": g.ExpiresAt})
	ev := core.Event{Type: "access.break_glass.opened", PatientID: id, Data: data}
	s.cfg.Core.Hub().Publish(ev)
	if _, err := s.cfg.Core.EnqueueWebhooks(ctx, ev); err != nil {
		s.log.ErrorContext(ctx, "break-glass webhook notification failed", "request_id", RequestID(c), "error", err.Error())
	}
	return c.JSON(http.StatusCreated, g)
}

// listBreakGlass is GET /break-glass[?all=true]: the grants awaiting review (all with all=true),
// newest first, with their reasons; the read is audited.
func (s *Server) listBreakGlass(c echo.Context) error {
	limit := 100
	if err := queryLimit(c, 1000, "invalid_limit", &limit); err != nil {
		return err
	}
	ctx := c.Request().Context()
	if err := s.auditRead(ctx, c, "access.break_glass.listed", audit.Object{Type: "break_glass"}, nil); err != nil {
		return err
	}
	gs, err := s.cfg.Auth.BreakGlassGrants(ctx, c.QueryParam("all") != "true", limit)
	if err != nil {
		return err
	}
	if gs == nil {
		gs = []auth.BreakGlassGrant{}
	}
	return c.JSON(http.StatusOK, map[string]any{"grants": gs})
}

// reviewBreakGlass is POST /break-glass/:id/review {note}.
func (s *Server) reviewBreakGlass(c echo.Context) error {
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return BadRequest("invalid_break_glass_id", "break-glass grant id must be a UUID")
	}
	var req struct {
		Note string `json:"note"`
	}
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	if err := s.cfg.Auth.ReviewBreakGlass(c.Request().Context(), origin(c), id, req.Note); err != nil {
		return err
	}
	Audited(c) // access.break_glass.reviewed
	return c.NoContent(http.StatusNoContent)
}

func (s *Server) listServiceAccounts(c echo.Context) error {
	list, err := s.cfg.Auth.ServiceAccounts(c.Request().Context())
	if err != nil {
		return err
	}
	if list == nil {
		list = []auth.ServiceAccount{}
	}
	return c.JSON(http.StatusOK, map[string]any{"service_accounts": list})
}

func (s *Server) listAPITokens(c echo.Context) error {
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return BadRequest("invalid_service_account_id", "service account id must be a UUID")
	}
	list, err := s.cfg.Auth.APITokens(c.Request().Context(), id)
	if err != nil {
		return err
	}
	if list == nil {
		list = []auth.APIToken{}
	}
	return c.JSON(http.StatusOK, map[string]any{"tokens": list})
}

// issueAPIToken is POST /service-accounts/:id/tokens {name, roles, days}: the token is in this
// answer only (stored hashed).
func (s *Server) issueAPIToken(c echo.Context) error {
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return BadRequest("invalid_service_account_id", "service account id must be a UUID")
	}
	var req struct {
		Name  string   `json:"name"`
		Roles []string `json:"roles"`
		Days  int      `json:"days"`
	}
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	if req.Days < 0 || req.Days > 366 {
		return BadRequest("invalid_request", "days must be 0 (the default, 90) to 366")
	}
	tok, err := s.cfg.Auth.IssueAPIToken(c.Request().Context(), origin(c), id, req.Name, req.Roles,
		time.Duration(req.Days)*24*time.Hour)
	if err != nil {
		return err
	}
	Audited(c) // policy.token_issued
	c.Response().Header().Set("Location", "/api/v1/service-accounts/"+id.String()+"/tokens")
	return c.JSON(http.StatusCreated, tok)
}

func (s *Server) revokeAPIToken(c echo.Context) error {
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return BadRequest("invalid_token_id", "token id must be a UUID")
	}
	if err := s.cfg.Auth.RevokeAPIToken(c.Request().Context(), origin(c), id); err != nil {
		return err
	}
	Audited(c) // policy.token_revoked
	return c.NoContent(http.StatusNoContent)
}

// passkeyCeremony is the answer that starts a passkey ceremony: the options to hand to
// navigator.credentials.create() or get() (the "publicKey" member), and the ceremony id to
// send back with the authenticator's answer.
type passkeyCeremony struct {
	Ceremony string `json:"ceremony"`
	Options  any    `json:"options"`
}

// passkeyAnswer is what the client sends back: the ceremony id and the PublicKeyCredential
// (its JSON, as PublicKeyCredential.toJSON() gives it).
type passkeyAnswer struct {
	Ceremony   string          `json:"ceremony"`
	Credential json.RawMessage `json:"credential"`
}

func bindPasskeyAnswer(c echo.Context) (passkeyAnswer, error) {
	var req passkeyAnswer
	if err := bindJSON(c, &req); err != nil {
		return req, err
	}
	if req.Ceremony == "" || len(req.Credential) == 0 {
		return req, BadRequest("invalid_request", "ceremony and credential are required")
	}
	return req, nil
}

// passkeyRegisterBegin is POST /auth/passkeys/register/begin: the signed-in user starts
// adding a passkey.
func (s *Server) passkeyRegisterBegin(c echo.Context) error {
	opts, id, err := s.cfg.Passkeys.BeginRegistration(c.Request().Context(), PrincipalOf(c))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, passkeyCeremony{Ceremony: id, Options: opts})
}

// passkeyRegisterFinish is POST /auth/passkeys/register/finish {ceremony, credential}: the
// passkey is verified and stored (user.passkey_added), 204.
func (s *Server) passkeyRegisterFinish(c echo.Context) error {
	req, err := bindPasskeyAnswer(c)
	if err != nil {
		return err
	}
	if err := s.cfg.Passkeys.FinishRegistration(c.Request().Context(), PrincipalOf(c), origin(c), req.Ceremony, req.Credential); err != nil {
		return err
	}
	Audited(c) // user.passkey_added
	return c.NoContent(http.StatusNoContent)
}

// passkeySignInBegin is POST /auth/passkeys/sign-in/begin: a passwordless sign-in starts
// (discoverable credentials: no name is typed).
func (s *Server) passkeySignInBegin(c echo.Context) error {
	opts, id, err := s.cfg.Passkeys.BeginLogin(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, passkeyCeremony{Ceremony: id, Options: opts})
}

// passkeySignInFinish is POST /auth/passkeys/sign-in/finish {ceremony, credential}: the
// assertion is verified and a session opened (method webauthn), answered like sign-in.
func (s *Server) passkeySignInFinish(c echo.Context) error {
	req, err := bindPasskeyAnswer(c)
	if err != nil {
		return err
	}
	sess, err := s.cfg.Passkeys.FinishLogin(c.Request().Context(), auth.PasskeyLogin{Ceremony: req.Ceremony,
		Body: req.Credential, SourceAddr: c.RealIP(), RequestID: RequestID(c)})
	if err != nil {
		return s.signInRefused(c, err)
	}
	return s.startSession(c, sess)
}
