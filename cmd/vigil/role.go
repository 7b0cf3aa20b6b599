package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/auth"
)

func init() { subcommands = append(subcommands, newRoleCmd) }

func newRoleCmd() *cobra.Command {
	var (
		dataDir string
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "role",
		Short: "List roles; grant and revoke roles of users and service accounts",
		Long: `Roles are granted per domain: for every ward ("*") or for one ward ("ward:<id>"). Clinical
roles (clinician, charge_nurse) may be granted per ward; the others for "*" only. A SUBJECT is
a user's e-mail address or id, or a service account as svc:<name>.

Each grant and revocation is a new policy version, audited, and takes effect in every running
server as soon as it commits (announced with PostgreSQL NOTIFY; a server that missed it catches
up at its next policy refresh, every 5 s).`,
		Example: `  vigil role list
  vigil role grant nurse@hospital.example clinician --ward 0192f5a0-7c1e-7b3a-9c44-1d2e3f405162
  vigil role grant svc:ci-pipeline quality
  vigil role revoke nurse@hospital.example clinician --ward 0192f5a0-…
  vigil role grants --json`,
	}
	cmd.PersistentFlags().StringVar(&dataDir, "data-dir", envOr("VIGIL_DATA_DIR", "./.vigil"), "directory of the local key ring (env VIGIL_DATA_DIR)")
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON instead of text")

	list := &cobra.Command{
		Use:   "list",
		Short: "List the roles Vigil knows",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			e := &authEnv{out: c.OutOrStdout(), json: asJSON}
			return e.print(auth.Roles, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ROLE\tPER WARD\tSEES PHI (MFA)\tDESCRIPTION")
				for _, r := range auth.Roles {
					fmt.Fprintf(w, "%s\t%v\t%v\t%s\n", r.Name, r.Clinical, r.SeesPHI, r.Description)
				}
			})
		},
	}
	var wardFlag string
	change := func(use, short string, grant bool) *cobra.Command {
		c := &cobra.Command{Use: use + " SUBJECT ROLE", Short: short, Args: cobra.ExactArgs(2),
			RunE: withAuth(&dataDir, &asJSON, func(e *authEnv, args []string) error {
				sub, err := e.subject(args[0])
				if err != nil {
					return err
				}
				d, err := auth.ParseDomain(wardFlag)
				if err != nil {
					return err
				}
				if grant {
					err = e.svc.GrantRole(e.ctx, e.o, sub, args[1], d)
				} else {
					err = e.svc.RevokeRole(e.ctx, e.o, sub, args[1], d)
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(e.out, "%s: %s %s in %s (policy version %d)\n", use, sub, args[1], d, e.svc.Enforcer().Version())
				return nil
			})}
		c.Flags().StringVar(&wardFlag, "ward", "*", `the ward (id or ward:<id>), or "*" for every ward`)
		return c
	}
	grants := &cobra.Command{
		Use:   "grants [SUBJECT]",
		Short: "List role grants (of one subject)",
		Args:  cobra.MaximumNArgs(1),
		RunE: withAuth(&dataDir, &asJSON, func(e *authEnv, args []string) error {
			sub := ""
			if len(args) == 1 {
				var err error
				if sub, err = e.subject(args[0]); err != nil {
					return err
				}
			}
			gs, err := e.svc.Grants(e.ctx, sub)
			if err != nil {
				return err
			}
			return e.print(gs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "SUBJECT\tROLE\tDOMAIN\tSOURCE")
				for _, g := range gs {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", g.Subject, g.Role, g.Domain, g.Source)
				}
			})
		}),
	}
	cmd.AddCommand(list, change("grant", "Grant a role to a user or service account", true),
		change("revoke", "Revoke a role from a user or service account", false), grants)
	return cmd
}
