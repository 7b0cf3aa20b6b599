package portal_test

import (
	"html"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/portal"
)

// newEnrollment creates a user with a role and returns the e-mail address and the token of
// their one-time enrollment link.
func (s *stack) newEnrollment(t testing.TB, role string) (string, string) {
	t.Helper()
	email := "new-" + uuid.NewString()[:8] + "@example.org"
	o := auth.Origin{Actor: admin.Actor, RequestID: "test"}
	u, err := s.auth.CreateUser(s.Ctx, o, auth.Profile{Email: email, DisplayName: "New " + email[:12]})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.auth.GrantRole(s.Ctx, o, auth.UserSubject(u.ID), role, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	en, err := s.auth.IssueEnrollment(s.Ctx, o, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	return email, en.Token
}

// TestEnrollment: a new user's one-time link opens the enrollment page; the TOTP secret is
// offered as a QR code; password and code are checked with coded errors next to the fields
// (the same secret offered again); the recovery codes are shown once; the link does not
// work twice; the user then signs in with a TOTP code. Cross-site posts are refused.
// Verifies: REQ-POR-039
func TestEnrollment(t *testing.T) {
	s := newStack(t)
	email, token := s.newEnrollment(t, auth.RoleQuality)
	c := client(t)
	page := body(t, s.get(t, auth.EnrollmentPath, c))
	if !strings.Contains(page, `<form class="form" method="post" action="/enroll/start" id="enroll-start"`) || !regexp.MustCompile(`<script src="/assets/enroll\.[0-9a-f]{16}\.js" integrity="sha384-`).MatchString(page) {
		t.Fatalf("enrollment page:\n%s", page)
	}

	res := s.postFormAs(t, c, "/enroll/start", url.Values{"token": {""}}, false)
	if page = body(t, res); res.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(page, `id="e-token-error" class="field-error" data-code="token_required"`) {
		t.Errorf("start without a token = %d", res.StatusCode)
	}
	res = s.postFormAs(t, c, "/enroll/start", url.Values{"token": {"vge_nope"}}, false)
	if page = body(t, res); res.StatusCode != http.StatusGone || !strings.Contains(page, `data-code="enrollment_invalid"`) {
		t.Errorf("start with a wrong token = %d", res.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodPost, s.ts.URL+"/enroll/start", strings.NewReader(url.Values{"token": {token}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	if res, err := c.Do(req); err != nil || res.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site start = %v, %v; want 403", res.StatusCode, err)
	}

	res = s.postFormAs(t, c, "/enroll/start", url.Values{"token": {token}}, false)
	page = html.UnescapeString(body(t, res))
	secret := regexp.MustCompile(`<code id="totp-secret">([A-Z2-7]+)</code>`).FindStringSubmatch(page)
	otpauth := regexp.MustCompile(`name="otpauth" value="(otpauth://[^"]+)"`).FindStringSubmatch(page)
	if res.StatusCode != http.StatusOK || secret == nil || otpauth == nil || !strings.Contains(page, `<img class="qr" id="totp-qr" src="data:image/png;base64,`) {
		t.Fatalf("start = %d:\n%s", res.StatusCode, page)
	}
	form := func(pw, pw2, code string) url.Values {
		return url.Values{"token": {token}, "secret": {secret[1]}, "otpauth": {otpauth[1]}, "password": {pw}, "password2": {pw2}, "totp": {code}}
	}
	for _, tc := range []struct {
		name, pw, pw2, code, field, want string
	}{
		{"passwords differ", password, password + "x", s.code(t, secret[1]), "password2", "password_mismatch"},
		{"short password", "short", "short", s.code(t, secret[1]), "password", "password_policy"},
		{"wrong code", password, password, "000000", "totp", "totp_invalid"},
		{"no code", password, password, "", "totp", "totp_required"},
	} {
		res = s.postFormAs(t, c, "/enroll/complete", form(tc.pw, tc.pw2, tc.code), false)
		page = html.UnescapeString(body(t, res))
		if res.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(page, `id="e-`+tc.field+`-error" class="field-error" data-code="`+tc.want+`"`) ||
			!strings.Contains(page, `<code id="totp-secret">`+secret[1]+`</code>`) {
			t.Errorf("%s = %d, want 422 %s on %s with the same secret:\n%s", tc.name, res.StatusCode, tc.want, tc.field, page)
		}
	}
	res = s.postFormAs(t, c, "/enroll/complete", form(password, password, s.code(t, secret[1])), false)
	page = body(t, res)
	if codes := regexp.MustCompile(`<li><code>[^<]+</code></li>`).FindAllString(page, -1); res.StatusCode != http.StatusOK || len(codes) < 5 {
		t.Fatalf("complete = %d with %d recovery codes:\n%s", res.StatusCode, len(codes), page)
	}
	if res = s.postFormAs(t, c, "/enroll/start", url.Values{"token": {token}}, false); res.StatusCode != http.StatusGone {
		t.Errorf("the link used twice = %d, want 410", res.StatusCode)
	}
	s.Clock.Add(30 * time.Second)
	if res := s.signIn(t, client(t), email, password, s.code(t, secret[1])); res.StatusCode != http.StatusSeeOther {
		t.Errorf("sign-in after enrollment = %d", res.StatusCode)
	}
}

// TestSignInWithIdP: with an identity provider configured, the sign-in page offers "Sign in
// with <name>", a link to the server's OpenID Connect login; without one, no button.
// Verifies: REQ-POR-039
func TestSignInWithIdP(t *testing.T) {
	s := newStack(t)
	if page := body(t, s.get(t, "/signin", nil)); strings.Contains(page, "oidc-signin") {
		t.Error("a sign-in button for an identity provider that is not configured")
	}
	p, err := portal.New(portal.Config{Auth: s.auth, Core: s.Core, Recorder: s.Rec, OIDCName: "St Elsewhere SSO"})
	if err != nil {
		t.Fatal(err)
	}
	e := echo.New()
	p.Mount(e)
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/signin", nil))
	if page := rec.Body.String(); !strings.Contains(page, `<a id="oidc-signin" class="button" href="/api/v1/auth/oidc/login">Sign in with St Elsewhere SSO</a>`) {
		t.Errorf("sign-in page lacks the identity provider's button:\n%s", page)
	}
}
