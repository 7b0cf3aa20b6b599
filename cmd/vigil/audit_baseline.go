package main

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/rowdigest"
)

func newAuditBaselineCmd() *cobra.Command {
	var (
		dataDir string
		asJSON  bool
		dryRun  bool
	)
	cmd := &cobra.Command{
		Use:   "baseline",
		Short: "Adopt, once, the audited rows written before they carried their event",
		Long: `Rows written before their table carried the id of the event that last wrote them (devices,
assignments, patients, users, policy lines, service accounts, API tokens: migration 00610;
break-glass grants and the tables added later) name no event, and 'vigil audit verify'
reports each as unaudited_change. Baseline adopts them, once per table, in one transaction:
it records audit.baseline events ("pre-existing row adopted at baseline", object
audit_baseline/<table>) whose payload commits to the digest of each adopted row, and stamps
the rows with them. From then on verify checks those rows like any other: a change made
behind the system's back is a domain_mismatch.

Run it once, right after upgrading, after reviewing what --dry-run lists. It never touches a
row that names an event, nor one that carries a digest without an event (its event id was
removed): those stay findings. A table with no un-stamped row is baselined too; a second run
adopts nothing in a table baselined before (a row of it that names no event was written
behind the system's back and stays an unaudited_change), says so, and is recorded as a
rejected audit.baseline (reason already_baselined). A table that gains its columns in a later
upgrade is adopted by the next run.

Needs the key ring (--data-dir with VIGIL_KEYRING_PASSPHRASE, or Vault): the baseline events
are authenticated like every other.`,
		Example: `  vigil audit baseline --dry-run
  vigil audit baseline
  vigil audit verify`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			db, err := openDB(ctx, envOrCtx(ctx, "VIGIL_DATABASE_URL", ""))
			if err != nil {
				return err
			}
			defer db.Close()
			if !dryRun {
				closeRing, err := authenticateCommand(ctx, dataDir, db)
				if err != nil {
					return err
				}
				defer func() { _ = closeRing(ctx) }()
			}
			o := cliOrigin()
			res, err := rowdigest.Baseline(ctx, db.pool, db.rec, audit.Event{Actor: o.Actor, RequestID: o.RequestID, SourceAddr: o.SourceAddr}, dryRun)
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(out).Encode(res)
			}
			for _, t := range res.Tables {
				switch {
				case t.Earlier != nil:
					fmt.Fprintf(out, "%-24s baselined before (event %s); nothing adopted", t.Table, t.Earlier)
				case dryRun:
					fmt.Fprintf(out, "%-24s would adopt %d row(s)", t.Table, t.Adopted)
					if len(t.Keys) > 0 {
						more := ""
						if t.Adopted > len(t.Keys) {
							more = ", …"
						}
						fmt.Fprintf(out, " (%s%s)", strings.Join(t.Keys, ", "), more)
					}
				default:
					ids := make([]string, len(t.Events))
					for i, id := range t.Events {
						ids[i] = id.String()
					}
					fmt.Fprintf(out, "%-24s adopted %d row(s) (event %s)", t.Table, t.Adopted, strings.Join(ids, ", "))
				}
				if t.Unstamped > 0 {
					fmt.Fprintf(out, "; %d row(s) naming no event left as findings", t.Unstamped)
				}
				fmt.Fprintln(out)
			}
			switch {
			case res.Already:
				fmt.Fprintln(out, "every audited table was baselined before: nothing stamped (recorded as a rejected audit.baseline)")
			case dryRun:
				fmt.Fprintf(out, "dry run: %d row(s) would be adopted; nothing changed\n", res.Adopted)
			default:
				fmt.Fprintf(out, "baseline: %d row(s) adopted\n", res.Adopted)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", envOr("VIGIL_DATA_DIR", "./.vigil"), "directory of the local key ring (env VIGIL_DATA_DIR): the baseline events are authenticated with it")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list what would be adopted; change and record nothing")
	return cmd
}
