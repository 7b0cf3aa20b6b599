package main

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
)

func init() { subcommands = append(subcommands, newPolicyCmd) }

func newPolicyCmd() *cobra.Command {
	var (
		dataDir string
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Show, test and change the authorization policy; review break-glass access",
		Long: `The authorization policy is Casbin data in the database: rules (ROLE may do ACTION on
OBJECT within SCOPE) and role grants (vigil role). 'policy show' prints the model, the rules
and the version history; 'policy test' explains one decision; 'policy add|remove' change
rules (each change is a new policy version, audited, in effect in every running server as
soon as it commits). See docs/access.md for the model.

Scopes: global (role held for "*"), ward (role held for the object's ward or "*"), any (role
held somewhere; list endpoints, narrowed by the visibility filter), care_team (role held
somewhere and on the patient's care team), break_glass (role held somewhere and an active
break-glass grant for the patient).`,
		Example: `  vigil policy show
  vigil policy test nurse@hospital.example observation read --patient 0192f5a1-…
  vigil policy test svc:ci-pipeline evidence read
  vigil policy add quality observation read --scope global
  vigil policy break-glass            # grants not reviewed yet
  vigil policy review 0192f5b0-… --note "justified: rapid response"`,
	}
	cmd.PersistentFlags().StringVar(&dataDir, "data-dir", envOr("VIGIL_DATA_DIR", "./.vigil"), "directory of the local key ring (env VIGIL_DATA_DIR)")
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON instead of text")

	var history int
	show := &cobra.Command{
		Use:   "show",
		Short: "Print the model, the rules, the grant count and the latest versions",
		Args:  cobra.NoArgs,
		RunE: withAuth(&dataDir, &asJSON, func(e *authEnv, _ []string) error {
			rules, err := e.svc.Rules(e.ctx)
			if err != nil {
				return err
			}
			grants, err := e.svc.Grants(e.ctx, "")
			if err != nil {
				return err
			}
			hist, err := e.svc.PolicyHistory(e.ctx, history)
			if err != nil {
				return err
			}
			v := map[string]any{"version": e.svc.Enforcer().Version(), "model": auth.ModelText(), "rules": rules,
				"grants": len(grants), "history": hist}
			return e.print(v, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "policy version %d, %d rules, %d role grants\n\n", e.svc.Enforcer().Version(), len(rules), len(grants))
				fmt.Fprintln(w, "ROLE\tOBJECT\tACTION\tSCOPE")
				for _, r := range rules {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.Role, r.Object, r.Action, r.Scope)
				}
				fmt.Fprintln(w, "\nVERSION\tCHANGED\tBY\tCHANGE")
				for _, h := range hist {
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", h.Version, h.ChangedAt.Format("2006-01-02 15:04:05"), h.Actor, h.Change)
				}
			})
		}),
	}
	show.Flags().IntVar(&history, "history", 10, "how many versions to list")

	var (
		wardID, patientID string
		careTeam          bool
	)
	test := &cobra.Command{
		Use:   "test SUBJECT OBJECT ACTION",
		Short: "Explain whether SUBJECT may do ACTION on OBJECT, and why",
		Long: `Explain one decision. SUBJECT is a user's e-mail address or id, svc:<name>, or a policy
subject (user:<id>, token:<id>). With --patient the patient's ward and care team are read
from the clinical core; --ward and --care-team state them by hand instead. Exit status 0 when
allowed, 1 when denied.`,
		Args: cobra.ExactArgs(3),
		RunE: withAuth(&dataDir, &asJSON, func(e *authEnv, args []string) error {
			sub, err := e.subject(args[0])
			if err != nil {
				return err
			}
			_, clinician, _ := strings.Cut(sub, ":")
			t := auth.Target{Object: args[1]}
			if wardID != "" {
				d, err := auth.ParseDomain(wardID)
				if err != nil {
					return err
				}
				t.Ward, _ = d.Ward()
			}
			if patientID != "" {
				if t.Patient, err = uuid.Parse(patientID); err != nil {
					return fmt.Errorf("--patient: %w", err)
				}
				cs, err := core.New(core.Config{Pool: e.pool, PHI: e.ring.PHI()})
				if err != nil {
					return err
				}
				p, err := cs.Patient(e.ctx, t.Patient)
				if err != nil {
					return err
				}
				if p.WardID != nil && wardID == "" {
					t.Ward = *p.WardID
				}
				team, err := cs.CareTeam(e.ctx, t.Patient)
				if err != nil {
					return err
				}
				for _, m := range team {
					t.CareTeam = append(t.CareTeam, m.ClinicianID)
				}
			}
			if careTeam {
				if t.Patient == uuid.Nil {
					t.Patient = uuid.Must(uuid.NewV7()) // a hypothetical patient
				}
				t.CareTeam = append(t.CareTeam, clinician)
			}
			x, err := e.svc.Enforcer().Explain(sub, clinician, args[2], t)
			if err != nil {
				return err
			}
			err = e.print(x, func(w *tabwriter.Writer) {
				verdict := "DENY"
				if x.Decision.Allowed {
					verdict = "ALLOW"
				}
				fmt.Fprintf(w, "%s: %s %s %s (policy version %d)\n", verdict, sub, args[2], args[1], x.Decision.Version)
				if x.Decision.Rule != nil {
					fmt.Fprintf(w, "  by rule:\t%s (basis %s)\n", x.Decision.Rule, x.Decision.Basis)
				}
				if x.Decision.BreakGlass != uuid.Nil {
					fmt.Fprintf(w, "  break-glass grant:\t%s\n", x.Decision.BreakGlass)
				}
				fmt.Fprintf(w, "  target:\tward %s, patient %s, on care team %v, active break-glass %d\n", x.Target.Ward, x.Target.Patient, x.CareTeam, len(x.BreakGlass))
				fmt.Fprintln(w, "  roles of the subject:")
				for _, g := range x.Roles {
					fmt.Fprintf(w, "    %s\tin %s\t(%s)\n", g.Role, g.Domain, g.Source)
				}
				fmt.Fprintf(w, "  rules for %s %s:\n", args[1], args[2])
				for _, r := range x.Candidates {
					fmt.Fprintf(w, "    %s\n", r)
				}
			})
			if err == nil && !x.Decision.Allowed {
				return &exitError{code: 1, err: errors.New("denied")}
			}
			return err
		}),
	}
	test.Flags().StringVar(&wardID, "ward", "", "the object's ward (id or ward:<id>)")
	test.Flags().StringVar(&patientID, "patient", "", "the patient concerned (ward and care team read from the clinical core)")
	test.Flags().BoolVar(&careTeam, "care-team", false, "the subject is on the patient's care team")

	var scope string
	rule := func(use, short string, add bool) *cobra.Command {
		c := &cobra.Command{Use: use + " ROLE OBJECT ACTION", Short: short, Args: cobra.ExactArgs(3),
			RunE: withAuth(&dataDir, &asJSON, func(e *authEnv, args []string) error {
				r := auth.Rule{Role: args[0], Object: args[1], Action: args[2], Scope: scope}
				var err error
				if add {
					err = e.svc.AddRule(e.ctx, e.o, r)
				} else {
					err = e.svc.RemoveRule(e.ctx, e.o, r)
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(e.out, "%s: %s (policy version %d)\n", use, r, e.svc.Enforcer().Version())
				return nil
			})}
		c.Flags().StringVar(&scope, "scope", auth.ScopeWard, "global, ward, any, care_team or break_glass")
		return c
	}

	var all bool
	glass := &cobra.Command{
		Use:   "break-glass",
		Short: "List break-glass grants not reviewed yet (--all: every grant)",
		Args:  cobra.NoArgs,
		RunE: withAuth(&dataDir, &asJSON, func(e *authEnv, _ []string) error {
			gs, err := e.svc.BreakGlassGrants(e.ctx, !all, 1000)
			if err != nil {
				return err
			}
			return e.print(gs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ID\tUSER\tPATIENT\tOPENED\tEXPIRES\tREVIEWED\tREASON")
				for _, g := range gs {
					rev := "-"
					if g.ReviewedAt != nil {
						rev = g.ReviewedAt.Format("2006-01-02 15:04") + " by " + g.ReviewedBy
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.ID, g.UserID, g.PatientID, g.OpenedAt.Format("2006-01-02 15:04"),
						g.ExpiresAt.Format("15:04"), rev, g.Reason)
				}
			})
		}),
	}
	glass.Flags().BoolVar(&all, "all", false, "list reviewed grants too")
	var note string
	review := &cobra.Command{
		Use:   "review GRANT_ID",
		Short: "Mark a break-glass grant reviewed (audited with the note)",
		Args:  cobra.ExactArgs(1),
		RunE: withAuth(&dataDir, &asJSON, func(e *authEnv, args []string) error {
			id, err := uuid.Parse(args[0])
			if err != nil {
				return err
			}
			if err := e.svc.ReviewBreakGlass(e.ctx, e.o, id, note); err != nil {
				return err
			}
			fmt.Fprintf(e.out, "break-glass grant %s reviewed\n", id)
			return nil
		}),
	}
	review.Flags().StringVar(&note, "note", "", "the reviewer's conclusion")
	cmd.AddCommand(show, test, rule("add", "Add a policy rule", true), rule("remove", "Remove a policy rule", false), glass, review)
	return cmd
}
