package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/keys"
)

// `vigil user …`, `vigil role …`, `vigil policy …` (role.go, policy.go): the administrators'
// commands of the auth area. They work on the database at VIGIL_DATABASE_URL directly, with
// the key ring (personal data is sealed), every change audited with the operating-system user
// as the actor, so they work with the server down (and bootstrap the first administrator).

func init() {
	subcommands = append(subcommands, newUserCmd)
	for _, col := range auth.SealedColumns() {
		phiRewrapStores = append(phiRewrapStores, func(db *database) (string, keys.RewrapStore) {
			st, _ := auth.RewrapStore(db.pool, db.rec, col)
			return col, st
		})
	}
}

// authEnv is what the auth commands run with.
type authEnv struct {
	ctx  context.Context
	pool *pgxpool.Pool
	ring *keys.Ring
	svc  *auth.Service
	o    auth.Origin
	out  io.Writer
	json bool
}

// withAuth opens the database, the key ring (read-only: no key is created) and the auth
// service for one command.
func withAuth(dataDir *string, asJSON *bool, run func(e *authEnv, args []string) error) func(*cobra.Command, []string) error {
	return func(c *cobra.Command, args []string) error {
		ctx := c.Context()
		db, err := openDB(ctx, envOrCtx(ctx, "VIGIL_DATABASE_URL", ""))
		if err != nil {
			return err
		}
		defer db.Close()
		pool := db.pool
		ring, closeRing, err := openKeyRing(ctx, *dataDir, false, db.rec, false)
		if err != nil {
			return err
		}
		defer func() { _ = closeRing(context.WithoutCancel(ctx)) }()
		svc, err := auth.New(ctx, auth.Config{Pool: pool, Sealer: ring.PHI(), Audit: db.rec})
		if err != nil {
			return err
		}
		o := cliOrigin()
		return run(&authEnv{ctx: ctx, pool: pool, ring: ring, svc: svc, out: c.OutOrStdout(), json: *asJSON,
			o: auth.Origin{Actor: o.Actor, RequestID: o.RequestID, SourceAddr: o.SourceAddr}}, args)
	}
}

func (e *authEnv) print(v any, table func(w *tabwriter.Writer)) error {
	if e.json {
		enc := json.NewEncoder(e.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	w := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
	table(w)
	return w.Flush()
}

// findUser resolves an e-mail address or a user id.
func (e *authEnv) findUser(s string) (auth.User, error) {
	if id, err := uuid.Parse(s); err == nil {
		return e.svc.User(e.ctx, id)
	}
	return e.svc.UserByEmail(e.ctx, s)
}

// subject resolves a user (e-mail or id), "svc:<name or id>", or a policy subject as is.
func (e *authEnv) subject(s string) (string, error) {
	if name, ok := strings.CutPrefix(s, "svc:"); ok {
		if _, err := uuid.Parse(name); err == nil {
			return s, nil
		}
		accts, err := e.svc.ServiceAccounts(e.ctx)
		if err != nil {
			return "", err
		}
		for _, a := range accts {
			if a.Name == name {
				return auth.ServiceSubject(a.ID), nil
			}
		}
		return "", fmt.Errorf("service account %q: %w", name, auth.ErrNotFound)
	}
	if strings.HasPrefix(s, "user:") || strings.HasPrefix(s, "token:") {
		return s, nil
	}
	u, err := e.findUser(s)
	if err != nil {
		return "", err
	}
	return auth.UserSubject(u.ID), nil
}

// parseGrant parses ROLE or ROLE@DOMAIN (DOMAIN: "*", ward:<id> or a ward id).
func parseGrant(s string) (string, auth.Domain, error) {
	role, dom, _ := strings.Cut(s, "@")
	d, err := auth.ParseDomain(dom)
	return role, d, err
}

func newUserCmd() *cobra.Command {
	var (
		dataDir string
		asJSON  bool
		baseURL string
	)
	cmd := &cobra.Command{
		Use:   "user",
		Short: "Administer users: add (with a one-time enrollment link), list, disable, reset MFA",
		Long: `Administer the people who sign in to Vigil, in the database at VIGIL_DATABASE_URL, with the
key ring (VIGIL_VAULT_ADDR or VIGIL_KEYRING_PASSPHRASE and --data-dir): e-mail addresses and
names are sealed like patient data.

A new user gets a one-time enrollment link (valid 72 hours): opening it, they choose a
password and add a TOTP authenticator, and receive their recovery codes. The first
administrator is created with 'vigil user add --admin'. Users of an OpenID provider need no
account here: they are created at their first sign-in.

Every change is recorded in the audit trail with the operating-system user as the actor.`,
		Example: `  vigil user add admin@hospital.example --name "Site Admin" --admin
  vigil user add nurse@hospital.example --role clinician@ward:0192f5a0-7c1e-7b3a-9c44-1d2e3f405162
  vigil user list --json
  vigil user reset-mfa nurse@hospital.example
  vigil user disable nurse@hospital.example`,
	}
	cmd.PersistentFlags().StringVar(&dataDir, "data-dir", envOr("VIGIL_DATA_DIR", "./.vigil"), "directory of the local key ring (env VIGIL_DATA_DIR)")
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON instead of text")
	cmd.PersistentFlags().StringVar(&baseURL, "base-url", envOr("VIGIL_PUBLIC_URL", "http://127.0.0.1:8080"), "the portal's public URL, for enrollment links (env VIGIL_PUBLIC_URL)")

	printLink := func(e *authEnv, u auth.User, en auth.Enrollment) error {
		link := en.Link(baseURL)
		if e.json {
			return e.print(map[string]any{"user": u, "enrollment_link": link, "expires_at": en.ExpiresAt}, nil)
		}
		fmt.Fprintf(e.out, "user %s (%s)\n", u.ID, u.Profile.Email)
		fmt.Fprintf(e.out, "one-time enrollment link (valid until %s; give it to the user only):\n  %s\n", en.ExpiresAt.Format("2006-01-02 15:04 MST"), link)
		return nil
	}

	var (
		name    string
		roles   []string
		isAdmin bool
	)
	add := &cobra.Command{
		Use:   "add EMAIL",
		Short: "Add a user with roles and print their one-time enrollment link",
		Args:  cobra.ExactArgs(1),
		RunE: withAuth(&dataDir, &asJSON, func(e *authEnv, args []string) error {
			type grant struct {
				role string
				d    auth.Domain
			}
			var grants []grant
			if isAdmin {
				grants = append(grants, grant{auth.RoleAdmin, auth.AllDomains})
			}
			for _, r := range roles {
				role, d, err := parseGrant(r)
				if err != nil {
					return err
				}
				grants = append(grants, grant{role, d})
			}
			if len(grants) == 0 {
				return fmt.Errorf("give the user a role: --role ROLE[@ward:<id>] or --admin (roles: %s)", roleNames())
			}
			for _, g := range grants {
				if _, ok := auth.LookupRole(g.role); !ok {
					return fmt.Errorf("unknown role %q (roles: %s)", g.role, roleNames())
				}
			}
			u, err := e.svc.CreateUser(e.ctx, e.o, auth.Profile{Email: args[0], DisplayName: name})
			if err != nil {
				return err
			}
			for _, g := range grants {
				if err := e.svc.GrantRole(e.ctx, e.o, auth.UserSubject(u.ID), g.role, g.d); err != nil {
					return err
				}
			}
			en, err := e.svc.IssueEnrollment(e.ctx, e.o, u.ID)
			if err != nil {
				return err
			}
			u, _ = e.svc.User(e.ctx, u.ID)
			return printLink(e, u, en)
		}),
	}
	add.Flags().StringVar(&name, "name", "", "display name (sealed)")
	add.Flags().StringArrayVar(&roles, "role", nil, "role to grant, ROLE or ROLE@ward:<id> (repeatable)")
	add.Flags().BoolVar(&isAdmin, "admin", false, "grant the admin role (the first administrator)")

	list := &cobra.Command{
		Use:   "list",
		Short: "List users with their roles",
		Args:  cobra.NoArgs,
		RunE: withAuth(&dataDir, &asJSON, func(e *authEnv, _ []string) error {
			us, err := e.svc.Users(e.ctx)
			if err != nil {
				return err
			}
			return e.print(us, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ID\tEMAIL\tNAME\tSTATUS\tSIGN-IN\tROLES")
				for _, u := range us {
					via := "not enrolled"
					switch {
					case u.OIDC:
						via = "oidc"
					case u.HasPassword && u.HasTOTP:
						via = "password+totp"
					case u.HasPassword:
						via = "password"
					}
					var rs []string
					for _, g := range u.Roles {
						rs = append(rs, g.Role+"@"+string(g.Domain))
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", u.ID, u.Profile.Email, u.Profile.DisplayName, u.Status, via, strings.Join(rs, ","))
				}
			})
		}),
	}

	one := func(use, short string, run func(e *authEnv, u auth.User) error) *cobra.Command {
		return &cobra.Command{Use: use + " EMAIL|ID", Short: short, Args: cobra.ExactArgs(1),
			RunE: withAuth(&dataDir, &asJSON, func(e *authEnv, args []string) error {
				u, err := e.findUser(args[0])
				if err != nil {
					return err
				}
				return run(e, u)
			})}
	}
	disable := one("disable", "Disable a user and end all their sessions", func(e *authEnv, u auth.User) error {
		if err := e.svc.DisableUser(e.ctx, e.o, u.ID); err != nil {
			return err
		}
		fmt.Fprintf(e.out, "user %s disabled; their sessions ended\n", u.ID)
		return nil
	})
	enable := one("enable", "Enable a disabled user", func(e *authEnv, u auth.User) error {
		if err := e.svc.EnableUser(e.ctx, e.o, u.ID); err != nil {
			return err
		}
		fmt.Fprintf(e.out, "user %s enabled\n", u.ID)
		return nil
	})
	resetMFA := one("reset-mfa", "Remove a user's second factors, end their sessions, and print a new enrollment link", func(e *authEnv, u auth.User) error {
		en, err := e.svc.ResetMFA(e.ctx, e.o, u.ID)
		if err != nil {
			return err
		}
		return printLink(e, u, en)
	})
	link := one("enroll-link", "Print a new one-time enrollment link (earlier ones stop working)", func(e *authEnv, u auth.User) error {
		en, err := e.svc.IssueEnrollment(e.ctx, e.o, u.ID)
		if err != nil {
			return err
		}
		return printLink(e, u, en)
	})
	signOut := one("sign-out", "End every session of a user (sign out everywhere)", func(e *authEnv, u auth.User) error {
		n, err := e.svc.SignOutEverywhere(e.ctx, e.o, u.ID)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.out, "%d session(s) of %s ended\n", n, u.ID)
		return nil
	})
	cmd.AddCommand(add, list, disable, enable, resetMFA, link, signOut, newServiceAccountCmd(&dataDir, &asJSON))
	return cmd
}

// newServiceAccountCmd is `vigil user service …`: machine principals and their API tokens.
func newServiceAccountCmd(dataDir *string, asJSON *bool) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "service",
		Short: "Service accounts (CI, integrations) and their API tokens",
		Long: `A service account signs in with API tokens only (Authorization: Bearer vgt_…). Grant it
roles with 'vigil role grant svc:<name> ROLE'; each token carries a subset of them, expires
(default 90 days, at most 366) and can be revoked at once. A token is printed once.`,
		Example: `  vigil user service add ci-pipeline
  vigil role grant svc:ci-pipeline quality
  vigil user service token ci-pipeline --name "release job" --role quality --days 30
  vigil user service revoke 0192f5c0-…`,
	}
	find := func(e *authEnv, name string) (auth.ServiceAccount, error) {
		accts, err := e.svc.ServiceAccounts(e.ctx)
		if err != nil {
			return auth.ServiceAccount{}, err
		}
		for _, a := range accts {
			if a.Name == name || a.ID.String() == name {
				return a, nil
			}
		}
		return auth.ServiceAccount{}, fmt.Errorf("service account %q: %w", name, auth.ErrNotFound)
	}
	add := &cobra.Command{Use: "add NAME", Short: "Add a service account", Args: cobra.ExactArgs(1),
		RunE: withAuth(dataDir, asJSON, func(e *authEnv, args []string) error {
			a, err := e.svc.CreateServiceAccount(e.ctx, e.o, args[0])
			if err != nil {
				return err
			}
			return e.print(a, func(w *tabwriter.Writer) { fmt.Fprintf(w, "service account %s (%s)\n", a.Name, a.ID) })
		})}
	list := &cobra.Command{Use: "list", Short: "List service accounts and their tokens", Args: cobra.NoArgs,
		RunE: withAuth(dataDir, asJSON, func(e *authEnv, _ []string) error {
			accts, err := e.svc.ServiceAccounts(e.ctx)
			if err != nil {
				return err
			}
			type row struct {
				auth.ServiceAccount
				Tokens []auth.APIToken `json:"tokens"`
			}
			var rows []row
			for _, a := range accts {
				ts, err := e.svc.APITokens(e.ctx, a.ID)
				if err != nil {
					return err
				}
				rows = append(rows, row{a, ts})
			}
			return e.print(rows, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ACCOUNT\tSTATUS\tTOKEN\tNAME\tROLES\tEXPIRES\tREVOKED")
				for _, r := range rows {
					fmt.Fprintf(w, "%s\t%s\t\t\t\t\t\n", r.Name, r.Status)
					for _, t := range r.Tokens {
						rev := "-"
						if t.RevokedAt != nil {
							rev = t.RevokedAt.Format("2006-01-02")
						}
						fmt.Fprintf(w, "\t\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, strings.Join(t.Roles, ","), t.ExpiresAt.Format("2006-01-02"), rev)
					}
				}
			})
		})}
	var (
		tokName  string
		tokRoles []string
		days     int
	)
	token := &cobra.Command{Use: "token ACCOUNT", Short: "Issue an API token (printed once)", Args: cobra.ExactArgs(1),
		RunE: withAuth(dataDir, asJSON, func(e *authEnv, args []string) error {
			a, err := find(e, args[0])
			if err != nil {
				return err
			}
			t, err := e.svc.IssueAPIToken(e.ctx, e.o, a.ID, tokName, tokRoles, time.Duration(days)*24*time.Hour)
			if err != nil {
				return err
			}
			return e.print(t, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "token %s of %s, roles %s, expires %s\n", t.ID, a.Name, strings.Join(t.Roles, ","), t.ExpiresAt.Format(time.RFC3339))
				fmt.Fprintf(w, "  %s\n(shown once: store it in the client's secret store)\n", t.Token)
			})
		})}
	token.Flags().StringVar(&tokName, "name", "", "what the token is for")
	token.Flags().StringArrayVar(&tokRoles, "role", nil, "role the token carries (repeatable; default all of the account's)")
	token.Flags().IntVar(&days, "days", 90, "days until the token expires (at most 366)")
	revoke := &cobra.Command{Use: "revoke TOKEN_ID", Short: "Revoke an API token at once", Args: cobra.ExactArgs(1),
		RunE: withAuth(dataDir, asJSON, func(e *authEnv, args []string) error {
			id, err := uuid.Parse(args[0])
			if err != nil {
				return err
			}
			if err := e.svc.RevokeAPIToken(e.ctx, e.o, id); err != nil {
				return err
			}
			fmt.Fprintf(e.out, "token %s revoked\n", id)
			return nil
		})}
	disable := &cobra.Command{Use: "disable ACCOUNT", Short: "Disable a service account and revoke its tokens", Args: cobra.ExactArgs(1),
		RunE: withAuth(dataDir, asJSON, func(e *authEnv, args []string) error {
			a, err := find(e, args[0])
			if err != nil {
				return err
			}
			if err := e.svc.DisableServiceAccount(e.ctx, e.o, a.ID); err != nil {
				return err
			}
			fmt.Fprintf(e.out, "service account %s disabled; its tokens revoked\n", a.Name)
			return nil
		})}
	cmd.AddCommand(add, list, token, revoke, disable)
	return cmd
}

func roleNames() string {
	var out []string
	for _, r := range auth.Roles {
		out = append(out, r.Name)
	}
	return strings.Join(out, ", ")
}
