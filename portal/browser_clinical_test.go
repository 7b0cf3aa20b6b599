package portal_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/devices/envelope"
)

// signInBrowser signs a new user holding role on the stack's ward in through the sign-in page.
func (s *stack) signInBrowser(t *testing.T, ctx context.Context, role string) {
	t.Helper()
	email, secret := s.clinician(t, role, s.ward.ID)
	do(t, ctx, "sign in", chromedp.Navigate(s.ts.URL+"/signin"), chromedp.WaitVisible(chromedp.CSS("#email")),
		chromedp.SendKeys(chromedp.CSS("#email"), email), chromedp.SendKeys(chromedp.CSS("#password"), password),
		chromedp.SendKeys(chromedp.CSS("#totp"), s.code(t, secret)), chromedp.Click(chromedp.CSS("button[type=submit]")),
		chromedp.WaitVisible(chromedp.CSS("#ward")))
}

// uploadSamples sends one signed upload of the device with the samples (their times given).
func (s *stack) uploadSamples(t *testing.T, samples ...envelope.Sample) {
	t.Helper()
	d := s.device
	d.Seq++
	raw := d.Sign(t, &envelope.Upload{Device: d.ID.String(), KeyVersion: d.KV, Seq: d.Seq, SentAt: s.Clock.Now().UnixMilli(), Samples: samples})
	s.postUpload(t, raw)
}

// The clinicians' pages in Debian's chromium against a real server on real PostgreSQL: a
// device uploads a low SpO2 and the alarm the rules raise from it appears in the open alarm
// inbox without a reload; a form whose CSRF token was removed is refused; a resolve without a
// reason comes back with the coded error next to the field; the alarm is acknowledged and the
// inbox names who did it. The patient view draws its charts and follows a new upload live. A
// ward-B patient's page is refused (403 page) and break-glass with a stated reason opens it.
// The idle-timeout warning appears before logoff and "Stay signed in" keeps the session.
// Each page is checked for labels, contrast and landmarks and saved as a screenshot.
// Verifies: REQ-POR-020, REQ-POR-021, REQ-POR-022, REQ-POR-024, REQ-POR-025, REQ-POR-026, REQ-POR-027, REQ-POR-028
func TestBrowserClinicalPages(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	ctx := browser(t)
	s.signInBrowser(t, ctx, auth.RoleClinician) // a ward-A clinician
	p0 := s.patients[0].ID

	// The inbox, open before the alarm exists.
	do(t, ctx, "open the inbox", chromedp.Navigate(s.ts.URL+"/alarms"), chromedp.WaitVisible(chromedp.CSS("#inbox")))
	waitFor(t, ctx, "live inbox", `document.getElementById('live-status').dataset.state === 'live'`)
	eval[bool](t, ctx, "window.__vigilNoReload = true")

	// The device uploads a low SpO2 (and the hand-off gives the rules the same values).
	s.Clock.Add(5 * time.Second)
	now := s.Clock.Now()
	s.uploadSamples(t, envelope.Sample{Code: "59408-5", Value: 84, Unit: "%", T: now.Add(-time.Minute).UnixMilli()},
		envelope.Sample{Code: "59408-5", Value: 84, Unit: "%", T: now.UnixMilli()})
	if _, err := s.rules.Evaluate(s.Ctx, p0, []rules.Observation{
		{PatientID: p0, Code: rules.CodeSpO2, Value: 84, Unit: "%", EffectiveAt: now.Add(-time.Minute)},
		{PatientID: p0, Code: rules.CodeSpO2, Value: 84, Unit: "%", EffectiveAt: now},
		{PatientID: p0, Code: rules.CodeBodyTemperature, Value: 39.4, Unit: "Cel", EffectiveAt: now},
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the device's alarm in the inbox, live",
		`!!document.querySelector('#inbox li.inbox-item[data-priority="high"][data-state="active"]') && window.__vigilNoReload === true`)
	as, err := s.alarms.OpenAlarms(s.Ctx, p0)
	if err != nil || len(as) < 2 {
		t.Fatalf("open alarms = %v, %v", as, err)
	}
	var high, other string
	for _, a := range as {
		if a.Severity >= alarms.SeverityHigh && high == "" {
			high = a.ID.String()
		} else {
			other = a.ID.String()
		}
	}
	if high == "" {
		high, other = as[0].ID.String(), as[1].ID.String()
	}
	checkA11y(t, ctx, "alarm inbox")
	eval[bool](t, ctx, "document.activeElement && document.activeElement.blur(), window.scrollTo(0, 0), true")
	screenshot(t, ctx, "alarm-inbox")

	// A form without its CSRF token is refused.
	eval[bool](t, ctx, fmt.Sprintf(`(() => { const f = document.querySelector('#ack-%s').form;
		f.querySelector('input[name=csrf_token]').remove(); setTimeout(() => f.submit(), 0); return true; })()`, high))
	do(t, ctx, "post without CSRF", chromedp.WaitVisible(chromedp.CSS("#error-message")))
	if code := eval[string](t, ctx, "document.getElementById('error-message').dataset.code"); code != "csrf_invalid" {
		t.Errorf("CSRF-less post: error code %q, want csrf_invalid", code)
	}
	if st := eval[string](t, ctx, "document.getElementById('error-message').dataset.status"); st != "403" {
		t.Errorf("CSRF-less post: status %s, want 403", st)
	}
	screenshot(t, ctx, "csrf-refused")
	if a, _ := s.alarms.Get(s.Ctx, as[0].ID); a.AckedAt != nil {
		t.Fatal("a CSRF-less post acknowledged the alarm")
	}

	// A resolve without a reason: the coded error next to the field, which it describes.
	do(t, ctx, "resolve without a reason", chromedp.Navigate(s.ts.URL+"/alarms"), chromedp.WaitVisible(chromedp.CSS("#inbox")),
		chromedp.Click(chromedp.CSS("#resolve-"+other)), chromedp.WaitVisible(chromedp.CSS("#resolve-reason-err-"+other)))
	if code := eval[string](t, ctx, fmt.Sprintf("document.getElementById('resolve-reason-err-%s').dataset.code", other)); code != "resolve_reason_required" {
		t.Errorf("resolve error code = %q", code)
	}
	if d := eval[string](t, ctx, fmt.Sprintf("document.getElementById('resolve-reason-%s').getAttribute('aria-describedby')", other)); d != "resolve-reason-err-"+other {
		t.Errorf("the reason field is not described by its error: %q", d)
	}
	if a, _ := s.alarms.Get(s.Ctx, uuid.MustParse(other)); a.State == alarms.StateResolved {
		t.Fatal("a resolve without a reason was stored")
	}
	checkA11y(t, ctx, "alarm inbox with an error")
	screenshot(t, ctx, "alarm-inbox-error")

	// Acknowledge: the inbox says who and when.
	do(t, ctx, "acknowledge", chromedp.Click(chromedp.CSS("#ack-"+high)), chromedp.WaitVisible(chromedp.CSS("#inbox-notice")))
	waitFor(t, ctx, "acknowledged by the nurse", fmt.Sprintf(`(() => { const e = document.querySelector('#alarm-%s .acked-by'); return !!e && e.textContent.startsWith('Nurse nurse-'); })()`, high))
	eval[bool](t, ctx, "document.activeElement && document.activeElement.blur(), window.scrollTo(0, 0), true")
	screenshot(t, ctx, "alarm-inbox-acknowledged")

	// The patient view: charts drawn; a new upload shows up without a reload.
	do(t, ctx, "open the patient", chromedp.Click(chromedp.CSS(fmt.Sprintf(`#alarm-%s .who a`, high))), chromedp.WaitVisible(chromedp.CSS("#charts")))
	waitFor(t, ctx, "charts drawn", `document.querySelector('#chart-spo2').dataset.points > 0 && !!document.querySelector('#chart-spo2 .uplot canvas')`)
	waitFor(t, ctx, "live patient view", `document.getElementById('live-status').dataset.state === 'live'`)
	eval[bool](t, ctx, "window.__vigilNoReload = true")
	s.Clock.Add(40 * time.Second)
	s.uploadSamples(t, envelope.Sample{Code: "8867-4", Value: 131, Unit: "/min", T: s.Clock.Now().UnixMilli()})
	waitFor(t, ctx, "the new heart rate in the chart", `document.querySelector('#chart-hr').dataset.last === '131' && window.__vigilNoReload === true`)
	checkA11y(t, ctx, "patient view")
	eval[bool](t, ctx, "document.activeElement && document.activeElement.blur(), window.scrollTo(0, 0), true")
	screenshot(t, ctx, "patient")

	// A ward-B patient: refused; break-glass with a stated reason opens the record.
	do(t, ctx, "open another ward's patient", chromedp.Navigate(s.ts.URL+"/patients/"+s.other.ID.String()), chromedp.WaitVisible(chromedp.CSS("#error-message")))
	if st := eval[string](t, ctx, "document.getElementById('error-message').dataset.status"); st != "403" {
		t.Errorf("another ward's patient: status %s, want 403", st)
	}
	if strings.Contains(eval[string](t, ctx, "document.body.innerText"), "Otto") {
		t.Error("the refusal shows the patient's name")
	}
	checkA11y(t, ctx, "forbidden")
	screenshot(t, ctx, "patient-forbidden")
	do(t, ctx, "break glass", chromedp.SendKeys(chromedp.CSS("#bg-reason"), "Cardiac arrest call, covering ward 9C"),
		chromedp.Click(chromedp.CSS("#bg-submit")), chromedp.WaitVisible(chromedp.CSS("#break-glass-banner")))
	if name := eval[string](t, ctx, "document.getElementById('patient-name').textContent"); name != "Otto Elsewhere" {
		t.Errorf("break-glass page name = %q", name)
	}
	if n := s.Count(t, "SELECT count(*) FROM audit_events WHERE action = 'access.denied' AND object_id = $1", s.other.ID.String()); n < 1 {
		t.Error("the refusal was not audited")
	}
	eval[bool](t, ctx, "document.activeElement && document.activeElement.blur(), window.scrollTo(0, 0), true")
	screenshot(t, ctx, "patient-break-glass")

	// The idle-timeout warning (the page is told of a short timeout and re-arms on a
	// foreground request) and "Stay signed in".
	do(t, ctx, "back to the overview", chromedp.Navigate(s.ts.URL+"/"), chromedp.WaitVisible(chromedp.CSS("#ward")))
	if v := eval[string](t, ctx, `document.querySelector('.tile').getAttribute('hx-headers')`); !strings.Contains(v, `"X-Vigil-Background": "1"`) {
		t.Errorf("tile refreshes are not marked as background requests: %q", v)
	}
	eval[bool](t, ctx, `document.body.setAttribute('data-idle-seconds', '10'),
		document.body.dispatchEvent(new CustomEvent('htmx:afterRequest', {detail: {requestConfig: {headers: {}}}})), true`)
	waitFor(t, ctx, "the idle warning", `(() => { const b = document.getElementById('idle-warning'); return !!b && !b.hidden && /signed out in \d+ s/.test(b.textContent); })()`)
	if f := eval[string](t, ctx, "document.activeElement.id"); f != "idle-stay" {
		t.Errorf("focus on the idle warning = %q, want the Stay button", f)
	}
	screenshot(t, ctx, "idle-warning")
	eval[bool](t, ctx, `document.body.setAttribute('data-idle-seconds', '900'), true`)
	do(t, ctx, "stay signed in", chromedp.Click(chromedp.CSS("#idle-stay")))
	waitFor(t, ctx, "the warning gone", `document.getElementById('idle-warning').hidden === true`)
	time.Sleep(6 * time.Second) // past the short timeout: the page stays (re-armed with 900 s)
	if p := eval[string](t, ctx, "location.pathname"); p != "/" {
		t.Errorf("after Stay signed in the page went to %s", p)
	}
}
