package portal

import (
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/auth"
)

// Enrollment of a new user (issue #15): the one-time link `vigil user add` prints is
// <portal>/enroll#token=vge_…, the token in the fragment so that it reaches no server log.
// GET /enroll serves the page; web/static/enroll.js moves the token from the fragment into
// the form (or the user pastes it). POST /enroll/start shows the TOTP secret as a QR code
// (auth.StartEnrollment); POST /enroll/complete sets the password and confirms a code
// (auth.CompleteEnrollment) and shows the recovery codes once. Both posts are refused from
// another site (as the sign-in is): nobody is signed in yet, so there is no CSRF token.

type enrollData struct {
	base
	Step   string // "token", "totp", "done"
	Token  string
	Secret string
	URL    string // the otpauth:// URL (carried in the form so that an error shows the same QR code)
	QR     template.URL
	Codes  []string
	Errors map[string]*formError
}

func (p *Portal) enrollPage(c echo.Context) error {
	return p.render(c, http.StatusOK, "enroll.html", enrollData{base: p.base("Enrollment", nil, ""), Step: "token"})
}

// enrollError maps auth's refusals of an enrollment to a field's coded error.
func enrollError(err error) (*formError, int) {
	switch {
	case auth.CodeOf(err) == auth.ErrEnrollmentInvalid.Code:
		return &formError{Code: auth.ErrEnrollmentInvalid.Code, Field: "token",
			Message: "This enrollment link is not valid any more (used, replaced or expired). Ask an administrator for a new one."}, http.StatusGone
	case auth.CodeOf(err) == auth.ErrInvalidCredentials.Code:
		return &formError{Code: "totp_invalid", Field: "totp", Message: "The code is not right: enter the code your app shows now."}, http.StatusUnprocessableEntity
	case errors.Is(err, auth.ErrInvalid):
		msg := err.Error()
		if i := strings.Index(msg, ": "); i >= 0 {
			msg = msg[i+2:]
		}
		return &formError{Code: "password_policy", Field: "password", Message: strings.ToUpper(msg[:1]) + msg[1:] + "."}, http.StatusUnprocessableEntity
	}
	return nil, 0
}

// enrollRefusalAudited marks a refused enrollment audited when auth recorded the refusal: a
// coded refusal (a wrong link or code) is returned only once its auth.enrollment.failed event
// is committed (a failed record is an internal error). A password the policy refuses is not
// coded: the server records that refusal (http.request.rejected).
func enrollRefusalAudited(c echo.Context, err error) {
	if auth.CodeOf(err) != "" {
		audited(c) // auth.enrollment.failed
	}
}

func (p *Portal) enrollStart(c echo.Context) error {
	r := c.Request()
	if !sameOrigin(r) {
		return echo.NewHTTPError(http.StatusForbidden, "cross-site form refused")
	}
	tok := strings.TrimSpace(r.PostFormValue("token"))
	d := enrollData{base: p.base("Enrollment", nil, ""), Step: "token", Token: tok, Errors: map[string]*formError{}}
	if tok == "" {
		d.Errors["token"] = &formError{Code: "token_required", Field: "token", Message: "Open the link you were given, or paste its token here."}
		return p.render(c, http.StatusUnprocessableEntity, "enroll.html", d)
	}
	offer, err := p.cfg.Auth.StartEnrollment(r.Context(), auth.Origin{Actor: audit.Unauthenticated, RequestID: requestID(c), SourceAddr: c.RealIP()}, tok)
	if err != nil {
		fe, status := enrollError(err)
		if fe == nil {
			return fmt.Errorf("portal: enrollment: %w", err)
		}
		enrollRefusalAudited(c, err)
		d.Errors[fe.Field] = fe
		return p.render(c, status, "enroll.html", d)
	}
	return p.enrollTOTP(c, http.StatusOK, d, offer)
}

func (p *Portal) enrollTOTP(c echo.Context, status int, d enrollData, offer auth.TOTPOffer) error {
	img, err := qrPNG(offer.URL)
	if err != nil {
		return fmt.Errorf("portal: enrollment: %w", err)
	}
	d.Step, d.Secret, d.URL, d.QR = "totp", offer.Secret, offer.URL, img
	return p.render(c, status, "enroll.html", d)
}

func (p *Portal) enrollComplete(c echo.Context) error {
	r := c.Request()
	if !sameOrigin(r) {
		return echo.NewHTTPError(http.StatusForbidden, "cross-site form refused")
	}
	tok := strings.TrimSpace(r.PostFormValue("token"))
	pw, pw2, code := r.PostFormValue("password"), r.PostFormValue("password2"), strings.TrimSpace(r.PostFormValue("totp"))
	d := enrollData{base: p.base("Enrollment", nil, ""), Token: tok, Errors: map[string]*formError{}}
	o := auth.Origin{Actor: audit.Unauthenticated, RequestID: requestID(c), SourceAddr: c.RealIP()}
	switch {
	case pw == "":
		d.Errors["password"] = &formError{Code: "password_required", Field: "password", Message: "Choose a password."}
	case pw != pw2:
		d.Errors["password2"] = &formError{Code: "password_mismatch", Field: "password2", Message: "The two passwords differ."}
	}
	if code == "" {
		d.Errors["totp"] = &formError{Code: "totp_required", Field: "totp", Message: "Enter the 6-digit code your app shows."}
	}
	var codes []string
	var err error
	if len(d.Errors) == 0 {
		codes, err = p.cfg.Auth.CompleteEnrollment(r.Context(), o, tok, pw, code)
		if err != nil {
			fe, _ := enrollError(err)
			if fe == nil {
				return fmt.Errorf("portal: enrollment: %w", err)
			}
			d.Errors[fe.Field] = fe
			enrollRefusalAudited(c, err)
		} else {
			audited(c) // user.enrolled, committed with the enrollment
		}
	}
	if fe := d.Errors["token"]; fe != nil {
		d.Step = "token"
		return p.render(c, http.StatusGone, "enroll.html", d)
	}
	if len(d.Errors) > 0 {
		// The same secret again (a new StartEnrollment would replace the one the app holds):
		// the form carries it; the stored one stays what CompleteEnrollment checks against.
		offer := auth.TOTPOffer{Secret: r.PostFormValue("secret"), URL: r.PostFormValue("otpauth")}
		if !strings.HasPrefix(offer.URL, "otpauth://") {
			d.Step, d.Errors = "token", map[string]*formError{"token": {Code: "token_required", Field: "token", Message: "Start again from your enrollment link."}}
			return p.render(c, http.StatusUnprocessableEntity, "enroll.html", d)
		}
		return p.enrollTOTP(c, http.StatusUnprocessableEntity, d, offer)
	}
	d.Step, d.Codes, d.Token = "done", codes, ""
	return p.render(c, http.StatusOK, "enroll.html", d)
}
