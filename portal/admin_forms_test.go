package portal_test

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/auth"
)

// events lists the audit events of action (and object, if id is not empty), newest first.
func (s *stack) events(t testing.TB, action, objType, objID string) []chain.StoredEvent {
	t.Helper()
	page, err := s.chain.Events(s.Ctx, chain.EventFilter{Action: action, ObjectType: objType, ObjectID: objID, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	return page.Events
}

// rejected reports whether the newest event of action was recorded as a rejection with code
// among its reasons.
func (s *stack) rejected(t testing.TB, action, objType, objID, code string) bool {
	t.Helper()
	evs := s.events(t, action, objType, objID)
	return len(evs) > 0 && evs[0].Outcome == "rejected" && slices.Contains(strings.Split(evs[0].Reason, ","), code)
}

// fieldError is the coded error next to a field with that id.
func fieldError(id, code string) string {
	return `id="` + id + `-error" class="field-error" data-code="` + code + `"`
}

// TestAdminRolesMFAAndPolicyForms: an administrator grants a clinical role on a ward (a ward
// membership) and revokes it, resets a user's second factor and adds and removes policy
// lines — each refused without the CSRF token and for a viewer without the permission
// (quality), validated with coded errors next to the field (nothing stored, the refusal
// audited), recorded by auth, and answered 409 with who changed it when the page was stale.
// Verifies: REQ-POR-040, REQ-POR-041, REQ-POR-042, REQ-POR-045, REQ-POR-046
func TestAdminRolesMFAAndPolicyForms(t *testing.T) {
	s := newStack(t)
	aEmail, aSecret, aName := s.staff(t, auth.RoleAdmin)
	adm := s.signedInAs(t, aEmail, aSecret)
	au, _ := s.auth.UserByEmail(s.Ctx, aEmail)
	qEmail, qSecret, _ := s.staff(t, auth.RoleQuality)
	q := s.signedInAs(t, qEmail, qSecret)
	nEmail, nSecret := s.clinician(t, auth.RoleClinician, s.ward.ID)
	nurse := s.signedInAs(t, nEmail, nSecret)
	nu, _ := s.auth.UserByEmail(s.Ctx, nEmail)
	otherWard := string(auth.WardDomain(s.otherW.ID))
	subject := auth.UserSubject(nu.ID)

	page := body(t, s.get(t, "/admin", adm))
	for _, want := range []string{`id="grant-role"`, `id="mfa-reset"`, `id="add-line"`, `id="role-grants"`,
		`data-grant-key="` + subject + `|clinician|ward:` + s.ward.ID.String() + `"`, `action="/admin/policy/rules/remove"`} {
		if !strings.Contains(page, want) {
			t.Errorf("the administrator's page lacks %s", want)
		}
	}
	if page := body(t, s.get(t, "/admin", q)); strings.Contains(page, `id="add-line"`) || strings.Contains(page, `action="/admin/policy/rules/remove"`) {
		t.Error("quality staff (policy read only) are offered the policy forms")
	}

	// Grant a role on another ward: the clinician then sees that ward's patient.
	grant := url.Values{"user": {nu.ID.String()}, "role": {auth.RoleClinician}, "ward": {otherWard}}
	if res := s.postFormAs(t, adm, "/admin/roles", grant, false); res.StatusCode != http.StatusForbidden {
		t.Errorf("grant without CSRF = %d, want 403", res.StatusCode)
	}
	if res := s.postFormAs(t, q, "/admin/roles", grant, true); res.StatusCode != http.StatusForbidden {
		t.Errorf("quality grants a role = %d, want 403", res.StatusCode)
	}
	for _, tc := range []struct {
		form      url.Values
		id, code  string
		wantState int
	}{
		{url.Values{"user": {"nobody"}, "role": {auth.RoleClinician}, "ward": {otherWard}}, "g-user", "invalid_user", 422},
		{url.Values{"user": {nu.ID.String()}, "role": {"overlord"}, "ward": {otherWard}}, "g-role", "invalid_role", 422},
		{url.Values{"user": {nu.ID.String()}, "role": {auth.RoleClinician}, "ward": {"*"}}, "g-ward", "ward_required", 422},
		{url.Values{"user": {nu.ID.String()}, "role": {auth.RoleQuality}, "ward": {otherWard}}, "g-ward", "ward_not_allowed", 422},
		{url.Values{"user": {nu.ID.String()}, "role": {auth.RoleClinician}, "ward": {"ward:00000000-0000-0000-0000-000000000001"}}, "g-ward", "invalid_ward", 422},
	} {
		res := s.postFormAs(t, adm, "/admin/roles", tc.form, true)
		if page := body(t, res); res.StatusCode != tc.wantState || !strings.Contains(page, fieldError(tc.id, tc.code)) {
			t.Errorf("grant %v = %d, want %d with %s on %s", tc.form, res.StatusCode, tc.wantState, tc.code, tc.id)
		}
		if !s.rejected(t, "policy.role_granted", "policy", "", tc.code) {
			t.Errorf("refused grant (%s) not audited as a rejection", tc.code)
		}
	}
	if gs, _ := s.auth.Grants(s.Ctx, subject); len(gs) != 1 {
		t.Fatalf("refused grants stored something: %+v", gs)
	}
	if res := s.get(t, "/patients/"+s.other.ID.String(), nurse); res.StatusCode != http.StatusForbidden {
		t.Fatalf("before the grant, another ward's patient = %d, want 403", res.StatusCode)
	}
	res := s.postFormAs(t, adm, "/admin/roles", grant, true)
	if page := body(t, res); res.StatusCode != http.StatusOK || !strings.Contains(page, nu.Profile.DisplayName+" now holds clinician on Ward 9C.") {
		t.Fatalf("grant = %d:\n%s", res.StatusCode, page)
	}
	if ev := s.events(t, "policy.role_granted", "policy", ""); len(ev) == 0 || ev[0].Outcome != "success" || ev[0].ActorID == nil || *ev[0].ActorID != au.ID.String() {
		t.Errorf("grant not audited with the administrator as actor: %+v", ev)
	}
	if res := s.get(t, "/patients/"+s.other.ID.String(), nurse); res.StatusCode != http.StatusOK {
		t.Errorf("after the grant on Ward 9C, its patient = %d, want 200", res.StatusCode)
	}
	// The same grant from a stale page: 409, who granted it.
	res = s.postFormAs(t, adm, "/admin/roles", grant, true)
	if page := body(t, res); res.StatusCode != http.StatusConflict || !strings.Contains(page, fieldError("g-role", "role_already_held")) ||
		!strings.Contains(page, "granted by "+aName) {
		t.Errorf("second grant = %d, want 409 naming %s:\n%s", res.StatusCode, aName, page)
	}

	// Revoke it; again from a stale page: 409 naming who revoked it; one's own admin role: no.
	revoke := url.Values{"subject": {subject}, "role": {auth.RoleClinician}, "domain": {otherWard}}
	if res := s.postFormAs(t, adm, "/admin/roles/revoke", revoke, false); res.StatusCode != http.StatusForbidden {
		t.Errorf("revoke without CSRF = %d, want 403", res.StatusCode)
	}
	if res := s.postFormAs(t, q, "/admin/roles/revoke", revoke, true); res.StatusCode != http.StatusForbidden {
		t.Errorf("quality revokes = %d, want 403", res.StatusCode)
	}
	res = s.postFormAs(t, adm, "/admin/roles/revoke", revoke, true)
	if page := body(t, res); res.StatusCode != http.StatusOK || !strings.Contains(page, "Revoked clinician on Ward 9C.") {
		t.Errorf("revoke = %d", res.StatusCode)
	}
	if ev := s.events(t, "policy.role_revoked", "policy", ""); len(ev) == 0 || ev[0].Outcome != "success" {
		t.Error("revoke not audited")
	}
	if res := s.get(t, "/patients/"+s.other.ID.String(), nurse); res.StatusCode != http.StatusForbidden {
		t.Errorf("after the revocation, Ward 9C's patient = %d, want 403", res.StatusCode)
	}
	res = s.postFormAs(t, adm, "/admin/roles/revoke", revoke, true)
	if page := body(t, res); res.StatusCode != http.StatusConflict || !strings.Contains(page, fieldError("revoke", "role_not_held")) ||
		!regexp.MustCompile(`already revoked by `+regexp.QuoteMeta(aName)+` at \d{4}-\d\d-\d\d \d\d:\d\d UTC`).MatchString(page) {
		t.Errorf("stale revoke = %d, want 409 naming who revoked it:\n%s", res.StatusCode, page)
	}
	if !s.rejected(t, "policy.role_revoked", "policy", "", "role_not_held") {
		t.Error("stale revoke not audited as a rejection")
	}
	own := url.Values{"subject": {auth.UserSubject(au.ID)}, "role": {auth.RoleAdmin}, "domain": {"*"}}
	if res := s.postFormAs(t, adm, "/admin/roles/revoke", own, true); res.StatusCode != http.StatusConflict ||
		!strings.Contains(body(t, res), `data-code="cannot_revoke_own_admin"`) {
		t.Errorf("revoking one's own admin role = %d, want 409", res.StatusCode)
	}
	if gs, _ := s.auth.Grants(s.Ctx, auth.UserSubject(au.ID)); len(gs) != 1 {
		t.Errorf("the administrator's own role: %+v", gs)
	}

	// Reset the clinician's second factor: reason required; the sessions end; a new link.
	mfa := url.Values{"user": {nu.ID.String()}, "reason": {"lost phone, identity checked in person"}}
	if res := s.postFormAs(t, adm, "/admin/mfa-reset", mfa, false); res.StatusCode != http.StatusForbidden {
		t.Errorf("reset without CSRF = %d, want 403", res.StatusCode)
	}
	if res := s.postFormAs(t, q, "/admin/mfa-reset", mfa, true); res.StatusCode != http.StatusForbidden {
		t.Errorf("quality resets MFA = %d, want 403", res.StatusCode)
	}
	for _, tc := range []struct {
		form     url.Values
		id, code string
	}{
		{url.Values{"user": {nu.ID.String()}, "reason": {"  "}}, "m-reason", "reason_required"},
		{url.Values{"user": {nu.ID.String()}, "reason": {strings.Repeat("x", 501)}}, "m-reason", "reason_too_long"},
		{url.Values{"user": {"x"}, "reason": {"lost phone"}}, "m-user", "invalid_user"},
		{url.Values{"user": {au.ID.String()}, "reason": {"lost phone"}}, "m-user", "cannot_reset_self"},
	} {
		res := s.postFormAs(t, adm, "/admin/mfa-reset", tc.form, true)
		if page := body(t, res); res.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(page, fieldError(tc.id, tc.code)) {
			t.Errorf("reset %v = %d, want 422 with %s on %s", tc.form, res.StatusCode, tc.code, tc.id)
		}
	}
	if !s.rejected(t, "user.mfa_reset", "user", au.ID.String(), "cannot_reset_self") {
		t.Error("refused reset not audited as a rejection")
	}
	if u, _ := s.auth.User(s.Ctx, nu.ID); !u.HasTOTP {
		t.Fatal("a refused reset removed the second factor")
	}
	res = s.postFormAs(t, adm, "/admin/mfa-reset", mfa, true)
	page = body(t, res)
	if res.StatusCode != http.StatusOK || !strings.Contains(page, `<code id="link">`) || !strings.Contains(page, "is reset and their sessions ended") {
		t.Fatalf("reset = %d:\n%s", res.StatusCode, page)
	}
	if u, _ := s.auth.User(s.Ctx, nu.ID); u.HasTOTP {
		t.Error("after the reset the user still has TOTP")
	}
	if res := s.get(t, "/", nurse); res.StatusCode != http.StatusSeeOther {
		t.Errorf("the reset user's session still works: %d", res.StatusCode)
	}
	evs := s.events(t, "user.mfa_reset", "user", nu.ID.String())
	if len(evs) == 0 || evs[0].Outcome != "success" {
		t.Fatal("reset not audited")
	}
	if full, err := s.chain.Event(s.Ctx, evs[0].ID); err != nil || !strings.Contains(string(full.Event.Payload), "lost phone, identity checked in person") {
		t.Errorf("the reset's audit event lacks the reason: %v", err)
	}

	// Policy lines: add (validated; twice is a conflict), then remove (twice is a conflict
	// naming who removed it); the line that lets the administrator manage the policy: no.
	line := url.Values{"role": {auth.RoleQuality}, "object": {auth.ObjDevice}, "action": {"read"}, "scope": {auth.ScopeGlobal}}
	if res := s.postFormAs(t, adm, "/admin/policy/rules", line, false); res.StatusCode != http.StatusForbidden {
		t.Errorf("add line without CSRF = %d, want 403", res.StatusCode)
	}
	if res := s.postFormAs(t, q, "/admin/policy/rules", line, true); res.StatusCode != http.StatusForbidden {
		t.Errorf("quality adds a line = %d, want 403", res.StatusCode)
	}
	for _, tc := range []struct {
		field, value, id, code string
	}{
		{"role", "overlord", "p-role", "invalid_role"},
		{"object", "spaceship", "p-object", "invalid_object"},
		{"action", "Read It", "p-action", "invalid_action"},
		{"action", "", "p-action", "invalid_action"},
		{"scope", "galaxy", "p-scope", "invalid_scope"},
	} {
		f := url.Values{}
		for k, v := range line {
			f[k] = v
		}
		f.Set(tc.field, tc.value)
		res := s.postFormAs(t, adm, "/admin/policy/rules", f, true)
		if page := body(t, res); res.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(page, fieldError(tc.id, tc.code)) {
			t.Errorf("add line with %s=%q = %d, want 422 %s", tc.field, tc.value, res.StatusCode, tc.code)
		}
		if !s.rejected(t, "policy.rule_added", "policy", "", tc.code) {
			t.Errorf("refused line (%s) not audited as a rejection", tc.code)
		}
	}
	has := func() bool {
		rs, err := s.auth.Rules(s.Ctx)
		if err != nil {
			t.Fatal(err)
		}
		return slices.Contains(rs, auth.Rule{Role: auth.RoleQuality, Object: auth.ObjDevice, Action: "read", Scope: auth.ScopeGlobal})
	}
	if has() {
		t.Fatal("the test's line is in the default policy, or a refusal stored it")
	}
	res = s.postFormAs(t, adm, "/admin/policy/rules", line, true)
	if page := body(t, res); res.StatusCode != http.StatusOK || !strings.Contains(page, "Policy line added: p, quality, device, read, global.") || !has() {
		t.Errorf("add line = %d", res.StatusCode)
	}
	if ev := s.events(t, "policy.rule_added", "policy", ""); len(ev) == 0 || ev[0].Outcome != "success" {
		t.Error("added line not audited")
	}
	if res := s.get(t, "/devices", q); res.StatusCode != http.StatusOK {
		t.Errorf("with the new line quality staff read the devices: %d", res.StatusCode)
	}
	res = s.postFormAs(t, adm, "/admin/policy/rules", line, true)
	if page := body(t, res); res.StatusCode != http.StatusConflict || !strings.Contains(page, fieldError("p-action", "rule_exists")) || !strings.Contains(page, "added by "+aName) {
		t.Errorf("line added twice = %d, want 409", res.StatusCode)
	}
	res = s.postFormAs(t, adm, "/admin/policy/rules/remove", line, true)
	if page := body(t, res); res.StatusCode != http.StatusOK || has() {
		t.Errorf("remove line = %d:\n%s", res.StatusCode, page)
	}
	if ev := s.events(t, "policy.rule_removed", "policy", ""); len(ev) == 0 || ev[0].Outcome != "success" {
		t.Error("removed line not audited")
	}
	res = s.postFormAs(t, adm, "/admin/policy/rules/remove", line, true)
	if page := body(t, res); res.StatusCode != http.StatusConflict || !strings.Contains(page, fieldError("line", "rule_not_found")) ||
		!strings.Contains(page, "already removed by "+aName) {
		t.Errorf("stale remove = %d, want 409 naming who removed it:\n%s", res.StatusCode, page)
	}
	lockout := url.Values{"role": {auth.RoleAdmin}, "object": {auth.ObjPolicy}, "action": {"manage"}, "scope": {auth.ScopeGlobal}}
	if res := s.postFormAs(t, adm, "/admin/policy/rules/remove", lockout, true); res.StatusCode != http.StatusConflict ||
		!strings.Contains(body(t, res), `data-code="cannot_remove_own_access"`) {
		t.Errorf("removing one's own policy access = %d, want 409", res.StatusCode)
	}
	if !strings.Contains(body(t, s.get(t, "/admin", adm)), `id="add-line"`) {
		t.Error("the administrator lost policy manage")
	}
}

// TestAdminWardNEWS2AndCareTeamForms: a charge nurse sets their ward's NEWS2 settings (not
// another ward's; a clinician may not) and changes their patients' care teams (not another
// ward's patient's), with coded errors next to the fields, nothing stored and the refusal
// audited; a second charge nurse saving from a page loaded before the first one's change gets
// 409 naming who changed the settings; removing a member already removed is a 409 too.
// Verifies: REQ-POR-043, REQ-POR-044, REQ-POR-045, REQ-POR-046
func TestAdminWardNEWS2AndCareTeamForms(t *testing.T) {
	s := newStack(t)
	cEmail, cSecret := s.clinician(t, auth.RoleChargeNurse, s.ward.ID)
	charge := s.signedInAs(t, cEmail, cSecret)
	cu, _ := s.auth.UserByEmail(s.Ctx, cEmail)
	c2Email, c2Secret := s.clinician(t, auth.RoleChargeNurse, s.ward.ID)
	charge2 := s.signedInAs(t, c2Email, c2Secret)
	nEmail, nSecret := s.clinician(t, auth.RoleClinician, s.ward.ID)
	nurse := s.signedInAs(t, nEmail, nSecret)
	nu, _ := s.auth.UserByEmail(s.Ctx, nEmail)
	ward := s.ward.ID.String()
	path := "/admin/wards/" + ward + "/news2"

	page := body(t, s.get(t, "/admin", charge))
	if !strings.Contains(page, `action="`+path+`"`) || strings.Contains(page, `action="/admin/wards/`+s.otherW.ID.String()+`/news2"`) {
		t.Errorf("the charge nurse's settings forms: want Ward 7A's only:\n%s", page)
	}
	if strings.Contains(body(t, s.get(t, "/admin", nurse)), `class="form ward-news2"`) {
		t.Error("a clinician is offered the ward settings form")
	}
	since := func(page string) string {
		m := regexp.MustCompile(`data-ward="` + ward + `">\s*<input type="hidden" name="csrf_token" value="[^"]*"><input type="hidden" name="since" value="([^"]*)">`).FindStringSubmatch(page)
		if m == nil {
			t.Fatalf("no settings form for Ward 7A:\n%s", page)
		}
		return m[1]
	}
	stale := since(body(t, s.get(t, "/admin", charge2))) // charge nurse 2 loads the page now
	form := url.Values{"charted": {"acvpu", "temp"}, "max_age": {"4h"}, "reason": {"consciousness and temperature charted on rounds"}, "since": {since(page)}}
	if res := s.postFormAs(t, charge, path, form, false); res.StatusCode != http.StatusForbidden {
		t.Errorf("settings without CSRF = %d, want 403", res.StatusCode)
	}
	if res := s.postFormAs(t, nurse, path, form, true); res.StatusCode != http.StatusForbidden {
		t.Errorf("a clinician sets the ward's settings = %d, want 403", res.StatusCode)
	}
	if res := s.postFormAs(t, charge, "/admin/wards/"+s.otherW.ID.String()+"/news2", form, true); res.StatusCode != http.StatusForbidden {
		t.Errorf("another ward's settings = %d, want 403", res.StatusCode)
	}
	for _, tc := range []struct {
		field string
		value []string
		id    string
		code  string
	}{
		{"charted", []string{"acvpu", "mood"}, "n-charted", "invalid_parameter"},
		{"max_age", []string{"forever"}, "n-" + ward + "-max_age", "invalid_max_age"},
		{"max_age", []string{"25h"}, "n-" + ward + "-max_age", "invalid_max_age"},
		{"max_age", []string{"30s"}, "n-" + ward + "-max_age", "invalid_max_age"},
		{"reason", []string{" "}, "n-" + ward + "-reason", "reason_required"},
	} {
		f := url.Values{}
		for k, v := range form {
			f[k] = v
		}
		f[tc.field] = tc.value
		res := s.postFormAs(t, charge, path, f, true)
		want := fieldError(tc.id, tc.code)
		if tc.id == "n-charted" {
			want = fieldError("n-"+ward+"-charted", tc.code)
		}
		if page := body(t, res); res.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(page, want) {
			t.Errorf("settings with %s=%v = %d, want 422 %s", tc.field, tc.value, res.StatusCode, tc.code)
		}
		if !s.rejected(t, "rules.ward_news2_set", "ward", ward, tc.code) {
			t.Errorf("refused settings (%s) not audited as a rejection", tc.code)
		}
	}
	if cur, _ := s.rules.WardNEWS2Settings(s.Ctx); len(cur) != 0 {
		t.Fatalf("refused settings were stored: %+v", cur)
	}
	res := s.postFormAs(t, charge, path, form, true)
	if page = body(t, res); res.StatusCode != http.StatusOK || !strings.Contains(page, "NEWS2 settings of Ward 7A saved.") {
		t.Fatalf("settings = %d:\n%s", res.StatusCode, page)
	}
	cur, _ := s.rules.WardNEWS2Settings(s.Ctx)
	if got := cur[s.ward.ID]; got.MaxAge != 4*time.Hour || !slices.Equal(got.Charted, []string{"acvpu", "temp"}) || got.UpdatedBy != cu.ID.String() {
		t.Errorf("stored settings = %+v", got)
	}
	if ev := s.events(t, "rules.ward_news2_set", "ward", ward); len(ev) == 0 || ev[0].Outcome != "success" {
		t.Error("settings not audited")
	}
	// Charge nurse 2, from the page loaded before: 409 naming the first, nothing stored.
	f2 := url.Values{"charted": {"acvpu"}, "max_age": {"12h"}, "reason": {"night shift"}, "since": {stale}}
	res = s.postFormAs(t, charge2, path, f2, true)
	if page := body(t, res); res.StatusCode != http.StatusConflict || !strings.Contains(page, `id="n-`+ward+`-form-error" class="field-error" data-code="settings_changed"`) ||
		!strings.Contains(page, "by "+cu.Profile.DisplayName+" at ") {
		t.Errorf("stale settings = %d, want 409 naming %s:\n%s", res.StatusCode, cu.Profile.DisplayName, page)
	}
	if again, _ := s.rules.WardNEWS2Settings(s.Ctx); again[s.ward.ID].MaxAge != 4*time.Hour {
		t.Error("the stale form changed the settings")
	}
	if !s.rejected(t, "rules.ward_news2_set", "ward", ward, "stale_settings") {
		t.Error("the stale form's refusal is not audited")
	}
	// Reloaded, the page carries the new version and the save goes through.
	f2.Set("since", since(body(t, s.get(t, "/admin", charge2))))
	if res := s.postFormAs(t, charge2, path, f2, true); res.StatusCode != http.StatusOK {
		t.Errorf("save after reload = %d", res.StatusCode)
	}

	// Care teams: the charge nurse adds the clinician to a patient's team and removes them.
	p1 := s.patients[1]
	add := "/admin/care-teams/" + p1.ID.String()
	member := url.Values{"clinician": {nu.ID.String()}, "role": {"primary nurse"}}
	if res := s.postFormAs(t, charge, add, member, false); res.StatusCode != http.StatusForbidden {
		t.Errorf("care team without CSRF = %d, want 403", res.StatusCode)
	}
	if res := s.postFormAs(t, nurse, add, member, true); res.StatusCode != http.StatusForbidden {
		t.Errorf("a clinician changes a care team = %d, want 403", res.StatusCode)
	}
	if res := s.postFormAs(t, charge, "/admin/care-teams/"+s.other.ID.String(), member, true); res.StatusCode != http.StatusForbidden {
		t.Errorf("another ward's patient's care team = %d, want 403", res.StatusCode)
	}
	if ev := s.events(t, "access.denied", "patient", s.other.ID.String()); len(ev) == 0 {
		t.Error("the refused care-team change is not audited as access.denied")
	}
	aEmail, _, _ := s.staff(t, auth.RoleAdmin)
	au, _ := s.auth.UserByEmail(s.Ctx, aEmail)
	pre := "c-" + p1.ID.String() + "-"
	for _, tc := range []struct {
		form     url.Values
		id, code string
	}{
		{url.Values{"clinician": {au.ID.String()}, "role": {"nurse"}}, pre + "clinician", "invalid_clinician"}, // not clinical
		{url.Values{"clinician": {"x"}, "role": {"nurse"}}, pre + "clinician", "invalid_clinician"},
		{url.Values{"clinician": {nu.ID.String()}, "role": {""}}, pre + "role", "role_required"},
		{url.Values{"clinician": {nu.ID.String()}, "role": {strings.Repeat("r", 65)}}, pre + "role", "role_too_long"},
	} {
		res := s.postFormAs(t, charge, add, tc.form, true)
		if page := body(t, res); res.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(page, fieldError(tc.id, tc.code)) {
			t.Errorf("care team %v = %d, want 422 %s on %s", tc.form, res.StatusCode, tc.code, tc.id)
		}
		if !s.rejected(t, "care_team.member_added", "patient", p1.ID.String(), tc.code) {
			t.Errorf("refused care-team change (%s) not audited", tc.code)
		}
	}
	if team, _ := s.Core.CareTeam(s.Ctx, p1.ID); len(team) != 0 {
		t.Fatalf("refused forms changed the team: %+v", team)
	}
	res = s.postFormAs(t, charge, add, member, true)
	if page := body(t, res); res.StatusCode != http.StatusOK || !strings.Contains(page, nu.Profile.DisplayName+" (primary nurse, since") {
		t.Errorf("add member = %d:\n%s", res.StatusCode, page)
	}
	if team, _ := s.Core.CareTeam(s.Ctx, p1.ID); len(team) != 1 || team[0].ClinicianID != nu.ID.String() {
		t.Errorf("team after adding = %+v", team)
	}
	if ev := s.events(t, "care_team.member_added", "patient", p1.ID.String()); len(ev) == 0 || ev[0].Outcome != "success" || *ev[0].ActorID != cu.ID.String() {
		t.Error("adding not audited with the charge nurse as actor")
	}
	if res := s.postFormAs(t, charge, add, member, true); res.StatusCode != http.StatusConflict || !strings.Contains(body(t, res), `data-code="already_member"`) {
		t.Errorf("adding twice = %d, want 409", res.StatusCode)
	}
	remove := url.Values{"clinician": {nu.ID.String()}}
	res = s.postFormAs(t, charge, add+"/remove", remove, true)
	if page := body(t, res); res.StatusCode != http.StatusOK || !strings.Contains(page, "is off the care team of") {
		t.Errorf("remove member = %d", res.StatusCode)
	}
	if ev := s.events(t, "care_team.member_removed", "patient", p1.ID.String()); len(ev) == 0 || ev[0].Outcome != "success" {
		t.Error("removal not audited")
	}
	res = s.postFormAs(t, charge2, add+"/remove", remove, true) // charge nurse 2's page still shows the member
	if page := body(t, res); res.StatusCode != http.StatusConflict || !strings.Contains(page, fieldError("c-"+p1.ID.String()+"-member", "member_not_found")) {
		t.Errorf("stale removal = %d, want 409:\n%s", res.StatusCode, page)
	}
}

// TestSignInAfterIdleLogoff: the idle timeout's page goes to /signin?idle=1, which says why
// the viewer was signed out (and the plain sign-in page does not).
// Verifies: REQ-POR-047
func TestSignInAfterIdleLogoff(t *testing.T) {
	s := newStack(t)
	page := body(t, s.get(t, "/signin?idle=1", nil))
	idle := s.auth.Config().Session.IdleTimeout
	want := regexp.MustCompile(`<p id="idle-signed-out" class="notice" role="status">You were signed out because the portal was not used for (\d+) minutes?\.`)
	m := want.FindStringSubmatch(page)
	if m == nil || m[1] != fmt.Sprint(int(idle.Round(time.Minute)/time.Minute)) {
		t.Errorf("sign-in after an idle logoff (timeout %s) lacks the reason:\n%s", idle, page)
	}
	if strings.Contains(body(t, s.get(t, "/signin", nil)), "idle-signed-out") {
		t.Error("the plain sign-in page says the viewer was signed out for inactivity")
	}
}
