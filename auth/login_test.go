package auth_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/auth"
)

// Verifies: REQ-ACC-002, REQ-ACC-003
func TestLocalSignInWithTOTP(t *testing.T) {
	e := newEnv(t, nil)
	w := ward()
	u, secret, codes := e.user(t, "ada@example.org", [2]string{auth.RoleClinician, string(auth.WardDomain(w))})
	if len(codes) != 10 {
		t.Fatalf("CompleteEnrollment = %d recovery codes, want 10", len(codes))
	}
	req := func(mod func(*auth.LoginRequest)) auth.LoginRequest {
		r := auth.LoginRequest{Email: "Ada@Example.org ", Password: password, SourceAddr: "192.0.2.1", RequestID: "r1"}
		if mod != nil {
			mod(&r)
		}
		return r
	}

	// The password alone is not enough for a role that sees PHI.
	_, err := e.svc.Login(e.ctx, req(nil))
	wantCode(t, "Login(no TOTP)", err, "mfa_required", "mfa_missing")

	// Wrong password, wrong code, unknown user: all the same public answer.
	_, err = e.svc.Login(e.ctx, req(func(r *auth.LoginRequest) { r.Password = "wrong password!!"; r.TOTPCode = e.code(t, secret) }))
	wantCode(t, "Login(wrong password)", err, "invalid_credentials", "password_wrong")
	_, err = e.svc.Login(e.ctx, req(func(r *auth.LoginRequest) { r.TOTPCode = "000000" }))
	wantCode(t, "Login(wrong TOTP)", err, "invalid_credentials", "totp_wrong")
	_, err = e.svc.Login(e.ctx, req(func(r *auth.LoginRequest) { r.Email = "nobody@example.org" }))
	wantCode(t, "Login(unknown user)", err, "invalid_credentials", "unknown_user")

	// An expired code (two steps old) is refused.
	old, _ := totpAt(secret, e.clock.Now().Add(-65*time.Second))
	_, err = e.svc.Login(e.ctx, req(func(r *auth.LoginRequest) { r.TOTPCode = old }))
	wantCode(t, "Login(expired TOTP)", err, "invalid_credentials", "totp_wrong")

	// The right code signs in; the same code again is a replay.
	code := e.code(t, secret)
	sess, err := e.svc.Login(e.ctx, req(func(r *auth.LoginRequest) { r.TOTPCode = code }))
	if err != nil {
		t.Fatalf("Login(right TOTP) = %v (%s)", err, auth.ReasonOf(err))
	}
	if sess.AuthMethod != auth.MethodPasswordTOTP || sess.UserID != u.ID || !strings.HasPrefix(sess.Token, "vgs_") {
		t.Fatalf("Login = %+v, want a password+totp session of %s", sess, u.ID)
	}
	_, err = e.svc.Login(e.ctx, req(func(r *auth.LoginRequest) { r.TOTPCode = code }))
	wantCode(t, "Login(replayed TOTP)", err, "invalid_credentials", "totp_replayed")

	// A recovery code works once.
	_, err = e.svc.Login(e.ctx, req(func(r *auth.LoginRequest) { r.RecoveryCode = strings.ToLower(codes[3]) }))
	if err != nil {
		t.Fatalf("Login(recovery code) = %v (%s)", err, auth.ReasonOf(err))
	}
	_, err = e.svc.Login(e.ctx, req(func(r *auth.LoginRequest) { r.RecoveryCode = codes[3] }))
	wantCode(t, "Login(used recovery code)", err, "invalid_credentials", "recovery_code_wrong")

	// Every attempt is audited with its reason, never the password or the code.
	failed := e.events(t, "auth.login.failed")
	var reasons []string
	for _, f := range failed {
		reasons = append(reasons, f.Reason)
		for _, secretText := range []string{password, "wrong password!!", code, codes[3]} {
			if bytes.Contains(f.Payload, []byte(secretText)) {
				t.Fatalf("auth.login.failed payload %s holds a secret", f.Payload)
			}
		}
		if f.Outcome != "rejected" {
			t.Fatalf("auth.login.failed outcome = %s, want rejected", f.Outcome)
		}
	}
	want := "mfa_missing password_wrong totp_wrong unknown_user totp_wrong totp_replayed recovery_code_wrong"
	if got := strings.Join(reasons, " "); got != want {
		t.Fatalf("auth.login.failed reasons = %q, want %q", got, want)
	}
	ok := e.events(t, "auth.login.succeeded")
	if len(ok) != 2 || ok[0].ActorID != u.ID.String() || ok[0].ActorAuth != auth.MethodPasswordTOTP || ok[1].ActorAuth != auth.MethodPasswordRecovery {
		t.Fatalf("auth.login.succeeded = %+v, want two sign-ins of %s by TOTP then recovery code", ok, u.ID)
	}
}

// Verifies: REQ-ACC-003
func TestDeviceTechnicianNeedsNoSecondFactorButEnrolledTOTPIsRequired(t *testing.T) {
	e := newEnv(t, nil)
	u, err := e.svc.CreateUser(e.ctx, admin, auth.Profile{Email: "tech@example.org"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.svc.GrantRole(e.ctx, admin, auth.UserSubject(u.ID), auth.RoleDeviceTechnician, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	// Not enrolled: no password yet.
	_, err = e.svc.Login(e.ctx, auth.LoginRequest{Email: "tech@example.org", Password: password})
	wantCode(t, "Login(not enrolled)", err, "invalid_credentials", "not_enrolled")
	// A PHI role with its second factor reset stops at mfa_required.
	_, secret, _ := e.user(t, "nurse@example.org", [2]string{auth.RoleClinician, "*"})
	nurse, _ := e.svc.UserByEmail(e.ctx, "nurse@example.org")
	en, err := e.svc.ResetMFA(e.ctx, admin, nurse.ID)
	if err != nil || en.Token == "" {
		t.Fatalf("ResetMFA = %v, %v", en, err)
	}
	_, err = e.svc.Login(e.ctx, auth.LoginRequest{Email: "nurse@example.org", Password: password, TOTPCode: e.code(t, secret)})
	wantCode(t, "Login(after MFA reset)", err, "invalid_credentials", "totp_wrong")
	_, err = e.svc.Login(e.ctx, auth.LoginRequest{Email: "nurse@example.org", Password: password})
	wantCode(t, "Login(after MFA reset, no code)", err, "mfa_required", "mfa_not_enrolled")
}

// Verifies: REQ-ACC-004
func TestLockoutWithBackoff(t *testing.T) {
	e := newEnv(t, nil)
	_, secret, _ := e.user(t, "bob@example.org", [2]string{auth.RoleQuality, "*"})
	try := func(pw, addr string) error {
		_, err := e.svc.Login(e.ctx, auth.LoginRequest{Email: "bob@example.org", Password: pw, TOTPCode: e.code(t, secret), SourceAddr: addr})
		return err
	}
	for i := range 5 {
		wantCode(t, "Login(wrong password)", try("wrong password #", "198.51.100."+string(rune('1'+i))), "invalid_credentials", "password_wrong")
	}
	// Locked: even the right password is refused, without checking it.
	wantCode(t, "Login(locked)", try(password, "198.51.100.9"), "account_locked", "locked_account")
	e.clock.Add(59 * time.Second)
	err := try(password, "198.51.100.9")
	wantCode(t, "Login(locked, 59s later)", err, "account_locked", "locked_account")
	if ra := auth.RetryAfter(err); ra < time.Second || ra > 2*time.Second {
		t.Fatalf("RetryAfter(locked 1 s more) = %s, want 1–2 s", ra)
	}
	e.clock.Add(2 * time.Second)
	// Back-off doubles: one more failure locks for 2 minutes.
	wantCode(t, "Login(wrong, after lock)", try("wrong again ###", "198.51.100.9"), "invalid_credentials", "password_wrong")
	e.clock.Add(90 * time.Second)
	wantCode(t, "Login(locked 2 min)", try(password, "198.51.100.9"), "account_locked", "locked_account")
	e.clock.Add(31 * time.Second)
	if err := try(password, "198.51.100.9"); err != nil {
		t.Fatalf("Login after back-off = %v (%s)", err, auth.ReasonOf(err))
	}
	e.clock.Add(30 * time.Second)
	// A success clears the account's counter.
	wantCode(t, "Login(wrong, after success)", try("wrong password #", "198.51.100.9"), "invalid_credentials", "password_wrong")
	e.clock.Add(30 * time.Second)
	if err := try(password, "198.51.100.9"); err != nil {
		t.Fatalf("Login after one failure = %v", err)
	}

	// Unknown names lock the same way (the answer does not tell which accounts exist).
	for range 5 {
		_, _ = e.svc.Login(e.ctx, auth.LoginRequest{Email: "ghost@example.org", Password: "whatever-pass", SourceAddr: "203.0.113.50"})
	}
	_, err = e.svc.Login(e.ctx, auth.LoginRequest{Email: "ghost@example.org", Password: "whatever-pass", SourceAddr: "203.0.113.51"})
	wantCode(t, "Login(unknown, locked)", err, "account_locked", "locked_account")

	// Per source address: 20 failures from one address over many names lock the address.
	for i := range 20 {
		_, _ = e.svc.Login(e.ctx, auth.LoginRequest{Email: "spray" + string(rune('a'+i)) + "@example.org", Password: "x", SourceAddr: "203.0.113.99"})
	}
	e.clock.Add(30 * time.Second)
	_, err = e.svc.Login(e.ctx, auth.LoginRequest{Email: "bob@example.org", Password: password, TOTPCode: e.code(t, secret), SourceAddr: "203.0.113.99"})
	wantCode(t, "Login(from locked source)", err, "account_locked", "locked_source")
	if got := e.lastReason(t, "auth.login.failed"); got != "locked_source" {
		t.Fatalf("last auth.login.failed reason = %q, want locked_source", got)
	}
}

// Verifies: REQ-ACC-001
func TestUserPersonalDataIsSealed(t *testing.T) {
	e := newEnv(t, nil)
	u, err := e.svc.CreateUser(e.ctx, admin, auth.Profile{Email: "grace.hopper@example.org", DisplayName: "Grace Hopper"})
	if err != nil {
		t.Fatal(err)
	}
	var row []byte
	if err := e.pool.QueryRow(e.ctx, "SELECT convert_to(t::text, 'UTF8') FROM auth_users t WHERE id = $1", u.ID).Scan(&row); err != nil {
		t.Fatal(err)
	}
	for _, pii := range []string{"grace", "Grace", "Hopper", "example.org"} {
		if bytes.Contains(row, []byte(pii)) || bytes.Contains(row, []byte(hexOf(pii))) {
			t.Fatalf("auth_users row holds %q in clear", pii)
		}
	}
	got, err := e.svc.UserByEmail(e.ctx, " GRACE.hopper@example.org")
	if err != nil || got.ID != u.ID || got.Profile.DisplayName != "Grace Hopper" {
		t.Fatalf("UserByEmail = %+v, %v; want %s opened", got, err, u.ID)
	}
	if _, err := e.svc.CreateUser(e.ctx, admin, auth.Profile{Email: "grace.hopper@EXAMPLE.org"}); !errorsIs(err, auth.ErrConflict) {
		t.Fatalf("CreateUser(same e-mail) = %v, want ErrConflict", err)
	}
	// A sealed profile copied to another row does not open.
	other, err := e.svc.CreateUser(e.ctx, admin, auth.Profile{Email: "someone@example.org"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.pool.Exec(e.ctx, "UPDATE auth_users SET profile_sealed = (SELECT profile_sealed FROM auth_users WHERE id = $1) WHERE id = $2", u.ID, other.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.User(e.ctx, other.ID); err == nil {
		t.Fatal("User(row with a copied profile) opened it, want an error")
	}
	// Bad input.
	if _, err := e.svc.CreateUser(e.ctx, admin, auth.Profile{Email: "not an address"}); !errorsIs(err, auth.ErrInvalid) {
		t.Fatalf("CreateUser(bad e-mail) = %v, want ErrInvalid", err)
	}
}

// Verifies: REQ-ACC-003
func TestEnrollmentLinkIsOneTime(t *testing.T) {
	e := newEnv(t, nil)
	u, err := e.svc.CreateUser(e.ctx, admin, auth.Profile{Email: "new@example.org"})
	if err != nil {
		t.Fatal(err)
	}
	en, err := e.svc.IssueEnrollment(e.ctx, admin, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	if l := en.Link("https://vigil.example/"); !strings.HasPrefix(l, "https://vigil.example/enroll#token=vge_") {
		t.Fatalf("Link = %q", l)
	}
	_, err = e.svc.CompleteEnrollment(e.ctx, auth.Origin{}, en.Token, password, "123456")
	wantCode(t, "CompleteEnrollment(before Start)", err, "enrollment_invalid", "totp_not_offered")
	offer, err := e.svc.StartEnrollment(e.ctx, auth.Origin{}, en.Token)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.CompleteEnrollment(e.ctx, auth.Origin{}, en.Token, "short", e.code(t, offer.Secret)); !errorsIs(err, auth.ErrInvalid) {
		t.Fatalf("CompleteEnrollment(short password) = %v, want ErrInvalid", err)
	}
	_, err = e.svc.CompleteEnrollment(e.ctx, auth.Origin{}, en.Token, password, "000000")
	wantCode(t, "CompleteEnrollment(wrong code)", err, "invalid_credentials", "totp_wrong")
	if _, err := e.svc.CompleteEnrollment(e.ctx, auth.Origin{}, en.Token, password, e.code(t, offer.Secret)); err != nil {
		t.Fatalf("CompleteEnrollment = %v", err)
	}
	_, err = e.svc.StartEnrollment(e.ctx, auth.Origin{}, en.Token)
	wantCode(t, "StartEnrollment(used link)", err, "enrollment_invalid", "token_used")
	en2, _ := e.svc.IssueEnrollment(e.ctx, admin, u.ID)
	e.clock.Add(73 * time.Hour)
	_, err = e.svc.StartEnrollment(e.ctx, auth.Origin{}, en2.Token)
	wantCode(t, "StartEnrollment(expired link)", err, "enrollment_invalid", "token_expired")
	_, err = e.svc.StartEnrollment(e.ctx, auth.Origin{}, "vge_forged")
	wantCode(t, "StartEnrollment(forged link)", err, "enrollment_invalid", "token_unknown")
	if n := len(e.events(t, "auth.enrollment.failed")); n != 5 {
		t.Fatalf("auth.enrollment.failed events = %d, want 5", n)
	}
}

// A refused enrollment (a wrong link, a wrong code) whose auth.enrollment.failed event cannot
// be recorded is an internal error, not the coded refusal: a coded refusal always means its
// event is committed, so the caller may take it as the request's one record.
// Verifies: REQ-ACC-050
func TestEnrollmentRefusalUnrecordedIsAnError(t *testing.T) {
	e := newEnv(t, nil)
	u, err := e.svc.CreateUser(e.ctx, admin, auth.Profile{Email: "unrecorded@example.org"})
	if err != nil {
		t.Fatal(err)
	}
	en, err := e.svc.IssueEnrollment(e.ctx, admin, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	offer, err := e.svc.StartEnrollment(e.ctx, auth.Origin{}, en.Token)
	if err != nil {
		t.Fatal(err)
	}
	closed := audittest.Recorder(t, e.pool, nil)
	closed.Close()
	cfg := e.cfg
	cfg.Audit = closed
	broken, err := auth.New(e.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	before := len(e.events(t, "auth.enrollment.failed"))
	_, err = broken.StartEnrollment(e.ctx, auth.Origin{}, "vge_forged")
	if err == nil || auth.CodeOf(err) != "" {
		t.Errorf("StartEnrollment(forged link) without its record = %v (code %q), want an internal error", err, auth.CodeOf(err))
	}
	_, err = broken.CompleteEnrollment(e.ctx, auth.Origin{}, en.Token, password, "000000")
	if err == nil || auth.CodeOf(err) != "" {
		t.Errorf("CompleteEnrollment(wrong code) without its record = %v (code %q), want an internal error", err, auth.CodeOf(err))
	}
	if n := len(e.events(t, "auth.enrollment.failed")); n != before {
		t.Errorf("auth.enrollment.failed events = %d, want %d (none recorded)", n, before)
	}
	// The same refusals with a working recorder: coded, and recorded.
	_, err = e.svc.CompleteEnrollment(e.ctx, auth.Origin{}, en.Token, password, "000000")
	wantCode(t, "CompleteEnrollment(wrong code)", err, "invalid_credentials", "totp_wrong")
	if _, err := e.svc.CompleteEnrollment(e.ctx, auth.Origin{}, en.Token, password, e.code(t, offer.Secret)); err != nil {
		t.Fatalf("CompleteEnrollment = %v", err)
	}
	if n := len(e.events(t, "auth.enrollment.failed")); n != before+1 {
		t.Errorf("auth.enrollment.failed events = %d, want %d", n, before+1)
	}
}

// A refused sign-in, session or API token whose event (auth.login.failed,
// auth.session.rejected, auth.token.rejected) cannot be recorded is an internal error, not the
// coded refusal: the server takes a coded refusal as the request's one record. A request
// without credentials is the one refusal auth does not record: it stays coded.
// Verifies: REQ-ACC-051, REQ-ACC-052
func TestLoginAndSessionRefusalUnrecordedIsAnError(t *testing.T) {
	e := newEnv(t, nil)
	closed := audittest.Recorder(t, e.pool, nil)
	closed.Close()
	cfg := e.cfg
	cfg.Audit = closed
	broken, err := auth.New(e.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = broken.Login(e.ctx, auth.LoginRequest{Email: "nobody@example.org", Password: "wrong horse"})
	if err == nil || auth.CodeOf(err) != "" {
		t.Errorf("Login(unknown user) without its record = %v (code %q), want an internal error", err, auth.CodeOf(err))
	}
	for _, c := range []auth.Credentials{{SessionToken: "vgs_nonsense"}, {BearerToken: "vgt_nonsense"}} {
		if _, err := broken.Authenticate(e.ctx, c); err == nil || auth.CodeOf(err) != "" {
			t.Errorf("Authenticate(%+v) without its record = %v (code %q), want an internal error", c, err, auth.CodeOf(err))
		}
	}
	if _, err := broken.Authenticate(e.ctx, auth.Credentials{}); auth.CodeOf(err) != auth.ErrUnauthenticated.Code {
		t.Errorf("Authenticate(no credentials) = %v, want the coded refusal (auth records none)", err)
	}
	// The same refusals with a working recorder: coded, and recorded.
	_, err = e.svc.Login(e.ctx, auth.LoginRequest{Email: "nobody@example.org", Password: "wrong horse"})
	wantCode(t, "Login(unknown user)", err, "invalid_credentials", "unknown_user")
	_, err = e.svc.Authenticate(e.ctx, auth.Credentials{SessionToken: "vgs_nonsense"})
	wantCode(t, "Authenticate(malformed session)", err, "unauthenticated", "session_malformed")
	if n := len(e.events(t, "auth.login.failed")); n != 1 {
		t.Errorf("auth.login.failed events = %d, want 1", n)
	}
	if n := len(e.events(t, "auth.session.rejected")); n != 1 {
		t.Errorf("auth.session.rejected events = %d, want 1", n)
	}
}
