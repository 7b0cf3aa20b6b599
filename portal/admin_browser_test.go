package portal_test

import (
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/vigilhealth/vigil/auth"
)

// TestBrowserAdminForms: in chromium, an administrator grants a clinician the clinician role
// on a second ward with the administration page's form, and the clinician, signing in, sees
// that ward's patient on the ward overview; a charge nurse saves their ward's NEWS2 settings
// without a reason and gets the coded error next to the field (nothing saved), then saves
// them with one. Labels, landmarks and contrast are checked and the pages photographed.
// Verifies: REQ-POR-040, REQ-POR-043, REQ-POR-048
func TestBrowserAdminForms(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	ctx := browser(t)
	nEmail, nSecret := s.clinician(t, auth.RoleClinician, s.ward.ID)
	nu, err := s.auth.UserByEmail(s.Ctx, nEmail)
	if err != nil {
		t.Fatal(err)
	}
	aEmail, aSecret, _ := s.staff(t, auth.RoleAdmin)

	// Before: the clinician sees Ward 7A only.
	s.signInAs(t, ctx, nEmail, nSecret)
	waitFor(t, ctx, "the ward overview", `document.body.innerText.includes("Ward 7A")`)
	if eval[bool](t, ctx, `document.body.innerText.includes("Ward 9C")`) {
		t.Fatal("the clinician sees Ward 9C before the grant")
	}
	signOutBrowser(t, ctx)

	// The administrator grants clinician on Ward 9C.
	s.signInAs(t, ctx, aEmail, aSecret)
	do(t, ctx, "open the administration", chromedp.Click(chromedp.CSS(`nav a[href="/admin"]`)), chromedp.WaitVisible(chromedp.CSS("#grant-role")))
	checkA11y(t, ctx, "administration with its forms")
	do(t, ctx, "grant clinician on Ward 9C",
		chromedp.SetValue(chromedp.CSS("#g-user"), nu.ID.String()),
		chromedp.SetValue(chromedp.CSS("#g-role"), auth.RoleClinician),
		chromedp.SetValue(chromedp.CSS("#g-ward"), string(auth.WardDomain(s.otherW.ID))),
		chromedp.Click(chromedp.CSS("#grant-role button[type=submit]")),
		chromedp.WaitVisible(chromedp.CSS("p.notice")))
	if got := eval[string](t, ctx, `document.querySelector("p.notice").textContent`); !strings.Contains(got, "now holds clinician on Ward 9C") {
		t.Errorf("after the grant the page says %q", got)
	}
	if !eval[bool](t, ctx, `!!document.querySelector('tr[data-grant-key="`+auth.UserSubject(nu.ID)+`|clinician|`+string(auth.WardDomain(s.otherW.ID))+`"]')`) {
		t.Error("the new ward membership is not listed")
	}
	checkA11y(t, ctx, "administration after a grant")
	screenshot(t, ctx, "admin-grant-role")
	signOutBrowser(t, ctx)

	// The clinician now sees Ward 9C and its patient.
	s.Clock.Add(30 * time.Second) // a fresh TOTP step for the clinician's second sign-in
	s.signInAs(t, ctx, nEmail, nSecret)
	waitFor(t, ctx, "Ward 9C's patient on the ward overview", `document.body.innerText.includes("Ward 9C") && document.body.innerText.includes("`+s.other.PHI.FamilyName+`")`)
	signOutBrowser(t, ctx)

	// A charge nurse: the ward's NEWS2 settings, a coded error first.
	cEmail, cSecret := s.clinician(t, auth.RoleChargeNurse, s.ward.ID)
	s.signInAs(t, ctx, cEmail, cSecret)
	pre := "#n-" + s.ward.ID.String() + "-"
	do(t, ctx, "open the ward settings", chromedp.Navigate(s.ts.URL+"/admin#ward-news2"), chromedp.WaitVisible(chromedp.CSS(pre+"reason")))
	do(t, ctx, "save without a reason", chromedp.Click(chromedp.CSS(pre+"acvpu")),
		chromedp.Click(chromedp.CSS(`form[data-ward="`+s.ward.ID.String()+`"] button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(pre+"reason-error")))
	if got := eval[string](t, ctx, `document.querySelector("`+pre+`reason").getAttribute("aria-describedby")`); !strings.Contains(got, "reason-error") {
		t.Errorf("the reason field is described by %q", got)
	}
	if !eval[bool](t, ctx, `document.querySelector("`+pre+`acvpu").checked`) {
		t.Error("the refused form lost what was ticked")
	}
	if cur, _ := s.rules.WardNEWS2Settings(s.Ctx); len(cur) != 0 {
		t.Errorf("a refused form stored settings: %+v", cur)
	}
	checkA11y(t, ctx, "ward settings with an error")
	do(t, ctx, "scroll to the form", chromedp.ScrollIntoView(chromedp.CSS(pre+"reason")))
	screenshot(t, ctx, "admin-ward-news2-error")
	do(t, ctx, "save with a reason", chromedp.SendKeys(chromedp.CSS(pre+"reason"), "ACVPU charted on rounds"),
		chromedp.Click(chromedp.CSS(`form[data-ward="`+s.ward.ID.String()+`"] button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS("p.notice")))
	if cur, _ := s.rules.WardNEWS2Settings(s.Ctx); len(cur[s.ward.ID].Charted) != 1 || cur[s.ward.ID].Charted[0] != "acvpu" {
		t.Errorf("saved settings = %+v", cur)
	}
}
