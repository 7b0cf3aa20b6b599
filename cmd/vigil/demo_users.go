package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
)

// `vigil demo` signs people in like production does: it seeds a site with two wards and five
// demo users (a clinician on each ward, a quality officer, an administrator, a device
// technician), each enrolled
// with the demo password and a fresh TOTP secret printed on the console, and places the
// simulated patients on the two wards (alternately) as the fleet admits them.

func init() {
	demoHooks = append(demoHooks, demoUsers)
}

// DemoPassword is the password of every demo user (printed by `vigil demo`; not for production).
const DemoPassword = "vigil-demo-password"

// demoActor makes the demo's own changes (audited like any other).
var demoActor = audit.Actor{Kind: audit.ActorService, ID: "vigil-demo", AuthMethod: "internal"}

// demoUser is one seeded account.
type demoUser struct {
	Email, Name, Role, Ward string // Ward: "A", "B" or "" (every ward)
	ID                      uuid.UUID
	TOTPSecret              string
}

var demoUserList = []demoUser{
	{Email: "clinician.a@demo.vigil", Name: "Dr Ada Ward-A", Role: auth.RoleClinician, Ward: "A"},
	{Email: "clinician.b@demo.vigil", Name: "Nurse Ben Ward-B", Role: auth.RoleClinician, Ward: "B"},
	{Email: "quality@demo.vigil", Name: "Quinn Quality", Role: auth.RoleQuality},
	{Email: "admin@demo.vigil", Name: "Ari Admin", Role: auth.RoleAdmin},
	{Email: "auditor@demo.vigil", Name: "Audrey Auditor", Role: auth.RoleAuditor},
	{Email: "technician@demo.vigil", Name: "Tess Technician", Role: auth.RoleDeviceTechnician},
}

func demoUsers(ctx context.Context, url string, sys *system) error {
	users, wards, err := seedDemoUsers(ctx, sys.auth, sys.core, time.Now)
	if err != nil {
		return fmt.Errorf("demo users: %w", err)
	}
	printDemoUsers(os.Stdout, url, users)
	go placeDemoPatients(ctx, sys.core, wards)
	return nil
}

// seedDemoUsers creates (or finds) the demo site, its wards A and B, and the demo users with
// their grants, and (re-)enrolls each with DemoPassword and a new TOTP secret.
func seedDemoUsers(ctx context.Context, svc *auth.Service, cs *core.Service, now func() time.Time) ([]demoUser, [2]uuid.UUID, error) {
	by := audit.Event{Actor: demoActor, RequestID: "demo-" + uuid.NewString()}
	o := auth.Origin{Actor: demoActor, RequestID: by.RequestID}
	var wards [2]uuid.UUID
	site, err := findOrCreateSite(ctx, cs, by, "Demo Hospital")
	if err != nil {
		return nil, wards, err
	}
	for i, name := range []string{"Ward A (ICU)", "Ward B (Surgery)"} {
		if wards[i], err = findOrCreateWard(ctx, cs, by, site, name); err != nil {
			return nil, wards, err
		}
	}
	out := make([]demoUser, 0, len(demoUserList))
	for _, du := range demoUserList {
		u, err := svc.UserByEmail(ctx, du.Email)
		if errors.Is(err, auth.ErrNotFound) {
			u, err = svc.CreateUser(ctx, o, auth.Profile{Email: du.Email, DisplayName: du.Name})
		}
		if err != nil {
			return nil, wards, fmt.Errorf("%s: %w", du.Email, err)
		}
		d := auth.AllDomains
		switch du.Ward {
		case "A":
			d = auth.WardDomain(wards[0])
		case "B":
			d = auth.WardDomain(wards[1])
		}
		if err := svc.GrantRole(ctx, o, auth.UserSubject(u.ID), du.Role, d); err != nil && !errors.Is(err, auth.ErrConflict) {
			return nil, wards, fmt.Errorf("%s: %w", du.Email, err)
		}
		en, err := svc.IssueEnrollment(ctx, o, u.ID)
		if err != nil {
			return nil, wards, err
		}
		offer, err := svc.StartEnrollment(ctx, o, en.Token)
		if err != nil {
			return nil, wards, err
		}
		code, err := totp.GenerateCodeCustom(offer.Secret, now(), totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
		if err != nil {
			return nil, wards, err
		}
		if _, err := svc.CompleteEnrollment(ctx, o, en.Token, DemoPassword, code); err != nil {
			return nil, wards, fmt.Errorf("%s: enroll: %w", du.Email, err)
		}
		du.ID, du.TOTPSecret = u.ID, offer.Secret
		out = append(out, du)
	}
	return out, wards, nil
}

func findOrCreateSite(ctx context.Context, cs *core.Service, by audit.Event, name string) (uuid.UUID, error) {
	sites, err := cs.Sites(ctx)
	if err != nil {
		return uuid.Nil, err
	}
	for _, s := range sites {
		if s.Name == name {
			return s.ID, nil
		}
	}
	s, err := cs.CreateSite(ctx, by, name)
	return s.ID, err
}

func findOrCreateWard(ctx context.Context, cs *core.Service, by audit.Event, site uuid.UUID, name string) (uuid.UUID, error) {
	ws, err := cs.Wards(ctx, site)
	if err != nil {
		return uuid.Nil, err
	}
	for _, w := range ws {
		if w.Name == name {
			return w.ID, nil
		}
	}
	w, err := cs.CreateWard(ctx, by, site, name)
	return w.ID, err
}

func printDemoUsers(w io.Writer, url string, users []demoUser) {
	fmt.Fprintf(w, "Demo users (password %q; a second factor is required: the TOTP code of the secret,\n", DemoPassword)
	fmt.Fprintf(w, "e.g. `oathtool --totp -b SECRET`, or add the secret to an authenticator app; the code of the\n")
	fmt.Fprintf(w, "current 30 s step was used to enroll, so sign in with the next one):\n\n")
	fmt.Fprintf(w, "  %-24s %-18s %-8s %s\n", "e-mail", "role", "ward", "TOTP secret")
	for _, u := range users {
		ward := "all"
		if u.Ward != "" {
			ward = u.Ward
		}
		fmt.Fprintf(w, "  %-24s %-18s %-8s %s\n", u.Email, u.Role, ward, u.TOTPSecret)
	}
	fmt.Fprintf(w, "\nThe portal: open %s/ in a browser and sign in with an e-mail, the password and the TOTP code.\n", url)
	fmt.Fprintf(w, "\nOr the API (the session is the cookie; state-changing requests send its csrf_token in X-CSRF-Token):\n")
	fmt.Fprintf(w, "  curl -c jar -H 'Content-Type: application/json' %s/api/v1/auth/sign-in \\\n", url)
	fmt.Fprintf(w, "       -d '{\"email\":\"%s\",\"password\":\"%s\",\"totp_code\":\"'$(oathtool --totp -b %s)'\"}'\n",
		users[0].Email, DemoPassword, users[0].TOTPSecret)
	fmt.Fprintf(w, "  curl -b jar %s/api/v1/patients\n\n", url)
}

// placeDemoPatients moves the simulated patients the fleet admits without a ward onto wards A
// and B alternately, for the first minutes of the demo (until ctx ends).
func placeDemoPatients(ctx context.Context, cs *core.Service, wards [2]uuid.UUID) {
	by := audit.Event{Actor: demoActor, RequestID: "demo-placement"}
	deadline := time.Now().Add(5 * time.Minute)
	n := 0
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
		ps, err := cs.Patients(ctx, core.PatientFilter{Limit: 1000})
		if err != nil {
			if ctx.Err() == nil {
				slog.WarnContext(ctx, "demo: list patients", slog.String("error", err.Error()))
			}
			continue
		}
		for _, p := range ps {
			if p.WardID != nil || !strings.HasPrefix(p.PHI.MRN, "SIM-") {
				continue
			}
			if err := cs.MovePatient(ctx, by, p.ID, wards[n%2]); err != nil && ctx.Err() == nil {
				slog.WarnContext(ctx, "demo: place patient", slog.String("error", err.Error()))
			}
			n++
		}
	}
}
