package portal_test

import (
	"fmt"
	"html"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/portal"
	"github.com/vigilhealth/vigil/server"
)

// auditedOnce checks that the request answered by res left exactly one audit event, of
// action (any action when want is "") besides the page's audited reads of patient data, with the outcome wanted — counted as soon as the
// answer's status arrived, before its page is read: the event is committed before the page is
// sent. It returns the page.
func (s *stack) auditedOnce(t *testing.T, what string, res *http.Response, status int, action, outcome string) string {
	t.Helper()
	rid := res.Header.Get("X-Request-Id")
	evs := s.actionEvents(t, rid)
	page := body(t, res)
	if res.StatusCode != status {
		t.Errorf("%s = %d, want %d:\n%.400s", what, res.StatusCode, status, page)
	}
	if rid == "" || len(evs) != 1 || (action != "" && evs[0].action != action) || evs[0].outcome != outcome {
		t.Errorf("%s: audit events of request %q when its answer arrived = %+v, want exactly one %s (%s)", what, rid, evs, action, outcome)
	}
	s.answered = append(s.answered, answered{what, rid})
	return page
}

type answered struct{ what, requestID string }

type actionEvent struct{ action, outcome string }

// stillOnce checks, once the server has finished every request (closed), that each request
// auditedOnce saw still has one event: nothing was added after its answer.
func (s *stack) stillOnce(t *testing.T) {
	t.Helper()
	s.ts.Close() // waits for the requests in flight
	for _, a := range s.answered {
		if evs := s.actionEvents(t, a.requestID); len(evs) != 1 {
			t.Errorf("%s: audit events of request %q once the server finished = %+v, want still one", a.what, a.requestID, evs)
		}
	}
}

// actionEvents are the audit events of a request, in order.
func (s *stack) actionEvents(t *testing.T, rid string) []actionEvent {
	t.Helper()
	type event = actionEvent
	var evs []event
	// Not counted: access.phi.read, the reads of patient data the answered page shows (its
	// names on a care-team form, say), audited as reads, whatever the action was.
	rows, err := s.Pool.Query(s.Ctx, `SELECT action, outcome FROM audit_events WHERE request_id = $1
		AND action <> 'access.phi.read' ORDER BY seq`, rid)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var e event
		if err := rows.Scan(&e.action, &e.outcome); err != nil {
			t.Fatal(err)
		}
		evs = append(evs, e)
	}
	rows.Close()
	return evs
}

// Every portal form post — done, refused by its checks, refused as stale, refused without
// the CSRF token — leaves exactly one audit event with its request id (the domain's event or
// the portal's refusal; never also the server's generic http.request.* event), committed
// before the page is answered.
// Verifies: REQ-POR-080, REQ-POR-081, REQ-POR-084
func TestPortalActionsAuditedOnce(t *testing.T) {
	s := newStack(t)
	aEmail, aSecret, _ := s.staff(t, auth.RoleAdmin)
	adm := s.signedInAs(t, aEmail, aSecret)
	cEmail, cSecret := s.clinician(t, auth.RoleChargeNurse, s.ward.ID)
	charge := s.signedInAs(t, cEmail, cSecret)
	nEmail, nSecret := s.clinician(t, auth.RoleClinician, s.ward.ID)
	nurse := s.signedInAs(t, nEmail, nSecret)
	nu, _ := s.auth.UserByEmail(s.Ctx, nEmail)
	mEmail, _ := s.clinician(t, auth.RoleClinician, s.ward.ID) // whose second factor is reset
	mu, _ := s.auth.UserByEmail(s.Ctx, mEmail)
	tEmail, tSecret, _ := s.staff(t, auth.RoleDeviceTechnician)
	tech := s.signedInAs(t, tEmail, tSecret)
	otherWard := string(auth.WardDomain(s.otherW.ID))
	post := func(c *http.Client, path string, form url.Values, csrf bool) *http.Response {
		return s.postFormAs(t, c, path, maps.Clone(form), csrf) // postFormAs adds the token to the form
	}
	const ok, rejected = "success", "rejected"

	// Roles, second factor, policy lines (administrator).
	grant := url.Values{"user": {nu.ID.String()}, "role": {auth.RoleClinician}, "ward": {otherWard}}
	s.auditedOnce(t, "grant", post(adm, "/admin/roles", grant, true), 200, "policy.role_granted", ok)
	s.auditedOnce(t, "grant again", post(adm, "/admin/roles", grant, true), 409, "policy.role_granted", rejected)
	s.auditedOnce(t, "grant to nobody", post(adm, "/admin/roles", url.Values{"user": {"nobody"}, "role": {auth.RoleClinician}, "ward": {otherWard}}, true),
		422, "policy.role_granted", rejected)
	s.auditedOnce(t, "grant without CSRF", post(adm, "/admin/roles", grant, false), 403, "auth.csrf.rejected", rejected)
	revoke := url.Values{"subject": {auth.UserSubject(nu.ID)}, "role": {auth.RoleClinician}, "domain": {otherWard}}
	s.auditedOnce(t, "revoke", post(adm, "/admin/roles/revoke", revoke, true), 200, "policy.role_revoked", ok)
	s.auditedOnce(t, "revoke again", post(adm, "/admin/roles/revoke", revoke, true), 409, "policy.role_revoked", rejected)
	line := url.Values{"role": {auth.RoleQuality}, "object": {auth.ObjDevice}, "action": {"inspect_once"}, "scope": {auth.ScopeGlobal}}
	s.auditedOnce(t, "add line", post(adm, "/admin/policy/rules", line, true), 200, "policy.rule_added", ok)
	s.auditedOnce(t, "add line again", post(adm, "/admin/policy/rules", line, true), 409, "policy.rule_added", rejected)
	s.auditedOnce(t, "remove line", post(adm, "/admin/policy/rules/remove", line, true), 200, "policy.rule_removed", ok)
	s.auditedOnce(t, "remove line again", post(adm, "/admin/policy/rules/remove", line, true), 409, "policy.rule_removed", rejected)
	s.auditedOnce(t, "MFA reset without reason", post(adm, "/admin/mfa-reset", url.Values{"user": {mu.ID.String()}}, true), 422, "user.mfa_reset", rejected)
	s.auditedOnce(t, "MFA reset", post(adm, "/admin/mfa-reset", url.Values{"user": {mu.ID.String()}, "reason": {"lost phone"}}, true),
		200, "user.mfa_reset", ok)

	// A ward's NEWS2 settings and a care team (charge nurse).
	news2 := "/admin/wards/" + s.ward.ID.String() + "/news2"
	set := url.Values{"charted": {"temp"}, "max_age": {"4h"}, "reason": {"charted on rounds"}, "since": {""}}
	s.auditedOnce(t, "NEWS2 settings", post(charge, news2, set, true), 200, "rules.ward_news2_set", ok)
	s.auditedOnce(t, "NEWS2 settings from a stale page", post(charge, news2, set, true), 409, "rules.ward_news2_set", rejected)
	set.Set("max_age", "forever")
	s.auditedOnce(t, "NEWS2 settings refused", post(charge, news2, set, true), 422, "rules.ward_news2_set", rejected)
	team := "/admin/care-teams/" + s.patients[1].ID.String()
	member := url.Values{"clinician": {nu.ID.String()}, "role": {"nurse"}}
	s.auditedOnce(t, "add member", post(charge, team, member, true), 200, "care_team.member_added", ok)
	s.auditedOnce(t, "add member again", post(charge, team, member, true), 409, "care_team.member_added", rejected)
	s.auditedOnce(t, "add member without role", post(charge, team, url.Values{"clinician": {nu.ID.String()}}, true), 422, "care_team.member_added", rejected)
	s.auditedOnce(t, "remove member", post(charge, team+"/remove", url.Values{"clinician": {nu.ID.String()}}, true), 200, "care_team.member_removed", ok)
	s.auditedOnce(t, "remove member again", post(charge, team+"/remove", url.Values{"clinician": {nu.ID.String()}}, true), 409, "care_team.member_removed", rejected)
	s.auditedOnce(t, "another ward's care team", post(charge, "/admin/care-teams/"+s.other.ID.String(), member, true), 403, "access.denied", rejected)

	// A device (technician): the form's own refusal is the server's record; a change is devices'.
	status := "/devices/" + s.device.ID.String() + "/status"
	s.auditedOnce(t, "suspend without reason", post(tech, status, url.Values{"status": {"suspended"}, "reason": {" "}}, true), 422, "http.request.rejected", rejected)
	s.auditedOnce(t, "suspend", post(tech, status, url.Values{"status": {"suspended"}, "reason": {"battery swollen"}}, true), 200, "", ok)

	// An alarm acknowledged from the inbox (the nurse), and the bulk form with nothing open.
	alarm := s.raiseAlarm(t, s.patients[0].ID)
	s.auditedOnce(t, "acknowledge", post(nurse, "/alarms/"+alarm.String()+"/acknowledge", url.Values{}, true), 303, "alarm.acknowledged", ok)
	// Refused by the lifecycle (409 stale, 422 a duration it does not allow): its rejection
	// event, committed (alarms.RefusalRecorded), is the one record.
	s.auditedOnce(t, "acknowledge again", post(nurse, "/alarms/"+alarm.String()+"/acknowledge", url.Values{}, true), 409, "alarm.acknowledged", rejected)
	s.auditedOnce(t, "silence for a duration not offered", post(charge, "/alarms/"+alarm.String()+"/silence",
		url.Values{"reason": {"turning the patient"}, "minutes": {"999"}}, true), 422, "alarm.silenced", rejected)
	s.auditedOnce(t, "bulk acknowledge of nothing", post(nurse, "/alarms/acknowledge-patient", url.Values{"patient_id": {s.patients[2].ID.String()}}, true),
		303, "http.request.completed", ok)

	// Signing in (a wrong password, then right) and out: auth's events.
	sEmail, sSecret, _ := s.staff(t, auth.RoleQuality)
	who := client(t)
	s.auditedOnce(t, "sign-in with a wrong password", s.signIn(t, who, sEmail, "wrong", s.code(t, sSecret)), 401, "", rejected)
	s.auditedOnce(t, "sign-in without a password", s.signIn(t, who, sEmail, "", ""), 422, "http.request.rejected", rejected)
	s.auditedOnce(t, "sign-in", s.signIn(t, who, sEmail, password, s.code(t, sSecret)), 303, "", ok)
	s.auditedOnce(t, "sign-out", post(who, "/signout", url.Values{}, true), 303, "", ok)
	s.stillOnce(t)
}

// Two administrators adding the same clinician to the same care team at the same moment (both
// pages showed the clinician absent): exactly one is stored and audited as added; every other
// add is answered 409 already_member, stores nothing and is audited once as a rejection.
// Verifies: REQ-POR-082
func TestCareTeamConcurrentAddOnce(t *testing.T) {
	s := newStack(t)
	cEmail, cSecret := s.clinician(t, auth.RoleChargeNurse, s.ward.ID)
	nEmail, _ := s.clinician(t, auth.RoleClinician, s.ward.ID)
	nu, _ := s.auth.UserByEmail(s.Ctx, nEmail)
	const n = 6
	clients := make([]*http.Client, n)
	for i := range clients {
		clients[i] = s.signedInAs(t, cEmail, cSecret) // a session each, as separate people would
	}
	pt := s.patients[1].ID.String()
	var wg sync.WaitGroup
	start := make(chan struct{})
	codes := make([]int, n)
	pages := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			res := s.postFormAs(t, clients[i], "/admin/care-teams/"+pt, url.Values{"clinician": {nu.ID.String()}, "role": {"nurse"}}, true)
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			codes[i], pages[i] = res.StatusCode, string(b)
		}()
	}
	close(start)
	wg.Wait()
	added := 0
	for i, c := range codes {
		switch {
		case c == http.StatusOK:
			added++
		case c == http.StatusConflict && strings.Contains(pages[i], `data-code="already_member"`):
		default:
			t.Errorf("add %d = %d, want 200 or 409 already_member:\n%.400s", i, c, pages[i])
		}
	}
	if added != 1 {
		t.Errorf("concurrent identical adds answered 200 %d times (%v), want once", added, codes)
	}
	if k := s.Count(t, `SELECT count(*) FROM core_care_team WHERE patient_id = $1 AND clinician_id = $2`, pt, nu.ID.String()); k != 1 {
		t.Errorf("care team rows of the clinician = %d, want 1", k)
	}
	q := `SELECT count(*) FROM audit_events WHERE action = 'care_team.member_added' AND object_id = $1 AND outcome = $2`
	if k := s.Count(t, q, pt, "success"); k != 1 {
		t.Errorf("care_team.member_added success events = %d, want 1", k)
	}
	if k := s.Count(t, q, pt, "rejected"); k != n-1 {
		t.Errorf("care_team.member_added rejections = %d, want %d", k, n-1)
	}
}

// The portal and the server over a recorder that cannot record (closed): a form the portal
// refuses is not shown (the refusal could not be audited: error, not the page), and an action
// whose only record is the server's http.request.completed is answered 503, not with its
// redirect — no answer leaves before its audit event is committed.
// Verifies: REQ-POR-081
func TestPortalAuditFailureNotAnswered(t *testing.T) {
	s := newStack(t)
	closed := audittest.Recorder(t, s.Pool, s.Clock.Now)
	closed.Close()
	p, err := portal.New(portal.Config{Auth: s.auth, Core: s.Core, Recorder: closed, Alarms: s.alarms, Rules: s.rules, Devices: s.Devices,
		Audit: s.chain, Now: s.Clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Pool: s.Pool, Recorder: closed, Core: s.Core, Devices: s.Devices, Alarms: s.alarms, Rules: s.rules,
		Portal: p, Auth: s.auth, Audit: s.chain, Now: s.Clock.Now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	broken := httptest.NewServer(srv.Handler())
	t.Cleanup(broken.Close)
	aEmail, aSecret, _ := s.staff(t, auth.RoleAdmin)
	adm := s.signedInAs(t, aEmail, aSecret) // on the working server; the session works on both
	nEmail, nSecret := s.clinician(t, auth.RoleClinician, s.ward.ID)
	nurse := s.signedInAs(t, nEmail, nSecret)
	on := func(c *http.Client, path string, form url.Values) (*http.Response, string) {
		t.Helper()
		form.Set("csrf_token", auth.CSRFToken(s.session(t, c)))
		req, _ := http.NewRequest(http.MethodPost, broken.URL+path, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", broken.URL)
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return res, body(t, res)
	}
	res, page := on(adm, "/admin/roles", url.Values{"user": {"nobody"}, "role": {auth.RoleClinician}, "ward": {string(auth.WardDomain(s.ward.ID))}})
	if res.StatusCode < 500 || strings.Contains(page, "invalid_user") {
		t.Errorf("a refused form whose refusal cannot be audited = %d, want an error, not the form:\n%.300s", res.StatusCode, page)
	}
	res, page = on(nurse, "/alarms/acknowledge-patient", url.Values{"patient_id": {s.patients[2].ID.String()}})
	if res.StatusCode != http.StatusServiceUnavailable || res.Header.Get("Location") != "" {
		t.Errorf("an action whose audit cannot be recorded = %d (Location %q), want 503 and no redirect:\n%.300s",
			res.StatusCode, res.Header.Get("Location"), page)
	}
	if !strings.Contains(page, fmt.Sprintf("%q", "unavailable")) {
		t.Errorf("503 without the unavailable code: %.300s", page)
	}
}

// Enrollment through the portal (the start, a refused password, the completion): each post
// leaves exactly one audit event, auth's or the server's.
// Verifies: REQ-POR-080, REQ-POR-085
func TestEnrollmentAuditedOnce(t *testing.T) {
	s := newStack(t)
	_, token := s.newEnrollment(t, auth.RoleQuality)
	c := client(t)
	post := func(path string, form url.Values) *http.Response { return s.postFormAs(t, c, path, form, false) }
	s.auditedOnce(t, "start without a token", post("/enroll/start", url.Values{"token": {""}}), 422, "http.request.rejected", "rejected")
	// A wrong link or code: auth's auth.enrollment.failed, returned coded only once committed,
	// is the one record.
	s.auditedOnce(t, "start with a wrong token", post("/enroll/start", url.Values{"token": {"vge_nope"}}), 410, "auth.enrollment.failed", "rejected")
	page := html.UnescapeString(s.auditedOnce(t, "start", post("/enroll/start", url.Values{"token": {token}}), 200, "", "success"))
	secret := regexp.MustCompile(`<code id="totp-secret">([A-Z2-7]+)</code>`).FindStringSubmatch(page)
	otpauth := regexp.MustCompile(`name="otpauth" value="(otpauth://[^"]+)"`).FindStringSubmatch(page)
	if secret == nil || otpauth == nil {
		t.Fatalf("start:\n%s", page)
	}
	form := func(code string) url.Values {
		return url.Values{"token": {token}, "secret": {secret[1]}, "otpauth": {otpauth[1]}, "password": {password}, "password2": {password}, "totp": {code}}
	}
	s.auditedOnce(t, "complete with a short password", post("/enroll/complete", url.Values{"token": {token}, "secret": {secret[1]}, "otpauth": {otpauth[1]},
		"password": {"short"}, "password2": {"short"}, "totp": {s.code(t, secret[1])}}), 422, "http.request.rejected", "rejected")
	s.auditedOnce(t, "complete with a wrong code", post("/enroll/complete", form(wrongCode(s.code(t, secret[1])))), 422, "auth.enrollment.failed", "rejected")
	s.auditedOnce(t, "complete", post("/enroll/complete", form(s.code(t, secret[1]))), 200, "", "success")
	s.auditedOnce(t, "complete a used link", post("/enroll/complete", form(s.code(t, secret[1]))), 410, "auth.enrollment.failed", "rejected")
	s.stillOnce(t)
}

// wrongCode is a 6-digit code other than code.
func wrongCode(code string) string {
	if code == "000000" {
		return "111111"
	}
	return "000000"
}
