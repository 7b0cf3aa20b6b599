package portal

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/auth"
)

// signInData is the sign-in page's model.
type signInData struct {
	base
	Email string
	// Error is the coded refusal shown above the form (role="alert"), and the field it
	// concerns is marked aria-invalid and described by it.
	Error *formError
	// OIDCName names the identity provider of the "Sign in with …" button (none when empty).
	OIDCName string
	// IdleMinutes, when not zero, says that the viewer was signed out after that many
	// minutes of inactivity (the idle timeout's page goes to /signin?idle=1).
	IdleMinutes int
}

type formError struct {
	Code    string // the stable code (auth.CodeOf), also in data-code for tests and tools
	Message string
	Field   string // "email", "password" or "totp": the field the message describes
}

// signInPage shows the sign-in form; a signed-in viewer goes to the ward overview.
func (p *Portal) signInPage(c echo.Context) error {
	pr, _, err := p.viewer(c)
	if err != nil {
		return err
	}
	if pr != nil {
		return c.Redirect(http.StatusSeeOther, "/")
	}
	data := signInData{base: p.base("Sign in", nil, ""), OIDCName: p.cfg.OIDCName}
	if c.QueryParam("idle") == "1" {
		data.IdleMinutes = max(1, int(p.cfg.Auth.Config().Session.IdleTimeout.Round(time.Minute)/time.Minute))
	}
	return p.render(c, http.StatusOK, "signin.html", data)
}

// sameOrigin refuses a cross-site form post (login CSRF): a browser says where a POST comes
// from in Sec-Fetch-Site, or at least in Origin.
func sameOrigin(r *http.Request) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" {
		return s == "same-origin"
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return true // not a browser's cross-site form (browsers send Origin on every POST)
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

// signIn posts the form to auth.Login (local password + TOTP): on success the session cookie
// is set and the browser goes to the ward overview; otherwise the form comes back with the
// coded error next to the field concerned, and nothing is stored (auth audits the attempt).
func (p *Portal) signIn(c echo.Context) error {
	r := c.Request()
	if !sameOrigin(r) {
		return echo.NewHTTPError(http.StatusForbidden, "cross-site sign-in refused")
	}
	email := strings.TrimSpace(r.PostFormValue("email"))
	data := signInData{base: p.base("Sign in", nil, ""), Email: email, OIDCName: p.cfg.OIDCName}
	password, code := r.PostFormValue("password"), strings.TrimSpace(r.PostFormValue("totp"))
	switch {
	case email == "":
		data.Error = &formError{Code: "email_required", Message: "Enter your e-mail address.", Field: "email"}
	case password == "":
		data.Error = &formError{Code: "password_required", Message: "Enter your password.", Field: "password"}
	}
	if data.Error != nil {
		return p.render(c, http.StatusUnprocessableEntity, "signin.html", data)
	}
	sess, err := p.cfg.Auth.Login(r.Context(), auth.LoginRequest{Email: email, Password: password, TOTPCode: code,
		SourceAddr: c.RealIP(), RequestID: requestID(c)})
	if err != nil {
		fe, status := signInError(err)
		if fe == nil {
			return fmt.Errorf("portal: sign in: %w", err)
		}
		if s := auth.RetryAfter(err); s > 0 {
			c.Response().Header().Set("Retry-After", fmt.Sprint(int(s.Seconds())))
		}
		audited(c) // auth recorded the refused sign-in
		data.Error = fe
		return p.render(c, status, "signin.html", data)
	}
	audited(c) // auth recorded the sign-in
	c.SetCookie(p.cfg.Auth.Cookie(sess))
	return c.Redirect(http.StatusSeeOther, "/")
}

// signInError turns auth's coded refusal into the form's message; nil for an internal error.
func signInError(err error) (*formError, int) {
	switch auth.CodeOf(err) {
	case auth.ErrInvalidCredentials.Code:
		return &formError{Code: auth.ErrInvalidCredentials.Code, Field: "password",
			Message: "The e-mail address, password or code is not right."}, http.StatusUnauthorized
	case auth.ErrMFARequired.Code:
		return &formError{Code: auth.ErrMFARequired.Code, Field: "totp",
			Message: "Enter the 6-digit code from your authenticator app."}, http.StatusUnauthorized
	case auth.ErrAccountLocked.Code:
		return &formError{Code: auth.ErrAccountLocked.Code, Field: "email",
			Message: "Too many failed attempts: sign-in is paused for this account. Try again later."}, http.StatusTooManyRequests
	}
	if errors.Is(err, auth.ErrUnauthenticated) {
		return &formError{Code: auth.ErrUnauthenticated.Code, Field: "email", Message: "Sign-in failed."}, http.StatusUnauthorized
	}
	return nil, 0
}

// signOut ends the viewer's session (CSRF token required) and clears the cookie.
func (p *Portal) signOut(c echo.Context) error {
	pr, creds, err := p.viewer(c)
	if err != nil {
		return err
	}
	if pr == nil {
		return toSignIn(c)
	}
	ctx := c.Request().Context()
	if err := p.cfg.Auth.CheckCSRF(ctx, c.Request(), pr, creds); err != nil {
		if auth.CodeOf(err) != "" { // recorded by auth (auth.csrf.rejected)
			audited(c)
			return echo.NewHTTPError(http.StatusForbidden, "the form's CSRF token is missing or wrong (csrf_invalid)")
		}
		return err
	}
	if err := p.cfg.Auth.SignOut(ctx, pr, requestID(c), c.RealIP()); err != nil {
		return fmt.Errorf("portal: sign out: %w", err)
	}
	audited(c) // recorded by auth
	c.SetCookie(p.cfg.Auth.ClearCookie())
	return c.Redirect(http.StatusSeeOther, "/signin")
}
