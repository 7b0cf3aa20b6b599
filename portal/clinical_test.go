package portal_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
)

var csrfRE = regexp.MustCompile(`name="csrf_token" value="([^"]+)"`)

// csrfOf is the CSRF token of a page's forms.
func csrfOf(t *testing.T, html string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(html)
	if m == nil {
		t.Fatalf("the page has no form with a CSRF token:\n%s", html)
	}
	return m[1]
}

// postForm posts a form with the client (as a same-origin browser would).
func (s *stack) postForm(t *testing.T, c *http.Client, path string, form url.Values) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, s.ts.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", s.ts.URL)
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return res, body(t, res)
}

// signedIn signs a new user holding role on ward in and returns the client.
func (s *stack) signedIn(t *testing.T, role string, ward uuid.UUID) (*http.Client, string) {
	t.Helper()
	email, secret := s.clinician(t, role, ward)
	c := client(t)
	if res := s.signIn(t, c, email, password, s.code(t, secret)); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign in = %d: %s", res.StatusCode, body(t, res))
	}
	u, err := s.auth.UserByEmail(s.Ctx, email)
	if err != nil {
		t.Fatal(err)
	}
	return c, u.ID.String()
}

// raise makes the rules engine open alarms for the patient: a high-priority SpO2 alarm and a
// medium (or higher) temperature one.
func (s *stack) raise(t *testing.T, patient uuid.UUID) []alarms.Alarm {
	t.Helper()
	now := s.Clock.Now()
	if _, err := s.rules.Evaluate(s.Ctx, patient, []rules.Observation{
		{PatientID: patient, Code: rules.CodeSpO2, Value: 84, Unit: "%", EffectiveAt: now.Add(-time.Minute)},
		{PatientID: patient, Code: rules.CodeSpO2, Value: 84, Unit: "%", EffectiveAt: now},
		{PatientID: patient, Code: rules.CodeBodyTemperature, Value: 39.4, Unit: "Cel", EffectiveAt: now},
	}); err != nil {
		t.Fatal(err)
	}
	as, err := s.alarms.OpenAlarms(s.Ctx, patient)
	if err != nil || len(as) < 2 {
		t.Fatalf("open alarms = %v, %v; want at least 2", as, err)
	}
	return as
}

// The alarm inbox lists the viewer's open alarms by priority then age, with who acted and
// when; acknowledge, silence (reason and bounded duration required: coded errors next to the
// field, nothing stored, the refusal audited) and resolve work through CSRF-protected forms;
// a form without the CSRF token is refused; a stale page acting on an alarm already resolved
// gets a conflict naming who resolved it; bulk acknowledge covers one patient; filters are
// validated; another ward's alarms are not shown and may not be acted on.
// Verifies: REQ-POR-020, REQ-POR-021, REQ-POR-022, REQ-POR-023, REQ-POR-024
func TestAlarmInbox(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	as := s.raise(t, s.patients[1].ID)
	other := s.raise(t, s.other.ID)
	s.Clock.Add(10 * time.Second)
	c, uid := s.signedIn(t, auth.RoleChargeNurse, s.ward.ID)

	res := s.get(t, "/alarms", c)
	html := body(t, res)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /alarms = %d:\n%s", res.StatusCode, html)
	}
	for _, a := range as {
		if !strings.Contains(html, `id="alarm-`+a.ID.String()+`"`) {
			t.Errorf("the inbox lacks alarm %s (%s)", a.ID, a.Message)
		}
	}
	for _, a := range other {
		if strings.Contains(html, a.ID.String()) {
			t.Errorf("the inbox shows another ward's alarm %s", a.ID)
		}
	}
	if strings.Contains(html, "Elsewhere") {
		t.Error("the inbox names another ward's patient")
	}
	// Sorted by priority (high first).
	pris := regexp.MustCompile(`data-priority="(high|medium|low)"`).FindAllStringSubmatch(html[strings.Index(html, `class="inbox"`):], -1)
	rank := map[string]int{"high": 3, "medium": 2, "low": 1}
	for i := 1; i < len(pris); i++ {
		if rank[pris[i][1]] > rank[pris[i-1][1]] {
			t.Errorf("inbox order: %s after %s", pris[i][1], pris[i-1][1])
		}
	}
	tok := csrfOf(t, html)
	a0, a1 := as[0], as[1]

	// No CSRF token: refused, audited, nothing changed.
	if res, _ := s.postForm(t, c, "/alarms/"+a0.ID.String()+"/acknowledge", url.Values{}); res.StatusCode != http.StatusForbidden {
		t.Fatalf("acknowledge without CSRF = %d, want 403", res.StatusCode)
	}
	if got, _ := s.alarms.Get(s.Ctx, a0.ID); got.State != alarms.StateActive {
		t.Fatalf("alarm state after a CSRF-less post = %s", got.State)
	}
	if n := s.Count(t, "SELECT count(*) FROM audit_events WHERE action = 'auth.csrf.rejected'"); n != 1 {
		t.Errorf("%d auth.csrf.rejected events, want 1", n)
	}

	// Acknowledge.
	res, _ = s.postForm(t, c, "/alarms/"+a0.ID.String()+"/acknowledge", url.Values{"csrf_token": {tok}})
	if res.StatusCode != http.StatusSeeOther || !strings.HasPrefix(res.Header.Get("Location"), "/alarms?") {
		t.Fatalf("acknowledge = %d %q", res.StatusCode, res.Header.Get("Location"))
	}
	if got, _ := s.alarms.Get(s.Ctx, a0.ID); got.State != alarms.StateAcknowledged || got.AckedBy != uid {
		t.Fatalf("after acknowledge: state %s by %q, want acknowledged by %s", got.State, got.AckedBy, uid)
	}
	html = body(t, s.get(t, res.Header.Get("Location"), c))
	if !strings.Contains(html, "Alarm acknowledged.") || !regexp.MustCompile(`Acknowledged by <span class="acked-by">Nurse nurse-[0-9a-f]{8}</span> at \d{4}-\d\d-\d\d \d\d:\d\d UTC`).MatchString(html) {
		t.Errorf("the inbox does not say who acknowledged and when:\n%s", html)
	}

	// Silence: reason required, duration from the list; errors next to the field.
	res, html = s.postForm(t, c, "/alarms/"+a1.ID.String()+"/silence", url.Values{"csrf_token": {tok}, "reason": {"  "}, "minutes": {"600"}})
	if res.StatusCode != http.StatusUnprocessableEntity {
		t.Fatalf("silence without reason = %d, want 422", res.StatusCode)
	}
	for _, want := range []string{
		`id="silence-reason-err-` + a1.ID.String() + `" class="field-error" data-code="silence_reason_required"`,
		`id="silence-minutes-err-` + a1.ID.String() + `" class="field-error" data-code="silence_duration_invalid"`,
		`aria-invalid="true" aria-describedby="silence-reason-err-` + a1.ID.String() + `"`} {
		if !strings.Contains(html, want) {
			t.Errorf("refused silence form lacks %q", want)
		}
	}
	if got, _ := s.alarms.Get(s.Ctx, a1.ID); got.SilencedUntil != nil {
		t.Fatal("a refused silence was stored")
	}
	if n := s.Count(t, "SELECT count(*) FROM audit_events WHERE action = 'alarm.silenced' AND outcome = 'rejected' AND object_id = $1", a1.ID.String()); n != 1 {
		t.Errorf("%d rejected alarm.silenced events, want 1", n)
	}
	res, _ = s.postForm(t, c, "/alarms/"+a1.ID.String()+"/silence", url.Values{"csrf_token": {tok}, "reason": {"patient moving, probe off"}, "minutes": {"10"}})
	if res.StatusCode != http.StatusSeeOther {
		t.Fatalf("silence = %d", res.StatusCode)
	}
	if got, _ := s.alarms.Get(s.Ctx, a1.ID); got.SilencedUntil == nil || got.SilencedUntil.Sub(s.Clock.Now()) != 10*time.Minute {
		t.Fatalf("silence stored = %v", got.SilencedUntil)
	}

	// Resolve: reason required; then a stale page resolving it again gets the conflict.
	res, html = s.postForm(t, c, "/alarms/"+a1.ID.String()+"/resolve", url.Values{"csrf_token": {tok}})
	if res.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(html, `data-code="resolve_reason_required"`) {
		t.Fatalf("resolve without reason = %d", res.StatusCode)
	}
	res, _ = s.postForm(t, c, "/alarms/"+a1.ID.String()+"/resolve", url.Values{"csrf_token": {tok}, "reason": {"probe re-sited, SpO2 97"}})
	if res.StatusCode != http.StatusSeeOther {
		t.Fatalf("resolve = %d", res.StatusCode)
	}
	for _, path := range []string{"/resolve", "/acknowledge"} {
		res, html = s.postForm(t, c, "/alarms/"+a1.ID.String()+path, url.Values{"csrf_token": {tok}, "reason": {"stale page, second try"}})
		if res.StatusCode != http.StatusConflict {
			t.Fatalf("%s on a resolved alarm = %d, want 409", path, res.StatusCode)
		}
		if !regexp.MustCompile(`id="inbox-conflict" class="form-error conflict" role="alert" data-code="alarm_resolved">Could not \w+: the alarm .* was already resolved by Nurse nurse-[0-9a-f]{8} at `).MatchString(html) {
			t.Errorf("%s conflict message:\n%s", path, html)
		}
	}

	// Bulk acknowledge: every active alarm of one patient.
	s.Clock.Add(time.Minute)
	more := s.raise(t, s.patients[2].ID)
	html = body(t, s.get(t, "/alarms", c))
	if !strings.Contains(html, `id="bulk-`+s.patients[2].ID.String()+`"`) {
		t.Fatal("no bulk acknowledge for the patient")
	}
	res, _ = s.postForm(t, c, "/alarms/acknowledge-patient", url.Values{"csrf_token": {tok}, "patient_id": {s.patients[2].ID.String()}})
	if res.StatusCode != http.StatusSeeOther || !strings.Contains(res.Header.Get("Location"), "n=") {
		t.Fatalf("bulk acknowledge = %d %q", res.StatusCode, res.Header.Get("Location"))
	}
	for _, a := range more {
		if got, _ := s.alarms.Get(s.Ctx, a.ID); got.State != alarms.StateAcknowledged {
			t.Errorf("after bulk acknowledge alarm %s is %s", a.ID, got.State)
		}
	}

	// Filters: by priority; a bad value is a coded error next to the filter.
	html = body(t, s.get(t, "/alarms?priority=high", c))
	if !strings.Contains(html, `action="/alarms/`+as[0].ID.String()+`/resolve?priority=high"`) {
		t.Error("the inbox's forms do not keep the filters")
	}
	if strings.Contains(html, `data-priority="medium"`) || strings.Contains(html, `data-priority="low"`) || !strings.Contains(html, `data-priority="high"`) {
		t.Error("priority filter not applied")
	}
	res = s.get(t, "/alarms?priority=urgent", c)
	if html = body(t, res); res.StatusCode != http.StatusBadRequest || !strings.Contains(html, `data-code="invalid_priority" data-field="priority"`) {
		t.Errorf("bad filter = %d", res.StatusCode)
	}

	// Another ward's alarm: refused (403 page), audited, not changed.
	res, _ = s.postForm(t, c, "/alarms/"+other[0].ID.String()+"/acknowledge", url.Values{"csrf_token": {tok}})
	if res.StatusCode != http.StatusForbidden {
		t.Fatalf("acknowledge another ward's alarm = %d, want 403", res.StatusCode)
	}
	if got, _ := s.alarms.Get(s.Ctx, other[0].ID); got.State != alarms.StateActive {
		t.Fatal("another ward's alarm was changed")
	}
	if n := s.Count(t, "SELECT count(*) FROM audit_events WHERE action = 'access.denied' AND object_id = $1", s.other.ID.String()); n != 1 {
		t.Errorf("%d access.denied events for the other ward's patient, want 1", n)
	}
}

// A clinician (not a charge nurse) is not offered silence (the policy gives it to charge
// nurses) and a silence post is refused.
// Verifies: REQ-POR-021
func TestAlarmInboxActionsFollowPolicy(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	as := s.raise(t, s.patients[1].ID)
	c, _ := s.signedIn(t, auth.RoleClinician, s.ward.ID)
	html := body(t, s.get(t, "/alarms", c))
	if !strings.Contains(html, `id="ack-`+as[0].ID.String()+`"`) || strings.Contains(html, `id="silence-`) {
		t.Fatalf("a clinician's inbox: acknowledge offered %v, silence offered %v",
			strings.Contains(html, `id="ack-`), strings.Contains(html, `id="silence-`))
	}
	res, _ := s.postForm(t, c, "/alarms/"+as[0].ID.String()+"/silence", url.Values{"csrf_token": {csrfOf(t, html)}, "reason": {"noise"}, "minutes": {"5"}})
	if res.StatusCode != http.StatusForbidden {
		t.Fatalf("silence by a clinician = %d, want 403", res.StatusCode)
	}
}

// The patient view shows the patient's latest values, charts' data downsampled by the query
// API (1 h / 24 h / 7 d), NEWS2 with components, alarm history, device assignments and care
// team, as an audited read. Another ward's patient: 403 page (audited as access.denied) with
// the break-glass form; break-glass needs a reason (coded error next to the field, refusal
// audited) and then opens the page, marked as break-glass.
// Verifies: REQ-POR-025, REQ-POR-026, REQ-POR-027
func TestPatientView(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	c, uid := s.signedIn(t, auth.RoleClinician, s.ward.ID)
	p0 := s.patients[0].ID
	if _, err := s.Core.AddCareTeamMember(s.Ctx, admin, p0, uid, "nurse"); err != nil {
		t.Fatal(err)
	}
	s.upload(t, 5)
	s.raise(t, p0)
	s.Clock.Add(5 * time.Second)

	dev, err := s.Devices.Get(s.Ctx, s.device.ID)
	if err != nil {
		t.Fatal(err)
	}
	res := s.get(t, "/patients/"+p0.String(), c)
	html := body(t, res)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET patient = %d:\n%s", res.StatusCode, html)
	}
	for _, want := range []string{s.patients[0].PHI.GivenName, `id="chart-hr"`, `id="chart-bp"`, `id="chart-news2"`, `id="alarm-history"`,
		`id="device-history"`, dev.Serial, `id="care-team"`, "Nurse nurse-", "— nurse", `data-range="24h"`, `id="news2-table"`} {
		if !strings.Contains(html, want) {
			t.Errorf("patient page lacks %q", want)
		}
	}
	if n := s.Count(t, "SELECT count(*) FROM audit_events WHERE action = 'access.phi.read' AND object_id = $1 AND payload->>'what' = 'patient_view'", p0.String()); n != 1 {
		t.Errorf("%d patient_view reads audited, want 1", n)
	}
	for _, rg := range []string{"1h", "24h", "7d"} {
		res := s.get(t, "/patients/"+p0.String()+"/series?range="+rg, c)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("series %s = %d", rg, res.StatusCode)
		}
		var sj struct {
			Range  string `json:"range"`
			Charts []struct {
				ID string       `json:"id"`
				T  []int64      `json:"t"`
				Y  [][]*float64 `json:"y"`
			} `json:"charts"`
		}
		if err := json.NewDecoder(res.Body).Decode(&sj); err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if sj.Range != rg || len(sj.Charts) != 5 || sj.Charts[0].ID != "hr" || len(sj.Charts[0].T) == 0 || sj.Charts[0].Y[0][len(sj.Charts[0].T)-1] == nil {
			t.Errorf("series %s = %+v", rg, sj)
		}
	}
	if res := s.get(t, "/patients/"+p0.String()+"?range=1y", c); res.StatusCode != http.StatusBadRequest || !strings.Contains(body(t, res), `data-code="invalid_range"`) {
		t.Errorf("bad range = %d", res.StatusCode)
	}

	// Another ward's patient.
	op := "/patients/" + s.other.ID.String()
	res = s.get(t, op, c)
	html = body(t, res)
	if res.StatusCode != http.StatusForbidden || strings.Contains(html, "Otto") || !strings.Contains(html, `id="bg-reason"`) {
		t.Fatalf("another ward's patient = %d:\n%s", res.StatusCode, html)
	}
	if res := s.get(t, op+"/series?range=1h", c); res.StatusCode != http.StatusForbidden || !strings.Contains(body(t, res), `"code":"forbidden"`) {
		t.Errorf("another ward's patient's series = %d, want 403 with the forbidden code", res.StatusCode)
	}
	if n := s.Count(t, "SELECT count(*) FROM audit_events WHERE action = 'access.denied' AND object_id = $1", s.other.ID.String()); n != 2 {
		t.Errorf("%d access.denied events, want 2", n)
	}
	tok := csrfOf(t, html)
	res, html = s.postForm(t, c, op+"/break-glass", url.Values{"csrf_token": {tok}, "reason": {"short"}, "minutes": {"30"}})
	if res.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(html, `id="bg-reason-err" class="field-error" data-code="break_glass_reason_required"`) {
		t.Fatalf("break-glass without a reason = %d:\n%s", res.StatusCode, html)
	}
	if n := s.Count(t, "SELECT count(*) FROM audit_events WHERE action LIKE 'access.break_glass%' AND outcome = 'rejected'"); n != 1 {
		t.Errorf("%d refused break-glass events, want 1", n)
	}
	if res, _ := s.postForm(t, c, op+"/break-glass", url.Values{"reason": {"cardiac arrest call, covering ward"}, "minutes": {"30"}}); res.StatusCode != http.StatusForbidden {
		t.Fatalf("break-glass without CSRF = %d, want 403", res.StatusCode)
	}
	res, _ = s.postForm(t, c, op+"/break-glass", url.Values{"csrf_token": {tok}, "reason": {"cardiac arrest call, covering ward"}, "minutes": {"30"}})
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != op {
		t.Fatalf("break-glass = %d %q", res.StatusCode, res.Header.Get("Location"))
	}
	res = s.get(t, op, c)
	if html = body(t, res); res.StatusCode != http.StatusOK || !strings.Contains(html, "Otto") || !strings.Contains(html, `id="break-glass-banner"`) {
		t.Fatalf("after break-glass = %d", res.StatusCode)
	}
	if n := s.Count(t, "SELECT count(*) FROM audit_events WHERE action = 'access.break_glass.opened' AND outcome = 'success'"); n != 1 {
		t.Errorf("%d access.break_glass.opened events, want 1", n)
	}
	if n := s.Count(t, "SELECT count(*) FROM audit_events WHERE action = 'access.phi.read' AND object_id = $1 AND payload->>'basis' = 'break_glass'", s.other.ID.String()); n != 1 {
		t.Errorf("%d break-glass reads audited, want 1", n)
	}
}

// Two clinicians on one inbox: the second to acknowledge an alarm, from a page loaded before
// the first did, gets the conflict naming the first and when; nothing changes.
// Verifies: REQ-POR-023
func TestAlarmInboxStaleAcknowledge(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	as := s.raise(t, s.patients[1].ID)
	a, _ := s.signedIn(t, auth.RoleClinician, s.ward.ID)
	b, bid := s.signedIn(t, auth.RoleClinician, s.ward.ID)
	pageA := body(t, s.get(t, "/alarms", a))
	pageB := body(t, s.get(t, "/alarms", b))
	if res, _ := s.postForm(t, b, "/alarms/"+as[0].ID.String()+"/acknowledge", url.Values{"csrf_token": {csrfOf(t, pageB)}}); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("first acknowledge = %d", res.StatusCode)
	}
	before, _ := s.alarms.Get(s.Ctx, as[0].ID)
	res, html := s.postForm(t, a, "/alarms/"+as[0].ID.String()+"/acknowledge", url.Values{"csrf_token": {csrfOf(t, pageA)}})
	if res.StatusCode != http.StatusConflict {
		t.Fatalf("stale acknowledge = %d, want 409", res.StatusCode)
	}
	if !regexp.MustCompile(`data-code="alarm_already_acknowledged">Could not acknowledge: the alarm .* was already acknowledged by Nurse nurse-[0-9a-f]{8} at \d{4}-\d\d-\d\d \d\d:\d\d UTC\. Nothing was changed\.`).MatchString(html) {
		t.Errorf("stale acknowledge message:\n%s", html)
	}
	after, _ := s.alarms.Get(s.Ctx, as[0].ID)
	if after.AckedBy != bid || after.Revision != before.Revision {
		t.Errorf("the stale acknowledge changed the alarm: by %s revision %d → %d", after.AckedBy, before.Revision, after.Revision)
	}
}
