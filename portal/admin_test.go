package portal_test

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/vigilhealth/vigil/auth"
)

// breakGlassViaAPI opens break-glass access to a patient with c's session.
func (s *stack) breakGlassViaAPI(t testing.TB, c *http.Client, patient, reason string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, s.ts.URL+"/api/v1/patients/"+patient+"/break-glass",
		strings.NewReader(`{"reason":"`+reason+`"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(auth.CSRFHeader, auth.CSRFToken(s.session(t, c)))
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode >= 300 {
		t.Fatalf("break-glass = %d %s", res.StatusCode, b)
	}
}

// Verifies: REQ-POR-037
// Verifies: REQ-POR-038
// TestAdminPage: each section of the administration page shown only to those the policy
// lets read it — users with roles and wards and the policy with its versions to the
// administrator; the policy and the break-glass review queue to quality staff, who review a
// grant (note required, CSRF required); the rules with their versions and authors to
// clinicians; nothing to a technician.
func TestAdminPage(t *testing.T) {
	s := newStack(t)
	nEmail, nSecret := s.clinician(t, auth.RoleClinician, s.ward.ID)
	nurse := s.signedIn(t, nEmail, nSecret)
	nu, _ := s.auth.UserByEmail(s.Ctx, nEmail)
	s.breakGlassViaAPI(t, nurse, s.other.ID.String(), "patient collapsed in the corridor")

	aEmail, aSecret, _ := s.staff(t, auth.RoleAdmin)
	adm := s.signedIn(t, aEmail, aSecret)
	res := s.get(t, "/admin", adm)
	page := body(t, res)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("admin GET /admin = %d:\n%s", res.StatusCode, page)
	}
	if !regexp.MustCompile(`<tr data-user="` + nu.ID.String() + `"><td>` + regexp.QuoteMeta(nu.Profile.DisplayName) + `</td><td>` + nEmail + `</td><td>active</td><td>TOTP</td>\s*<td>clinician on Ward 7A</td>`).MatchString(page) {
		t.Errorf("the users section lacks the clinician with their ward:\n%s", page)
	}
	for _, want := range []string{`id="policy-rules"`, "<td>quality</td><td>audit</td><td>read</td><td>global</td>", `id="policy-versions"`, "role_granted", `href="/admin" aria-current="page"`} {
		if !strings.Contains(page, want) {
			t.Errorf("admin page lacks %q", want)
		}
	}
	for _, absent := range []string{`id="breakglass"`, `id="rules"`, "patient collapsed"} {
		if strings.Contains(page, absent) {
			t.Errorf("admin page shows %q, which the administrator may not read", absent)
		}
	}

	// Quality: the policy and the break-glass queue, not the users.
	qEmail, qSecret, qName := s.staff(t, auth.RoleQuality)
	q := s.signedIn(t, qEmail, qSecret)
	page = body(t, s.get(t, "/admin", q))
	if strings.Contains(page, `id="user-list"`) || strings.Contains(page, nEmail) || !strings.Contains(page, `id="policy-rules"`) {
		t.Error("quality staff: wrong sections")
	}
	if !regexp.MustCompile(`<td class="who">` + regexp.QuoteMeta(nu.Profile.DisplayName) + `</td><td>break_glass_opened</td>`).MatchString(page) {
		t.Error("the policy changes do not name the clinician who opened break-glass")
	}
	grant := regexp.MustCompile(`<tr data-grant="([0-9a-f-]{36})">`).FindStringSubmatch(page)
	if grant == nil || !strings.Contains(page, "patient collapsed in the corridor") || !strings.Contains(page, nu.Profile.DisplayName) {
		t.Fatalf("break-glass queue lacks the grant:\n%s", page)
	}
	path := "/admin/break-glass/" + grant[1] + "/review"
	if res := s.postForm(t, q, path, url.Values{"note": {"justified"}}, false); res.StatusCode != http.StatusForbidden {
		t.Errorf("review without CSRF = %d, want 403", res.StatusCode)
	}
	res = s.postForm(t, q, path, url.Values{"note": {"  "}}, true)
	if page = body(t, res); res.StatusCode != http.StatusUnprocessableEntity ||
		!strings.Contains(page, `<p id="note-`+grant[1]+`-error" class="field-error" data-code="note_required">`) {
		t.Errorf("review without a note = %d", res.StatusCode)
	}
	res = s.postForm(t, q, path, url.Values{"note": {"justified: rapid response call"}}, true)
	if page = body(t, res); res.StatusCode != http.StatusOK || !strings.Contains(page, "Review recorded.") || !strings.Contains(page, `id="no-grants"`) {
		t.Errorf("review = %d:\n%s", res.StatusCode, page)
	}
	gs, err := s.auth.BreakGlassGrants(s.Ctx, false, 10)
	if err != nil || len(gs) != 1 || gs[0].ReviewedAt == nil {
		t.Errorf("grant after review = %+v, %v", gs, err)
	}
	if res := s.postForm(t, q, path, url.Values{"note": {"again"}}, true); res.StatusCode != http.StatusConflict {
		t.Errorf("second review = %d, want 409", res.StatusCode)
	}
	if res := s.postForm(t, adm, path, url.Values{"note": {"x"}}, true); res.StatusCode != http.StatusForbidden {
		t.Errorf("administrator review = %d, want 403", res.StatusCode)
	}
	_ = qName

	// A clinician: the clinical rules with their versions and who made them; nothing else.
	page = body(t, s.get(t, "/admin", nurse))
	if !strings.Contains(page, `id="rules"`) || !strings.Contains(page, `data-rule="news2"`) || strings.Contains(page, `id="policy-rules"`) ||
		strings.Contains(page, `id="user-list"`) || strings.Contains(page, `id="breakglass"`) {
		t.Errorf("clinician's administration page has the wrong sections:\n%s", page)
	}

	// A technician may read none of it.
	tEmail, tSecret, _ := s.staff(t, auth.RoleDeviceTechnician)
	tech := s.signedIn(t, tEmail, tSecret)
	if res := s.get(t, "/admin", tech); res.StatusCode != http.StatusForbidden {
		t.Errorf("technician GET /admin = %d, want 403", res.StatusCode)
	}
	if page := body(t, s.get(t, "/devices", tech)); strings.Contains(page, `href="/admin"`) {
		t.Error("the technician is offered the administration page")
	}
}
