package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/internal/schema"
)

func latestSchema() int64 { return schema.LatestVersion() }

func newMigrateCmd() *cobra.Command {
	var status bool
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply the database migrations embedded in this binary",
		Long: `Apply every pending schema migration embedded in this binary to the database at
VIGIL_DATABASE_URL, each in its own transaction. Concurrent runs are serialized by an
advisory lock. A database migrated by a newer binary is left untouched and reported.

With --status, only report the schema state: exit 0 when current, 1 when migrations are
pending or the database is newer than this binary.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			pool, err := openPool(ctx, envOrCtx(ctx, "VIGIL_DATABASE_URL", ""))
			if err != nil {
				return err
			}
			defer pool.Close()
			out := cmd.OutOrStdout()
			if status {
				st, err := schema.Inspect(ctx, pool)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "schema: database at %d, binary at %d, %d pending\n", st.Current, st.Latest, st.Pending)
				if err := st.Check(); err != nil {
					return &exitError{code: 1, err: err}
				}
				return nil
			}
			applied, err := schema.Migrate(ctx, pool)
			if err != nil {
				return err
			}
			if len(applied) == 0 {
				fmt.Fprintf(out, "schema is current (version %d)\n", schema.LatestVersion())
				return nil
			}
			fmt.Fprintf(out, "applied %d migration(s): %v; schema now at %d\n", len(applied), applied, applied[len(applied)-1])
			return nil
		},
	}
	cmd.Flags().BoolVar(&status, "status", false, "report the schema state and exit; change nothing")
	return cmd
}
