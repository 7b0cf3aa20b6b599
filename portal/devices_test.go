package portal_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"html"
	"image/png"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/devices"
)

// postFormAs posts a same-origin form with c's session; csrf adds the session's CSRF token.
func (s *stack) postFormAs(t testing.TB, c *http.Client, path string, form url.Values, csrf bool) *http.Response {
	t.Helper()
	if csrf {
		form.Set("csrf_token", auth.CSRFToken(s.session(t, c)))
	}
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, s.ts.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", s.ts.URL)
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestDevicesPages: a technician lists devices with their key, last upload and refused
// uploads and no patient data; registers one (coded errors next to the fields, CSRF
// required, duplicates refused); issues an enrollment token shown once with its QR code;
// suspends, reactivates and decommissions with a reason. Others are refused or see less.
// Verifies: REQ-POR-035, REQ-POR-036
func TestDevicesPages(t *testing.T) {
	s := newStack(t)
	s.upload(t, 3)
	bad := s.device.Upload(t, s.Clock.Now(), 1)
	bad[len(bad)-1] ^= 0xff // a broken signature, claimed by the device
	if res, err := http.Post(s.ts.URL+"/api/v1/uploads", "application/cbor", bytes.NewReader(bad)); err != nil || res.StatusCode < 400 {
		t.Fatalf("tampered upload = %v, %v; want a refusal", res.StatusCode, err)
	}

	tEmail, tSecret, _ := s.staff(t, auth.RoleDeviceTechnician)
	tech := s.signedInAs(t, tEmail, tSecret)
	res := s.get(t, "/devices", tech)
	page := body(t, res)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /devices = %d:\n%s", res.StatusCode, page)
	}
	row := regexp.MustCompile(`(?s)<tr data-device="` + s.device.ID.String() + `" data-status="active">.*?</tr>`).FindString(page)
	for _, want := range []string{`<td class="last-upload">\d+ (s|min) ago</td>`, `<td class="rejections">1</td>`, "<td>assigned</td>"} {
		if !regexp.MustCompile(want).MatchString(row) {
			t.Errorf("device row lacks %q:\n%s", want, row)
		}
	}
	pt := s.patients[0]
	for _, phi := range []string{pt.ID.String(), pt.PHI.MRN, pt.PHI.GivenName + " " + pt.PHI.FamilyName} {
		if strings.Contains(page, phi) {
			t.Errorf("the devices page shows patient data %q", phi)
		}
	}
	if !strings.Contains(page, `href="/devices" aria-current="page"`) || strings.Contains(page, `href="/audit"`) {
		t.Error("the technician's navigation is wrong (devices current, no audit trail)")
	}

	// Register: CSRF required, coded errors next to the fields, duplicates refused.
	if res := s.postFormAs(t, tech, "/devices", url.Values{"serial": {"SN-X"}, "model": {"M"}, "firmware": {"1"}}, false); res.StatusCode != http.StatusForbidden {
		t.Errorf("register without CSRF = %d, want 403", res.StatusCode)
	}
	res = s.postFormAs(t, tech, "/devices", url.Values{"serial": {""}, "model": {"VM-200"}, "firmware": {""}}, true)
	page = body(t, res)
	if res.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(page, `<p id="d-serial-error" class="field-error" data-code="serial_required">`) ||
		!strings.Contains(page, `data-code="firmware_required"`) || !strings.Contains(page, `value="VM-200"`) {
		t.Errorf("register with missing fields = %d:\n%s", res.StatusCode, page)
	}
	serial := "SN-PORTAL-" + uuid.NewString()[:6]
	res = s.postFormAs(t, tech, "/devices", url.Values{"serial": {serial}, "model": {"VM-200"}, "firmware": {"2.0.0"}}, true)
	res.Body.Close()
	loc := res.Header.Get("Location")
	if res.StatusCode != http.StatusSeeOther || !strings.HasPrefix(loc, "/devices/") {
		t.Fatalf("register = %d %q", res.StatusCode, loc)
	}
	id := uuid.MustParse(strings.TrimPrefix(loc, "/devices/"))
	if d, err := s.Devices.Get(s.Ctx, id); err != nil || d.Serial != serial {
		t.Fatalf("registered device = %+v, %v", d, err)
	}
	res = s.postFormAs(t, tech, "/devices", url.Values{"serial": {serial}, "model": {"VM-200"}, "firmware": {"2.0.0"}}, true)
	if page = body(t, res); res.StatusCode != http.StatusConflict || !strings.Contains(page, `data-code="device_conflict"`) {
		t.Errorf("duplicate serial = %d", res.StatusCode)
	}

	// An enrollment token, shown once, with its QR code.
	res = s.postFormAs(t, tech, "/devices/"+id.String()+"/enrollment-token", url.Values{}, true)
	page = html.UnescapeString(body(t, res))
	tok := regexp.MustCompile(`<code id="token">(vet_[A-Za-z0-9_-]+)</code>`).FindStringSubmatch(page)
	qr := regexp.MustCompile(`<img class="qr" id="token-qr" src="data:image/png;base64,([A-Za-z0-9+/=]+)"`).FindStringSubmatch(page)
	if res.StatusCode != http.StatusOK || tok == nil || qr == nil {
		t.Fatalf("enrollment token page = %d:\n%s", res.StatusCode, page)
	}
	raw, _ := base64.StdEncoding.DecodeString(qr[1])
	if img, err := png.Decode(bytes.NewReader(raw)); err != nil || img.Bounds().Dx() != 256 {
		t.Errorf("QR code image: %v", err)
	}
	if page = body(t, s.get(t, "/devices/"+id.String(), tech)); strings.Contains(page, tok[1]) {
		t.Error("the enrollment token is shown again")
	}

	// Status changes need a reason; each is made and shown.
	res = s.postFormAs(t, tech, "/devices/"+id.String()+"/status", url.Values{"status": {"suspended"}, "reason": {" "}}, true)
	if page = body(t, res); res.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(page, `<p id="s-reason-error" class="field-error" data-code="reason_required">`) {
		t.Errorf("suspend without a reason = %d", res.StatusCode)
	}
	for _, st := range []string{devices.StatusSuspended, devices.StatusActive, devices.StatusDecommissioned} {
		res = s.postFormAs(t, tech, "/devices/"+id.String()+"/status", url.Values{"status": {st}, "reason": {"bench test " + st}}, true)
		page = body(t, res)
		if d, err := s.Devices.Get(s.Ctx, id); res.StatusCode != http.StatusOK || err != nil || d.Status != st ||
			!strings.Contains(page, `<dd id="device-status">`+st+`</dd>`) {
			t.Errorf("status %s = %d (%v):\n%.400s", st, res.StatusCode, err, page)
		}
	}
	res = s.postFormAs(t, tech, "/devices/"+id.String()+"/status", url.Values{"status": {"active"}, "reason": {"undo"}}, true)
	if page = body(t, res); res.StatusCode != http.StatusConflict || !strings.Contains(page, `data-code="device_conflict"`) {
		t.Errorf("reactivating a decommissioned device = %d", res.StatusCode)
	}

	// A clinician may not open the devices pages; an administrator reads them without the forms.
	nEmail, nSecret := s.clinician(t, auth.RoleClinician, s.ward.ID)
	nurse := s.signedInAs(t, nEmail, nSecret)
	for _, path := range []string{"/devices", "/devices/" + id.String()} {
		if res := s.get(t, path, nurse); res.StatusCode != http.StatusForbidden {
			t.Errorf("clinician GET %s = %d, want 403", path, res.StatusCode)
		}
	}
	if res := s.postFormAs(t, nurse, "/devices", url.Values{"serial": {"SN-N"}, "model": {"M"}, "firmware": {"1"}}, true); res.StatusCode != http.StatusForbidden {
		t.Errorf("clinician register = %d, want 403", res.StatusCode)
	}
	aEmail, aSecret, _ := s.staff(t, auth.RoleAdmin)
	adm := s.signedInAs(t, aEmail, aSecret)
	page = body(t, s.get(t, "/devices", adm))
	if !strings.Contains(page, s.device.ID.String()) || strings.Contains(page, `action="/devices"`) {
		t.Error("an administrator should read the registry without the registration form")
	}
	if res := s.postFormAs(t, adm, "/devices/"+s.device.ID.String()+"/status", url.Values{"status": {"suspended"}, "reason": {"x"}}, true); res.StatusCode != http.StatusForbidden {
		t.Errorf("administrator suspend = %d, want 403", res.StatusCode)
	}
}
