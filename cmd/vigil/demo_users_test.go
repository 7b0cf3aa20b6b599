package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/testclock"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// `vigil demo` seeds two wards and its demo users, enrolled with the printed password and
// TOTP secret: each signs in with the next code, the ward-A clinician sees ward A only, and
// seeding again (a restarted demo on the same database) re-enrolls rather than failing.
// Verifies: REQ-ACC-030
func TestDemoUsersSignIn(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	clk := testclock.New(time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC))
	rec := audittest.Recorder(t, pool, nil)
	phi := keystest.LocalRing(t, nil).PHI()
	cs, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: phi})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := auth.New(ctx, auth.Config{Pool: pool, Sealer: phi, Audit: rec, Now: clk.Now,
		Password: auth.PasswordConfig{Time: 1, MemoryKiB: 8 * 1024, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	var users []demoUser
	for range 2 { // the second run re-enrolls the same users
		if users, _, err = seedDemoUsers(ctx, svc, cs, clk.Now); err != nil {
			t.Fatalf("seedDemoUsers = %v", err)
		}
		clk.Add(30 * time.Second)
	}
	if len(users) != len(demoUserList) {
		t.Fatalf("seeded %d users, want %d", len(users), len(demoUserList))
	}
	var out bytes.Buffer
	printDemoUsers(&out, "http://127.0.0.1:8080", users)
	if !strings.Contains(out.String(), "http://127.0.0.1:8080/ in a browser") {
		t.Errorf("printed sign-in details lack the portal's address:\n%s", out.String())
	}
	for _, u := range users {
		if !strings.Contains(out.String(), u.Email) || !strings.Contains(out.String(), u.TOTPSecret) {
			t.Errorf("printed sign-in details lack %s or its TOTP secret:\n%s", u.Email, out.String())
		}
		code, _ := totp.GenerateCodeCustom(u.TOTPSecret, clk.Now(), totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
		sess, err := svc.Login(ctx, auth.LoginRequest{Email: u.Email, Password: DemoPassword, TOTPCode: code, SourceAddr: "127.0.0.1"})
		if err != nil {
			t.Errorf("Login(%s) with the printed password and TOTP secret = %v", u.Email, err)
			continue
		}
		p, err := svc.Authenticate(ctx, auth.Credentials{SessionToken: sess.Token})
		if err != nil {
			t.Fatal(err)
		}
		f, err := svc.Enforcer().Visibility(p)
		if err != nil {
			t.Fatal(err)
		}
		switch u.Role {
		case auth.RoleClinician:
			if f.All || len(f.Wards) != 1 {
				t.Errorf("%s sees %+v, want one ward", u.Email, f)
			}
		default:
			if !f.None() {
				t.Errorf("%s (%s) sees patients %+v, want none", u.Email, u.Role, f)
			}
		}
	}
}
