package portal

import (
	"errors"
	"fmt"
	"net/http"
	"net/mail"
	"strings"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/auth"
)

// User administration forms (administrators): add a user with one role and print their
// one-time enrollment link (shown once, with its QR code), and disable or enable an account.
// Adding needs user manage and policy manage (the role grant); disabling needs user manage.

// newUserForm is the add-a-user form as submitted.
type newUserForm struct {
	Email, Name, Role, Ward string
}

// wardOption is a ward in the role form's list.
type wardOption struct {
	ID, Name string
}

// addUser is POST /admin/users.
func (p *Portal) addUser(c echo.Context) error {
	pr, creds, done, err := p.guard(c, auth.ObjUser, "manage")
	if done {
		return err
	}
	if !p.allowed(pr, auth.ObjPolicy, "manage") {
		return p.render(c, http.StatusForbidden, "denied.html", deniedData{base: p.base("Not allowed", pr, creds.SessionToken), Object: auth.ObjPolicy, Action: "manage"})
	}
	if err := p.csrf(c, pr, creds); err != nil {
		return err
	}
	r := c.Request()
	f := newUserForm{Email: strings.TrimSpace(r.PostFormValue("email")), Name: strings.TrimSpace(r.PostFormValue("name")),
		Role: r.PostFormValue("role"), Ward: r.PostFormValue("ward")}
	data := adminData{base: p.base("Administration", pr, creds.SessionToken), Show: p.mayAdmin(pr), NewUser: f, Errors: map[string]*formError{}}
	if a, err := mail.ParseAddress(f.Email); err != nil || a.Address != f.Email {
		data.Errors["email"] = &formError{Code: "invalid_email", Field: "email", Message: "Enter an e-mail address (name@example.org)."}
	}
	if f.Name == "" || len(f.Name) > 200 {
		data.Errors["name"] = &formError{Code: "name_required", Field: "name", Message: "Enter the person's name (at most 200 characters)."}
	}
	domain, ferr, err := p.checkRoleWard(r.Context(), f.Role, f.Ward, "")
	if err != nil {
		return fmt.Errorf("portal: add user: %w", err)
	}
	if ferr != nil {
		data.Errors[ferr.Field] = ferr
	}
	if len(data.Errors) > 0 {
		return p.refuse(c, pr, data, http.StatusUnprocessableEntity, "user.created", audit.Object{Type: "user"}, map[string]any{"role": f.Role, "domain": f.Ward})
	}
	o := pr.Origin(requestID(c), c.RealIP())
	ctx := r.Context()
	u, err := p.cfg.Auth.CreateUser(ctx, o, auth.Profile{Email: f.Email, DisplayName: f.Name})
	if errors.Is(err, auth.ErrConflict) {
		data.Errors["email"] = &formError{Code: "user_conflict", Field: "email", Message: "A user with this e-mail address exists."}
		return p.refuse(c, pr, data, http.StatusConflict, "user.created", audit.Object{Type: "user"}, map[string]any{"role": f.Role, "domain": f.Ward})
	}
	if err != nil {
		return fmt.Errorf("portal: add user: %w", err)
	}
	if err := p.cfg.Auth.GrantRole(ctx, o, auth.UserSubject(u.ID), f.Role, domain); err != nil {
		return fmt.Errorf("portal: add user %s: grant: %w", u.ID, err)
	}
	en, err := p.cfg.Auth.IssueEnrollment(ctx, o, u.ID)
	if err != nil {
		return fmt.Errorf("portal: add user %s: enrollment: %w", u.ID, err)
	}
	audited(c) // user.created, the grant and the enrollment, recorded by auth
	link := en.Link(c.Scheme() + "://" + r.Host)
	if data.LinkQR, err = qrPNG(link); err != nil {
		return fmt.Errorf("portal: add user: %w", err)
	}
	data.Link, data.LinkExpires, data.NewUser = link, en.ExpiresAt.UTC().Format("2006-01-02 15:04 UTC"), newUserForm{}
	data.Notice = "User " + f.Name + " added. Give them the enrollment link below; it is shown only now."
	return p.renderAdmin(c, http.StatusOK, pr, data)
}

// userStatus is POST /admin/users/:id/status (user manage): disable or enable an account.
// Disabling ends the user's sessions (auth.DisableUser).
func (p *Portal) userStatus(c echo.Context) error {
	pr, creds, done, err := p.guard(c, auth.ObjUser, "manage")
	if done {
		return err
	}
	if err := p.csrf(c, pr, creds); err != nil {
		return err
	}
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "user id must be a UUID")
	}
	data := adminData{base: p.base("Administration", pr, creds.SessionToken), Show: p.mayAdmin(pr), Errors: map[string]*formError{}}
	o, ctx := pr.Origin(requestID(c), c.RealIP()), c.Request().Context()
	switch c.Request().PostFormValue("action") {
	case "disable":
		if id == pr.ID {
			data.Errors["user"] = &formError{Code: "cannot_disable_self", Field: "user", Message: "You cannot disable your own account."}
			return p.renderAdmin(c, http.StatusConflict, pr, data)
		}
		err = p.cfg.Auth.DisableUser(ctx, o, id)
		data.Notice = "The account is disabled and its sessions ended."
	case "enable":
		err = p.cfg.Auth.EnableUser(ctx, o, id)
		data.Notice = "The account is enabled."
	default:
		data.Errors["user"] = &formError{Code: "invalid_action", Field: "user", Message: "Choose disable or enable."}
		return p.renderAdmin(c, http.StatusUnprocessableEntity, pr, data)
	}
	if errors.Is(err, auth.ErrNotFound) {
		return echo.ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("portal: user status: %w", err)
	}
	audited(c) // recorded by auth
	return p.renderAdmin(c, http.StatusOK, pr, data)
}
