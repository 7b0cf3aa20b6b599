// Package authtest gives tests real principals: an auth service on the test's database (with
// cheap password hashing and plain-HTTP cookies), enrolled users with role grants, and real
// sessions opened through the ordinary sign-in (password and a second factor). Nothing is
// mocked: the sessions, grants and audit events are the ones production code makes.
package authtest

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/auth"
)

// Password is the password of every user Enroll creates.
const Password = "correct horse battery staple"

// Admin is the origin of the fixtures' administrative changes (an operator at the console).
var Admin = auth.Origin{Actor: audit.Actor{Kind: audit.ActorUser, ID: "os:authtest", AuthMethod: "database-credentials"},
	RequestID: "authtest"}

// New opens an auth service on pool: argon2id at 8 MiB and one pass (the production
// parameters are tested in package auth), sessions over plain HTTP (SessionConfig.Insecure),
// the default policy installed. now may be nil (time.Now). mod may adjust the configuration.
func New(t testing.TB, pool *pgxpool.Pool, rec audit.Recorder, sealer auth.Sealer, now func() time.Time, mod func(*auth.Config)) *auth.Service {
	t.Helper()
	cfg := auth.Config{Pool: pool, Sealer: sealer, Audit: rec, Now: now,
		Password: auth.PasswordConfig{Time: 1, MemoryKiB: 8 * 1024, Threads: 1},
		Session:  auth.SessionConfig{Insecure: true}}
	if mod != nil {
		mod(&cfg)
	}
	svc, err := auth.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("auth.New = %v", err)
	}
	return svc
}

// Grant is a role in a domain ("*" or "ward:<id>").
type Grant struct {
	Role   string
	Domain auth.Domain
}

// Everywhere is every role in every domain: a principal the policy allows everything.
var Everywhere = []Grant{{auth.RoleClinician, auth.AllDomains}, {auth.RoleChargeNurse, auth.AllDomains},
	{auth.RoleDeviceTechnician, auth.AllDomains}, {auth.RoleQuality, auth.AllDomains}, {auth.RoleAdmin, auth.AllDomains},
	{auth.RoleAuditor, auth.AllDomains}}

// User is an enrolled user: password Password, an authenticator (TOTPSecret) and recovery codes.
type User struct {
	auth.User
	Email         string
	TOTPSecret    string
	RecoveryCodes []string
	used          atomic.Int32
}

// Enroll creates a user with grants and completes their enrollment (password and TOTP) as
// they would through the enrollment link. The TOTP code of the enrollment is the current
// one (at the service's clock): a sign-in with a TOTP code must come at least one step later.
func Enroll(t testing.TB, svc *auth.Service, email string, grants ...Grant) *User {
	t.Helper()
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, Admin, auth.Profile{Email: email, DisplayName: "Test " + email})
	if err != nil {
		t.Fatalf("CreateUser(%s) = %v", email, err)
	}
	for _, g := range grants {
		if err := svc.GrantRole(ctx, Admin, auth.UserSubject(u.ID), g.Role, g.Domain); err != nil {
			t.Fatalf("GrantRole(%s, %s) = %v", g.Role, g.Domain, err)
		}
	}
	en, err := svc.IssueEnrollment(ctx, Admin, u.ID)
	if err != nil {
		t.Fatalf("IssueEnrollment = %v", err)
	}
	offer, err := svc.StartEnrollment(ctx, auth.Origin{}, en.Token)
	if err != nil {
		t.Fatalf("StartEnrollment = %v", err)
	}
	codes, err := svc.CompleteEnrollment(ctx, auth.Origin{}, en.Token, Password, Code(t, offer.Secret, svc.Config().Now()))
	if err != nil {
		t.Fatalf("CompleteEnrollment = %v", err)
	}
	u, err = svc.User(ctx, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	return &User{User: u, Email: email, TOTPSecret: offer.Secret, RecoveryCodes: codes}
}

// Code is the TOTP code of secret at time at.
func Code(t testing.TB, secret string, at time.Time) string {
	t.Helper()
	c, err := totp.GenerateCodeCustom(secret, at, totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// SignIn opens a real session for u through auth.Service.Login with the password and one of
// u's recovery codes (one-time, so independent of the clock; 10 sign-ins per user).
func SignIn(t testing.TB, svc *auth.Service, u *User) auth.Session {
	t.Helper()
	i := int(u.used.Add(1)) - 1
	if i >= len(u.RecoveryCodes) {
		t.Fatalf("authtest: user %s has signed in %d times; enroll another", u.Email, len(u.RecoveryCodes))
	}
	sess, err := svc.Login(context.Background(), auth.LoginRequest{Email: u.Email, Password: Password,
		RecoveryCode: u.RecoveryCodes[i], SourceAddr: "127.0.0.1", RequestID: "authtest-signin"})
	if err != nil {
		t.Fatalf("Login(%s) = %v", u.Email, err)
	}
	return sess
}

// Transport sends every request with a session: its cookie, and its CSRF token in
// X-CSRF-Token (what a browser client of the API does).
type Transport struct {
	Base       http.RoundTripper // default http.DefaultTransport
	CookieName string
	Session    auth.Session
	// NoCSRF leaves the CSRF header out (to test its refusal).
	NoCSRF bool
}

// RoundTrip implements http.RoundTripper.
func (tr *Transport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.AddCookie(&http.Cookie{Name: tr.CookieName, Value: tr.Session.Token})
	if !tr.NoCSRF {
		r.Header.Set(auth.CSRFHeader, auth.CSRFToken(tr.Session.Token))
	}
	base := tr.Base
	if base == nil {
		base = http.DefaultTransport
	}
	return base.RoundTrip(r)
}

// Client returns an HTTP client whose requests carry sess (cookie and CSRF token).
func Client(svc *auth.Service, sess auth.Session) *http.Client {
	return &http.Client{Transport: &Transport{CookieName: svc.Config().Session.CookieName, Session: sess}}
}

// BearerTransport sends every request with an API token.
type BearerTransport struct {
	Base  http.RoundTripper
	Token string
}

// RoundTrip implements http.RoundTripper.
func (tr *BearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+tr.Token)
	base := tr.Base
	if base == nil {
		base = http.DefaultTransport
	}
	return base.RoundTrip(r)
}
