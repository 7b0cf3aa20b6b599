package portal_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pquerna/otp/totp"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/devices/devicestest"
	"github.com/vigilhealth/vigil/portal"
	"github.com/vigilhealth/vigil/server"
)

// stack is a real Vigil server with the portal mounted, on its own PostgreSQL database: core,
// devices, alarms, rules, auth, under a controlled clock. One ward ("Ward 7A") holds the
// devicestest patient (with an enrolled device) and two more patients.
type stack struct {
	*devicestest.Env
	ts       *httptest.Server
	portal   *portal.Portal
	auth     *auth.Service
	alarms   *alarms.Service
	rules    *rules.Engine
	ward     core.Ward
	otherW   core.Ward
	device   *devicestest.Device
	patients []core.Patient // [0] is the device's patient
	other    core.Patient   // a patient of another ward
	chain    *chain.Service // the audit chain (embedded Trillian): the audit browser's proofs
	answered []answered     // requests auditedOnce checked (audit_once_test.go)
}

var admin = audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "os:test-admin", AuthMethod: "database-credentials"}, RequestID: "test"}

const password = "correct horse battery staple"

func newStack(t testing.TB) *stack {
	t.Helper()
	env := devicestest.New(t, nil)
	ctx := env.Ctx
	// The controlled clock starts at the wall clock's time (so that what a browser shows is
	// plausible); the tests move it.
	env.Clock.Set(time.Now().UTC().Truncate(time.Second))
	s := &stack{Env: env}
	var err error
	if s.alarms, err = alarms.New(alarms.Config{Pool: env.Pool, Recorder: env.Rec, Notifier: env.Core.Hub(), Now: env.Clock.Now}); err != nil {
		t.Fatal(err)
	}
	if s.rules, err = rules.New(ctx, rules.Config{Pool: env.Pool, Recorder: env.Rec, Alarms: s.alarms, Now: env.Clock.Now}); err != nil {
		t.Fatal(err)
	}
	if s.auth, err = auth.New(ctx, auth.Config{Pool: env.Pool, Sealer: env.Ring.PHI(), Audit: env.Rec, Now: env.Clock.Now,
		Session:  auth.SessionConfig{Insecure: true},
		Password: auth.PasswordConfig{Time: 1, MemoryKiB: 8 * 1024, Threads: 1}}); err != nil {
		t.Fatal(err)
	}
	site, err := env.Core.CreateSite(ctx, admin, "St Elsewhere")
	if err != nil {
		t.Fatal(err)
	}
	if s.ward, err = env.Core.CreateWard(ctx, admin, site.ID, "Ward 7A"); err != nil {
		t.Fatal(err)
	}
	if s.otherW, err = env.Core.CreateWard(ctx, admin, site.ID, "Ward 9C"); err != nil {
		t.Fatal(err)
	}
	if err := env.Core.MovePatient(ctx, admin, env.Patient, s.ward.ID); err != nil {
		t.Fatal(err)
	}
	first, err := env.Core.Patient(ctx, env.Patient)
	if err != nil {
		t.Fatal(err)
	}
	s.patients = append(s.patients, first)
	for _, n := range [][2]string{{"Ada", "Byron"}, {"Mary", "Seacole"}} {
		p, err := env.Core.CreatePatient(ctx, admin, core.PatientPHI{MRN: "MRN-" + uuid.NewString()[:8], GivenName: n[0], FamilyName: n[1]}, &s.ward.ID)
		if err != nil {
			t.Fatal(err)
		}
		s.patients = append(s.patients, p)
	}
	if s.other, err = env.Core.CreatePatient(ctx, admin, core.PatientPHI{MRN: "MRN-OTHER", GivenName: "Otto", FamilyName: "Elsewhere"}, &s.otherW.ID); err != nil {
		t.Fatal(err)
	}
	s.device = env.NewDevice(t)
	s.chain = chaintest.Start(t, env.Pool, env.URL, env.Rec)
	if s.portal, err = portal.New(portal.Config{Auth: s.auth, Core: env.Core, Recorder: env.Rec, Alarms: s.alarms,
		Rules: s.rules, Devices: env.Devices, Audit: s.chain, Now: env.Clock.Now}); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Pool: env.Pool, Recorder: env.Rec, Core: env.Core, Devices: env.Devices,
		Alarms: s.alarms, Rules: s.rules, Portal: s.portal, Auth: s.auth, Audit: s.chain, Now: env.Clock.Now,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}) // access logs: not the test's output
	if err != nil {
		t.Fatal(err)
	}
	s.ts = httptest.NewServer(srv.Handler())
	t.Cleanup(s.ts.Close)
	return s
}

// clinician creates a user holding role on the stack's ward, enrolled with password and TOTP;
// it returns the e-mail address and the TOTP secret.
func (s *stack) clinician(t testing.TB, role string, ward uuid.UUID) (string, string) {
	t.Helper()
	email := "nurse-" + uuid.NewString()[:8] + "@example.org"
	o := auth.Origin{Actor: admin.Actor, RequestID: "test"}
	u, err := s.auth.CreateUser(s.Ctx, o, auth.Profile{Email: email, DisplayName: "Nurse " + email[:14]})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.auth.GrantRole(s.Ctx, o, auth.UserSubject(u.ID), role, auth.WardDomain(ward)); err != nil {
		t.Fatal(err)
	}
	en, err := s.auth.IssueEnrollment(s.Ctx, o, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	offer, err := s.auth.StartEnrollment(s.Ctx, auth.Origin{}, en.Token)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.auth.CompleteEnrollment(s.Ctx, auth.Origin{}, en.Token, password, s.code(t, offer.Secret)); err != nil {
		t.Fatal(err)
	}
	// The enrollment used the current step; the first sign-in needs a fresh one.
	s.Clock.Add(30 * time.Second)
	return email, offer.Secret
}

func (s *stack) code(t testing.TB, secret string) string {
	t.Helper()
	c, err := totp.GenerateCode(secret, s.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// upload sends the device's next signed upload (n vitals ending now) through the server's
// HTTP upload endpoint and checks that it is accepted.
func (s *stack) upload(t testing.TB, n int) {
	t.Helper()
	s.postUpload(t, s.device.Upload(t, s.Clock.Now(), n))
}

// postUpload posts a signed envelope to the server's upload endpoint; it must be accepted.
func (s *stack) postUpload(t testing.TB, raw []byte) {
	t.Helper()
	res, err := http.Post(s.ts.URL+"/api/v1/uploads", "application/cbor", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("POST /api/v1/uploads = %d, want 201", res.StatusCode)
	}
}

// client is an HTTP client with a cookie jar that does not follow redirects.
func client(t testing.TB) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (s *stack) get(t testing.TB, path string, c *http.Client) *http.Response {
	t.Helper()
	if c == nil {
		c = client(t)
	}
	res, err := c.Get(s.ts.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// signIn posts the sign-in form (as a same-origin browser would) and returns the answer.
func (s *stack) signIn(t testing.TB, c *http.Client, email, pw, code string) *http.Response {
	t.Helper()
	form := url.Values{"email": {email}, "password": {pw}, "totp": {code}}
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, s.ts.URL+"/signin", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", s.ts.URL)
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return res
}
