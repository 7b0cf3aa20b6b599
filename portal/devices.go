package portal

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"image/png"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/boombuler/barcode"
	"github.com/boombuler/barcode/qr"
	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/devices"
)

// The devices pages (technicians, issue #15): the registry, registration, one-time
// enrollment tokens (shown once, with a QR code), suspend / reactivate / decommission with a
// reason, key history, last upload and rejection counts. No PHI: a device's patient is shown
// as "assigned" or not, never who.

// deviceRow is one device of the list.
type deviceRow struct {
	devices.Device
	Assigned   bool
	LastUpload string // "3 min ago", "never", or "—" without the audit chain
	Rejections string // rejected uploads claimed by the device in the last 24 h
}

type devicesData struct {
	base
	Devices   []deviceRow
	MayManage bool
	Form      devices.NewDevice
	Errors    map[string]*formError
	Status    string // the list's status filter
}

type deviceData struct {
	base
	Device      deviceRow
	Keys        []devices.Key
	Assignments []devices.Assignment
	MayManage   bool
	MayEnroll   bool
	Errors      map[string]*formError
	Reason      string
	Notice      string
	// Token is the one-time enrollment token, shown once (the answer to its POST only).
	Token        string
	TokenExpires string
	TokenQR      template.URL // data:image/png;base64,… of the token's QR code
}

func (p *Portal) origin(c echo.Context, pr *auth.Principal) devices.Origin {
	return devices.Origin{Actor: pr.Actor(), RequestID: requestID(c), SourceAddr: c.RealIP()}
}

// csrf checks a form's CSRF token (the session's, in the csrf_token field); a missing or
// wrong token is refused (403) and audited by auth.
func (p *Portal) csrf(c echo.Context, pr *auth.Principal, creds auth.Credentials) error {
	if err := p.cfg.Auth.CheckCSRF(c.Request().Context(), c.Request(), pr, creds); err != nil {
		if auth.CodeOf(err) != "" { // refused, and recorded by auth as auth.csrf.rejected: the one record
			audited(c)
			return echo.NewHTTPError(http.StatusForbidden, "the form's CSRF token is missing or wrong (csrf_invalid)")
		}
		return err
	}
	return nil
}

// uploadStats reads, from the audit trail, a device's last accepted upload and the uploads
// it was refused in the last 24 hours (as claimed by the upload: a forged claim counts too).
func (p *Portal) uploadStats(ctx context.Context, id uuid.UUID) (last, rejections string, err error) {
	if p.cfg.Audit == nil {
		return "—", "—", nil
	}
	now := p.cfg.Now()
	acc, err := p.cfg.Audit.Events(ctx, chain.EventFilter{ActorKind: string(audit.ActorDevice), ActorID: id.String(), Action: "upload.accepted", Limit: 1})
	if err != nil {
		return "", "", err
	}
	last = "never"
	if len(acc.Events) > 0 {
		last = age(now, acc.Events[0].Time)
	}
	rej, err := p.cfg.Audit.Events(ctx, chain.EventFilter{ActorKind: string(audit.ActorDevice), ActorID: id.String(), Action: "upload.rejected",
		From: now.Add(-24 * time.Hour), Limit: 1000})
	if err != nil {
		return "", "", err
	}
	rejections = strconv.Itoa(len(rej.Events))
	if rej.NextCursor != "" {
		rejections = "1000+"
	}
	return last, rejections, nil
}

func (p *Portal) deviceRowOf(ctx context.Context, d devices.Device) (deviceRow, error) {
	r := deviceRow{Device: d, Assigned: d.PatientID != nil}
	r.PatientID = nil // never on the page
	var err error
	r.LastUpload, r.Rejections, err = p.uploadStats(ctx, d.ID)
	return r, err
}

// devicesPage is GET /devices: the registry (device read) and, for those who may manage
// devices, the registration form.
func (p *Portal) devicesPage(c echo.Context) error {
	pr, creds, done, err := p.guard(c, auth.ObjDevice, "read")
	if done {
		return err
	}
	data := devicesData{base: p.base("Devices", pr, creds.SessionToken), MayManage: p.allowed(pr, auth.ObjDevice, "manage"),
		Status: c.QueryParam("status")}
	return p.renderDevices(c, http.StatusOK, data)
}

func (p *Portal) renderDevices(c echo.Context, status int, data devicesData) error {
	if p.cfg.Devices == nil {
		return echo.NewHTTPError(http.StatusServiceUnavailable, "the device registry is not configured")
	}
	ctx := c.Request().Context()
	switch data.Status {
	case "", devices.StatusActive, devices.StatusSuspended, devices.StatusDecommissioned:
	default:
		data.Status = ""
	}
	list, err := p.cfg.Devices.List(ctx, data.Status, uuid.Nil, 500)
	if err != nil {
		return fmt.Errorf("portal: devices: %w", err)
	}
	for _, d := range list {
		r, err := p.deviceRowOf(ctx, d)
		if err != nil {
			return fmt.Errorf("portal: devices: %w", err)
		}
		data.Devices = append(data.Devices, r)
	}
	return p.render(c, status, "devices.html", data)
}

// registerDevice is POST /devices (device manage): registers a device; coded errors next
// to the fields, nothing stored on a refusal (devices audits it).
func (p *Portal) registerDevice(c echo.Context) error {
	pr, creds, done, err := p.guard(c, auth.ObjDevice, "manage")
	if done {
		return err
	}
	if err := p.csrf(c, pr, creds); err != nil {
		return err
	}
	r := c.Request()
	nd := devices.NewDevice{Serial: strings.TrimSpace(r.PostFormValue("serial")), Model: strings.TrimSpace(r.PostFormValue("model")),
		Firmware: strings.TrimSpace(r.PostFormValue("firmware"))}
	data := devicesData{base: p.base("Devices", pr, creds.SessionToken), MayManage: true, Form: nd, Errors: map[string]*formError{}}
	for _, f := range []struct{ name, v, label string }{{"serial", nd.Serial, "serial number"}, {"model", nd.Model, "model"}, {"firmware", nd.Firmware, "firmware version"}} {
		switch {
		case f.v == "":
			data.Errors[f.name] = &formError{Code: f.name + "_required", Field: f.name, Message: "Enter the device's " + f.label + "."}
		case len(f.v) > 128:
			data.Errors[f.name] = &formError{Code: f.name + "_too_long", Field: f.name, Message: "At most 128 characters."}
		}
	}
	if len(data.Errors) > 0 {
		return p.renderDevices(c, http.StatusUnprocessableEntity, data)
	}
	d, err := p.cfg.Devices.Register(r.Context(), p.origin(c, pr), nd)
	switch {
	case errors.Is(err, devices.ErrConflict):
		data.Errors["serial"] = &formError{Code: "device_conflict", Field: "serial", Message: "A device with this serial number is already registered."}
		return p.renderDevices(c, http.StatusConflict, data)
	case errors.Is(err, devices.ErrInvalidInput):
		data.Errors["serial"] = &formError{Code: "invalid_device_request", Field: "serial", Message: "The serial, model or firmware holds characters that are not allowed."}
		return p.renderDevices(c, http.StatusUnprocessableEntity, data)
	case err != nil:
		return fmt.Errorf("portal: register device: %w", err)
	}
	audited(c) // device.registered
	return c.Redirect(http.StatusSeeOther, "/devices/"+d.ID.String())
}

func (p *Portal) deviceOf(c echo.Context) (*devices.Device, error) {
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return nil, echo.NewHTTPError(http.StatusBadRequest, "device id must be a UUID")
	}
	if p.cfg.Devices == nil {
		return nil, echo.NewHTTPError(http.StatusServiceUnavailable, "the device registry is not configured")
	}
	d, err := p.cfg.Devices.Get(c.Request().Context(), id)
	if errors.Is(err, devices.ErrNotFound) {
		return nil, echo.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("portal: device: %w", err)
	}
	return d, nil
}

// devicePage is GET /devices/:id: one device, its key history and assignment periods (no
// patient named), and the forms its viewer may use.
func (p *Portal) devicePage(c echo.Context) error {
	pr, creds, done, err := p.guard(c, auth.ObjDevice, "read")
	if done {
		return err
	}
	d, err := p.deviceOf(c)
	if err != nil {
		return err
	}
	data := deviceData{base: p.base("Device", pr, creds.SessionToken)}
	return p.renderDevice(c, http.StatusOK, pr, d, data)
}

func (p *Portal) renderDevice(c echo.Context, status int, pr *auth.Principal, d *devices.Device, data deviceData) error {
	ctx := c.Request().Context()
	var err error
	if data.Device, err = p.deviceRowOf(ctx, *d); err != nil {
		return fmt.Errorf("portal: device: %w", err)
	}
	if data.Keys, err = p.cfg.Devices.Keys(ctx, d.ID); err != nil {
		return fmt.Errorf("portal: device keys: %w", err)
	}
	as, err := p.cfg.Devices.Assignments(ctx, d.ID)
	if err != nil {
		return fmt.Errorf("portal: device assignments: %w", err)
	}
	for _, a := range as {
		if a.PatientID != nil {
			a.PatientID = &uuid.Nil // assigned, to whom is not shown (no PHI on the devices pages)
		}
		data.Assignments = append(data.Assignments, a)
	}
	data.MayManage, data.MayEnroll = p.allowed(pr, auth.ObjDevice, "manage"), p.allowed(pr, auth.ObjDevice, "enroll")
	return p.render(c, status, "device.html", data)
}

// deviceStatus is POST /devices/:id/status (device manage): suspend, reactivate or
// decommission, with a reason (required).
func (p *Portal) deviceStatus(c echo.Context) error {
	pr, creds, done, err := p.guard(c, auth.ObjDevice, "manage")
	if done {
		return err
	}
	if err := p.csrf(c, pr, creds); err != nil {
		return err
	}
	d, err := p.deviceOf(c)
	if err != nil {
		return err
	}
	r := c.Request()
	status, reason := r.PostFormValue("status"), strings.TrimSpace(r.PostFormValue("reason"))
	data := deviceData{base: p.base("Device", pr, creds.SessionToken), Reason: reason, Errors: map[string]*formError{}}
	switch {
	case status != devices.StatusActive && status != devices.StatusSuspended && status != devices.StatusDecommissioned:
		data.Errors["status"] = &formError{Code: "invalid_status", Field: "status", Message: "Choose suspend, reactivate or decommission."}
	case reason == "":
		data.Errors["reason"] = &formError{Code: "reason_required", Field: "reason", Message: "Give the reason for the change (it is kept in the audit trail)."}
	case len(reason) > 500:
		data.Errors["reason"] = &formError{Code: "reason_too_long", Field: "reason", Message: "At most 500 characters."}
	}
	if len(data.Errors) > 0 {
		return p.renderDevice(c, http.StatusUnprocessableEntity, pr, d, data)
	}
	nd, err := p.cfg.Devices.SetStatus(r.Context(), p.origin(c, pr), d.ID, status, reason)
	switch {
	case errors.Is(err, devices.ErrConflict):
		data.Errors["status"] = &formError{Code: "device_conflict", Field: "status", Message: fmt.Sprintf("The device is %s: it cannot become %s.", d.Status, status)}
		return p.renderDevice(c, http.StatusConflict, pr, d, data)
	case errors.Is(err, devices.ErrInvalidInput):
		data.Errors["reason"] = &formError{Code: "invalid_device_request", Field: "reason", Message: "The reason holds characters that are not allowed."}
		return p.renderDevice(c, http.StatusUnprocessableEntity, pr, d, data)
	case err != nil:
		return fmt.Errorf("portal: device status: %w", err)
	}
	audited(c) // the device's status event
	data.Reason, data.Notice = "", "The device is now "+nd.Status+"."
	return p.renderDevice(c, http.StatusOK, pr, nd, data)
}

// deviceToken is POST /devices/:id/enrollment-token (device enroll): a one-time enrollment
// token, shown in this answer only (it is stored as a hash), with its QR code.
func (p *Portal) deviceToken(c echo.Context) error {
	pr, creds, done, err := p.guard(c, auth.ObjDevice, "enroll")
	if done {
		return err
	}
	if err := p.csrf(c, pr, creds); err != nil {
		return err
	}
	d, err := p.deviceOf(c)
	if err != nil {
		return err
	}
	data := deviceData{base: p.base("Device", pr, creds.SessionToken), Errors: map[string]*formError{}}
	tok, exp, err := p.cfg.Devices.IssueEnrollmentToken(c.Request().Context(), p.origin(c, pr), d.ID)
	if errors.Is(err, devices.ErrConflict) {
		data.Errors["token"] = &formError{Code: "device_conflict", Field: "token", Message: "A " + d.Status + " device cannot be enrolled."}
		return p.renderDevice(c, http.StatusConflict, pr, d, data)
	}
	if err != nil {
		return fmt.Errorf("portal: enrollment token: %w", err)
	}
	audited(c) // the token's issue, recorded by devices
	img, err := qrPNG(tok)
	if err != nil {
		return fmt.Errorf("portal: enrollment token: %w", err)
	}
	data.Token, data.TokenExpires, data.TokenQR = tok, exp.UTC().Format("2006-01-02 15:04 UTC"), img
	return p.renderDevice(c, http.StatusOK, pr, d, data)
}

// qrPNG is a QR code of s as a data: URL of a PNG (the CSP allows img-src data:).
func qrPNG(s string) (template.URL, error) {
	code, err := qr.Encode(s, qr.M, qr.Auto)
	if err != nil {
		return "", err
	}
	if code, err = barcode.Scale(code, 256, 256); err != nil {
		return "", err
	}
	var b bytes.Buffer
	if err := png.Encode(&b, code); err != nil {
		return "", err
	}
	return template.URL("data:image/png;base64," + base64.StdEncoding.EncodeToString(b.Bytes())), nil //nolint:gosec // our own PNG
}
