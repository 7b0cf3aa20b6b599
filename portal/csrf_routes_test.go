package portal_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/portal"
)

// Every state-changing portal route refuses a form without the session's CSRF token (403,
// nothing done, recorded once as auth.csrf.rejected), or — the routes used before there is a
// session (sign-in, enrollment) — a cross-site form (403, recorded once as
// http.request.rejected). The table must name every POST route portal.Routes lists, so a new
// form cannot be added without deciding how it is protected.
// Verifies: REQ-POR-083
func TestEveryPortalPostRefusesWithoutCSRF(t *testing.T) {
	s := newStack(t)
	aEmail, aSecret, _ := s.staff(t, auth.RoleAdmin)
	adm := s.signedInAs(t, aEmail, aSecret)
	qEmail, qSecret, _ := s.staff(t, auth.RoleQuality)
	quality := s.signedInAs(t, qEmail, qSecret)
	tEmail, tSecret, _ := s.staff(t, auth.RoleDeviceTechnician)
	tech := s.signedInAs(t, tEmail, tSecret)
	cEmail, cSecret := s.clinician(t, auth.RoleChargeNurse, s.ward.ID)
	charge := s.signedInAs(t, cEmail, cSecret)
	cu, _ := s.auth.UserByEmail(s.Ctx, cEmail)
	alarm := s.raiseAlarm(t, s.patients[0].ID).String()
	pt, dev, ward := s.patients[0].ID.String(), s.device.ID.String(), s.ward.ID.String()

	const crossSite = "cross-site" // refused by the Origin check, not a session's token
	rows := map[string]struct {
		c    *http.Client // nil: crossSite (no session)
		path string
		form url.Values // a form that would otherwise be done
	}{
		"POST /signin":                       {nil, "/signin", url.Values{"email": {aEmail}, "password": {password}}},
		"POST /enroll/start":                 {nil, "/enroll/start", url.Values{"token": {"x"}}},
		"POST /enroll/complete":              {nil, "/enroll/complete", url.Values{"token": {"x"}}},
		"POST /signout":                      {charge, "/signout", nil},
		"POST /devices":                      {tech, "/devices", url.Values{"serial": {"SN-CSRF"}, "model": {"m"}, "firmware": {"1"}}},
		"POST /devices/:id/status":           {tech, "/devices/" + dev + "/status", url.Values{"status": {"suspended"}, "reason": {"forged"}}},
		"POST /devices/:id/enrollment-token": {tech, "/devices/" + dev + "/enrollment-token", nil},
		"POST /admin/break-glass/:id/review": {quality, "/admin/break-glass/" + uuid.NewString() + "/review", url.Values{"note": {"ok"}}},
		"POST /admin/users":                  {adm, "/admin/users", url.Values{"email": {"forged@example.org"}, "name": {"F"}, "role": {auth.RoleAdmin}, "ward": {"*"}}},
		"POST /admin/users/:id/status":       {adm, "/admin/users/" + cu.ID.String() + "/status", url.Values{"action": {"disable"}}},
		"POST /admin/roles":                  {adm, "/admin/roles", url.Values{"user": {cu.ID.String()}, "role": {auth.RoleAdmin}, "ward": {"*"}}},
		"POST /admin/roles/revoke":           {adm, "/admin/roles/revoke", url.Values{"subject": {auth.UserSubject(cu.ID)}, "role": {auth.RoleChargeNurse}, "domain": {"ward:" + ward}}},
		"POST /admin/mfa-reset":              {adm, "/admin/mfa-reset", url.Values{"user": {cu.ID.String()}, "reason": {"forged"}}},
		"POST /admin/policy/rules":           {adm, "/admin/policy/rules", url.Values{"role": {auth.RoleClinician}, "object": {auth.ObjPolicy}, "action": {"*"}, "scope": {auth.ScopeGlobal}}},
		"POST /admin/policy/rules/remove":    {adm, "/admin/policy/rules/remove", url.Values{"role": {auth.RoleAdmin}, "object": {auth.ObjPolicy}, "action": {"manage"}, "scope": {auth.ScopeGlobal}}},
		"POST /admin/wards/:id/news2":        {charge, "/admin/wards/" + ward + "/news2", url.Values{"charted": {"temp"}, "max_age": {"4h"}, "reason": {"forged"}}},
		"POST /admin/care-teams/:id":         {charge, "/admin/care-teams/" + pt, url.Values{"clinician": {cu.ID.String()}, "role": {"nurse"}}},
		"POST /admin/care-teams/:id/remove":  {charge, "/admin/care-teams/" + pt + "/remove", url.Values{"clinician": {cu.ID.String()}}},
		"POST /alarms/:id/acknowledge":       {charge, "/alarms/" + alarm + "/acknowledge", nil},
		"POST /alarms/:id/silence":           {charge, "/alarms/" + alarm + "/silence", url.Values{"reason": {"forged"}, "minutes": {"5"}}},
		"POST /alarms/:id/resolve":           {charge, "/alarms/" + alarm + "/resolve", url.Values{"reason": {"forged"}}},
		"POST /alarms/acknowledge-patient":   {charge, "/alarms/acknowledge-patient", url.Values{"patient_id": {pt}}},
		"POST /patients/:id/break-glass":     {charge, "/patients/" + s.other.ID.String() + "/break-glass", url.Values{"reason": {"forged for the test"}, "minutes": {"30"}}},
	}
	listed := map[string]bool{}
	for _, r := range portal.Routes() {
		if !strings.HasPrefix(r, "POST ") {
			continue
		}
		listed[r] = true
		if _, ok := rows[r]; !ok {
			t.Errorf("portal route %s has no row here: decide how it refuses a forged form (the session's CSRF token, or the Origin check before there is a session)", r)
		}
	}
	for r := range rows {
		if !listed[r] {
			t.Errorf("row %s names no POST route of portal.Routes()", r)
		}
	}
	before := s.Count(t, `SELECT count(*) FROM audit_events WHERE outcome = 'success' AND action NOT IN ('access.phi.read', 'access.audit.read')`)
	for route, row := range rows {
		form := url.Values{}
		for k, v := range row.form {
			form[k] = v
		}
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, s.ts.URL+row.path, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		c, want := row.c, "auth.csrf.rejected"
		if c == nil { // before a session: a form from another site
			c, want = client(t), "http.request.rejected"
			req.Header.Set("Origin", "https://attacker.example")
		} else {
			req.Header.Set("Origin", s.ts.URL) // same-origin, but no token
		}
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		s.auditedOnce(t, route+" without CSRF", res, http.StatusForbidden, want, "rejected")
	}
	s.stillOnce(t)
	if after := s.Count(t, `SELECT count(*) FROM audit_events WHERE outcome = 'success' AND action NOT IN ('access.phi.read', 'access.audit.read')`); after != before {
		t.Errorf("forged forms did something: %d successful events after them, %d before", after, before)
	}
}
