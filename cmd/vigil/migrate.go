package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/internal/schema"
)

func latestSchema() int64 { return schema.LatestVersion() }

func newMigrateCmd() *cobra.Command {
	var status bool
	var phaseFlag string
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply the database migrations embedded in this binary",
		Long: `Apply the pending schema migrations embedded in this binary to the database at
VIGIL_DATABASE_URL, each in its own transaction, and say which phase each belongs to.
Concurrent runs are serialized by an advisory lock. A database this binary may not run on
(migrated by a newer binary past its compatibility window) is left untouched and reported.

Migrations follow expand/contract (docs/operations.md#rolling-upgrades). A rolling upgrade
from version N to N+1, with N's replicas serving throughout:
  1. vigil migrate --phase expand     (N+1's binary: additive changes; N runs on)
  2. replace each replica's binary with N+1, one at a time
  3. vigil migrate --phase contract   (once no replica runs N: removes what N needed;
                                       from then on 'vigil serve' of N refuses to start;
                                       refused while a running replica would be refused)
Without --phase every pending migration is applied in version order: for a single server,
or with every replica stopped. A migration that declares no phase is breaking: --phase
expand refuses to pass it.

With --status, only report the schema state: exit 0 when this binary may run on it (its
contract migrations may be pending), 1 when it needs migrations or the database is past
its window.`,
		Example: `  vigil migrate --status
  vigil migrate --phase expand
  vigil migrate --phase contract`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			phase, err := schema.ParsePhase(phaseFlag)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			ctx := cmd.Context()
			pool, err := openPool(ctx, envOrCtx(ctx, "VIGIL_DATABASE_URL", ""))
			if err != nil {
				return err
			}
			defer pool.Close()
			out := cmd.OutOrStdout()
			set := schema.Embedded()
			if status {
				st, err := set.Inspect(ctx, pool)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "schema: %s\n", st.Summary())
				if err := st.Check(); err != nil {
					return &exitError{code: 1, err: err}
				}
				return nil
			}
			name := "every pending migration"
			if phase != schema.PhaseAll {
				name = "the " + string(phase) + " phase"
			}
			applied, err := set.Apply(ctx, pool, phase)
			for _, m := range applied {
				fmt.Fprintf(out, "applied %s %s\n", m.Name, phaseWords(m))
			}
			if err != nil {
				if errors.Is(err, schema.ErrPhaseOrder) {
					return &exitError{code: 1, err: err}
				}
				return err
			}
			st, err := set.Inspect(ctx, pool)
			if err != nil {
				return err
			}
			if len(applied) == 0 {
				fmt.Fprintf(out, "%s: nothing to apply; schema: %s\n", name, st.Summary())
				return nil
			}
			fmt.Fprintf(out, "%s: applied %d migration(s); schema: %s\n", name, len(applied), st.Summary())
			return nil
		},
	}
	cmd.Flags().BoolVar(&status, "status", false, "report the schema state and exit; change nothing")
	cmd.Flags().StringVar(&phaseFlag, "phase", "all", "apply only this phase's migrations: expand (before replacing binaries), contract (after every replica runs this binary), or all")
	return cmd
}

func phaseWords(m schema.Migration) string {
	switch m.Phase {
	case schema.PhaseExpand:
		return "(expand: additive, the previous version keeps running)"
	case schema.PhaseContract:
		return fmt.Sprintf("(contract: binaries before %05d are refused from now on)", m.Compat)
	}
	return "(breaking: every binary without it is refused)"
}
