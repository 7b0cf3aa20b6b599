package portal_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core/alarms"
)

// signInAs signs a user in through the sign-in form in the browser.
func (s *stack) signInAs(t *testing.T, ctx context.Context, email, secret string) {
	t.Helper()
	do(t, ctx, "sign in "+email, chromedp.Navigate(s.ts.URL+"/signin"), chromedp.WaitVisible(chromedp.CSS("#email")),
		chromedp.SendKeys(chromedp.CSS("#email"), email), chromedp.SendKeys(chromedp.CSS("#password"), password),
		chromedp.SendKeys(chromedp.CSS("#totp"), s.code(t, secret)), chromedp.Click(chromedp.CSS("button[type=submit]")),
		chromedp.WaitVisible(chromedp.CSS("form.signout")))
}

// TestBrowserAuditTrail: a clinician acknowledges an alarm in the alarm inbox; a quality officer
// finds that action in the audit browser (in chromium) with the clinician's name, opens it,
// sees the proof verified by the server under the latest checkpoint, and the page's own
// script verifies it again in the browser — and refuses a proof with one byte changed.
// Verifies: REQ-POR-030, REQ-POR-031, REQ-POR-034
func TestBrowserAuditTrail(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	ctx := browser(t)
	nurseEmail, nurseSecret := s.clinician(t, auth.RoleClinician, s.ward.ID)
	nurse := s.signedInAs(t, nurseEmail, nurseSecret)
	u, err := s.auth.UserByEmail(s.Ctx, nurseEmail)
	if err != nil {
		t.Fatal(err)
	}
	chaintest.ShipAll(t, s.chain) // a first checkpoint: the acknowledgement's batch is not the log's only leaf
	alarm := s.raiseAlarm(t, s.patients[1].ID)
	if res := s.get(t, "/ward/tiles/"+s.patients[1].ID.String(), nurse); res.StatusCode != 200 { // a read of the record
		t.Fatalf("tile = %d", res.StatusCode)
	}
	// The clinician acknowledges the alarm in the alarm inbox, in the browser.
	s.signInAs(t, ctx, nurseEmail, nurseSecret)
	do(t, ctx, "acknowledge in the inbox", chromedp.Navigate(s.ts.URL+"/alarms"), chromedp.WaitVisible(chromedp.CSS("#ack-"+alarm.String())),
		chromedp.Click(chromedp.CSS("#ack-"+alarm.String())), chromedp.WaitVisible(chromedp.CSS("#inbox-notice")))
	if a, err := s.alarms.Get(s.Ctx, alarm); err != nil || a.State != alarms.StateAcknowledged {
		t.Fatalf("alarm after the inbox's acknowledge = %v, %v", a.State, err)
	}
	signOutBrowser(t, ctx)
	cp := chaintest.ShipAll(t, s.chain)

	qEmail, qSecret, _ := s.staff(t, auth.RoleQuality)
	s.signInAs(t, ctx, qEmail, qSecret)
	do(t, ctx, "open the audit trail", chromedp.Click(chromedp.CSS(`nav a[href="/audit"]`)), chromedp.WaitVisible(chromedp.CSS("#q-action")))
	checkA11y(t, ctx, "audit trail")
	do(t, ctx, "search", chromedp.SendKeys(chromedp.CSS("#q-action"), "alarm.acknowledged"),
		chromedp.Click(chromedp.CSS("form.search button[type=submit]")), chromedp.WaitVisible(chromedp.CSS(`tr[data-action="alarm.acknowledged"]`)))
	if who := eval[string](t, ctx, `document.querySelector('tr[data-action="alarm.acknowledged"] .actor').textContent`); !strings.Contains(who, u.Profile.DisplayName) {
		t.Errorf("actor shown = %q, want %q", who, u.Profile.DisplayName)
	}
	checkA11y(t, ctx, "audit search results")
	screenshot(t, ctx, "audit-search")

	do(t, ctx, "open the event", chromedp.Click(chromedp.CSS(`tr[data-action="alarm.acknowledged"] td a`)), chromedp.WaitVisible(chromedp.CSS("#server-verdict")))
	want := fmt.Sprintf("Verified under checkpoint %d, tree size %d", cp.ID, cp.Size)
	if v := eval[string](t, ctx, `document.getElementById('server-verdict').textContent`); !strings.Contains(v, want) {
		t.Errorf("server verdict = %q, want %q", v, want)
	}
	waitFor(t, ctx, "the browser's own check", `document.getElementById('browser-verdict').dataset.code === 'verified'`)
	if v := eval[string](t, ctx, `document.getElementById('browser-verdict').textContent`); !strings.Contains(v, fmt.Sprintf("tree size %d", cp.Size)) {
		t.Errorf("browser verdict = %q", v)
	}
	if who := eval[string](t, ctx, `document.getElementById('actor').textContent`); !strings.Contains(who, u.Profile.DisplayName) {
		t.Errorf("event actor = %q", who)
	}
	checkA11y(t, ctx, "audit event")
	screenshot(t, ctx, "audit-event")

	// The browser's check refuses a proof with one changed byte, wherever it is.
	tampered, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`(async () => {
		const p = await (await fetch(document.getElementById('browser-check').dataset.proofUrl)).json();
		const flip = (h) => (h[0] === '0' ? '1' : '0') + h.slice(1);
		const out = [];
		const variants = {
			batch_root: (q) => { q.batch_root = flip(q.batch_root); },
			batch_proof: (q) => { if (q.batch_proof.length) q.batch_proof[0] = flip(q.batch_proof[0]); else q.batch_index = q.batch_index + 1; },
			inclusion: (q) => { if (q.inclusion.length) q.inclusion[0] = flip(q.inclusion[0]); else q.leaf_index = q.leaf_index + 1; },
			checkpoint: (q) => { q.checkpoint = q.checkpoint.replace(/\n(\d+)\n/, (m, n) => '\n' + (Number(n) + 1) + '\n'); q.tree_size++; },
			encoding: (q) => { q.encoding = (q.encoding[0] === 'A' ? 'B' : 'A') + q.encoding.slice(1); },
		};
		for (const [name, change] of Object.entries(variants)) {
			const q = JSON.parse(JSON.stringify(p));
			change(q);
			try { await window.VigilAudit.check(q); out.push(name + ': ACCEPTED'); } catch (e) { out.push(name + ': refused'); }
		}
		try { await window.VigilAudit.check(p); out.push('original: accepted'); } catch (e) { out.push('original: ' + e.message); }
		return out;
	})()`, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(tampered, "|") != "batch_root: refused|batch_proof: refused|inclusion: refused|checkpoint: refused|encoding: refused|original: accepted" {
		t.Errorf("browser check on changed proofs: %q", tampered)
	}

	// Who viewed this record: the clinician's read of the patient.
	do(t, ctx, "open the access history", chromedp.Navigate(s.ts.URL+"/audit/patients/"+url.PathEscape(s.patients[1].ID.String())),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-action="access.phi.read"]`)))
	if who := eval[string](t, ctx, `document.querySelector('tr[data-action="access.phi.read"] .actor').textContent`); !strings.Contains(who, u.Profile.DisplayName) {
		t.Errorf("access history actor = %q", who)
	}
	checkA11y(t, ctx, "patient access history")
	screenshot(t, ctx, "audit-patient-history")
}

// signOutBrowser signs the browser's user out with the layout's form.
func signOutBrowser(t *testing.T, ctx context.Context) {
	t.Helper()
	do(t, ctx, "sign out", chromedp.Click(chromedp.CSS("form.signout button")), chromedp.WaitVisible(chromedp.CSS("#email")))
}

// TestBrowserDevicesAdminEnrollment: in chromium, a new user enrolls from the one-time link
// (token read from the fragment, TOTP secret as a QR code, recovery codes); a technician
// registers a device (a coded error next to the field first) and issues an enrollment token
// with its QR code; an administrator and a quality officer see their sections of the
// administration page. Labels, landmarks and contrast are checked on each page, and each is
// photographed for docs/portal.md.
// Verifies: REQ-POR-035, REQ-POR-036, REQ-POR-037, REQ-POR-039
func TestBrowserDevicesAdminEnrollment(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	ctx := browser(t)

	// Enrollment from the link.
	email, token := s.newEnrollment(t, auth.RoleDeviceTechnician)
	do(t, ctx, "open the enrollment link", chromedp.Navigate(s.ts.URL+auth.EnrollmentPath+"#token="+token), chromedp.WaitVisible(chromedp.CSS("#totp-qr")))
	if h := eval[string](t, ctx, "location.hash"); h != "" {
		t.Errorf("the token stays in the address bar: %q", h)
	}
	secret := eval[string](t, ctx, "document.getElementById('totp-secret').textContent")
	checkA11y(t, ctx, "enrollment")
	screenshot(t, ctx, "enroll-totp")
	do(t, ctx, "finish enrollment", chromedp.SendKeys(chromedp.CSS("#e-password"), password), chromedp.SendKeys(chromedp.CSS("#e-password2"), password),
		chromedp.SendKeys(chromedp.CSS("#e-totp"), s.code(t, secret)), chromedp.Click(chromedp.CSS("#enroll-complete button[type=submit]")),
		chromedp.WaitVisible(chromedp.CSS("#recovery-codes")))
	s.Clock.Add(30 * time.Second)

	// The new technician signs in: devices.
	s.signInAs(t, ctx, email, secret)
	s.upload(t, 3)
	do(t, ctx, "open the devices", chromedp.Click(chromedp.CSS(`nav a[href="/devices"]`)), chromedp.WaitVisible(chromedp.CSS("#devices")))
	checkA11y(t, ctx, "devices")
	do(t, ctx, "register without a serial", chromedp.SendKeys(chromedp.CSS("#d-model"), "VM-200"), chromedp.SendKeys(chromedp.CSS("#d-firmware"), "2.0.0"),
		chromedp.Click(chromedp.CSS(`form[action="/devices"] button[type=submit]`)), chromedp.WaitVisible(chromedp.CSS("#d-serial-error")))
	if got := eval[string](t, ctx, "document.getElementById('d-serial').getAttribute('aria-describedby')"); got != "d-serial-hint d-serial-error" {
		t.Errorf("serial field described by %q", got)
	}
	checkA11y(t, ctx, "devices with an error")
	screenshot(t, ctx, "devices")
	do(t, ctx, "register", chromedp.SendKeys(chromedp.CSS("#d-serial"), "SN-BROWSER-1"),
		chromedp.Click(chromedp.CSS(`form[action="/devices"] button[type=submit]`)), chromedp.WaitVisible(chromedp.CSS("#issue-token")))
	do(t, ctx, "issue a token", chromedp.Click(chromedp.CSS("#issue-token")), chromedp.WaitVisible(chromedp.CSS("#token-qr")))
	if w := eval[float64](t, ctx, "document.getElementById('token-qr').naturalWidth"); w != 256 {
		t.Errorf("QR code image width %v, want 256", w)
	}
	checkA11y(t, ctx, "device with its enrollment token")
	screenshot(t, ctx, "device-enrollment-token")
	signOutBrowser(t, ctx)

	// An administrator: users, roles, policy.
	nEmail, nSecret := s.clinician(t, auth.RoleClinician, s.ward.ID)
	nurse := s.signedInAs(t, nEmail, nSecret)
	s.breakGlassViaAPI(t, nurse, s.other.ID.String(), "patient collapsed in the corridor")
	aEmail, aSecret, _ := s.staff(t, auth.RoleAdmin)
	s.signInAs(t, ctx, aEmail, aSecret)
	do(t, ctx, "open the administration", chromedp.Click(chromedp.CSS(`nav a[href="/admin"]`)), chromedp.WaitVisible(chromedp.CSS("#user-list")))
	checkA11y(t, ctx, "administration")
	screenshot(t, ctx, "admin")
	signOutBrowser(t, ctx)

	// Quality: the break-glass review queue.
	qEmail, qSecret, _ := s.staff(t, auth.RoleQuality)
	s.signInAs(t, ctx, qEmail, qSecret)
	do(t, ctx, "open the break-glass queue", chromedp.Navigate(s.ts.URL+"/admin#breakglass"), chromedp.WaitVisible(chromedp.CSS("#grants")))
	checkA11y(t, ctx, "break-glass review")
	screenshot(t, ctx, "admin-break-glass")
	signOutBrowser(t, ctx)

	// A clinician: the care teams of their patients, the clinical rules, each ward's NEWS2
	// settings with their versions.
	nu, err := s.auth.UserByEmail(s.Ctx, nEmail)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Core.AddCareTeamMember(s.Ctx, admin, s.patients[1].ID, nu.ID.String(), "nurse"); err != nil {
		t.Fatal(err)
	}
	if err := s.rules.SetWardNEWS2(s.Ctx, admin, s.ward.ID, []string{"temp", "acvpu"}, 4*time.Hour, "temperature and ACVPU charted every 4 h"); err != nil {
		t.Fatal(err)
	}
	s.signInAs(t, ctx, nEmail, nSecret)
	do(t, ctx, "open the clinician's administration page", chromedp.Click(chromedp.CSS(`nav a[href="/admin"]`)), chromedp.WaitVisible(chromedp.CSS("#ward-settings")))
	checkA11y(t, ctx, "administration for a clinician")
	screenshot(t, ctx, "admin-clinician")
}
