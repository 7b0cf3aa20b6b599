package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/traceability"
)

func init() { subcommands = append(subcommands, newTraceCmd) }

// defaultTestJSON is where `make unit` writes the go test -json output of the test run.
const defaultTestJSON = ".vigil/ci/go-test.json"

func newTraceCmd() *cobra.Command {
	var cfg traceability.Config
	var out string
	cmd := &cobra.Command{
		Use:   "trace",
		Short: "Build the traceability matrix from the quality records and a go test -json run",
		Long: `Trace links every requirement (qms/requirements) to the tests that name it in a
'// Verifies: REQ-…' line and to their results in a go test -json run, every risk (qms/risks)
to its controls, and every software item (qms/items.yaml) to its requirements. It writes the
matrix as Markdown, HTML (one sortable page), CSV and JSON into --out and prints a summary.

It reports requirements with no test, with only failing, skipped or not-run tests, risk
controls that are not verified requirements, tests that verify nothing, and items with no
requirement (docs/quality.md).

Exit status: 0 when every requirement is verified by a passing test and nothing else is
wrong, 1 when the matrix has errors, 2 when it could not be built.`,
		Example: `  go test -json ./... > .vigil/ci/go-test.json
  vigil trace --test-json .vigil/ci/go-test.json --out .vigil/trace`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			in, err := traceability.Load(ctx, cfg)
			if err != nil {
				return err
			}
			m := traceability.Build(in)
			files, err := m.WriteFiles(out, "traceability")
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			s := m.Summary
			fmt.Fprintf(w, "commit %s: %d/%d requirements verified (%.1f %%); tests %d passed, %d failed, %d skipped; risks verified %d/%d; %d items (system class %s)\n",
				m.Commit, s.Verified, s.Requirements, s.Coverage, s.Passed, s.Failed, s.Skipped, s.RisksVerified, s.Risks, s.Items, s.SystemClass)
			for _, f := range m.Findings {
				fmt.Fprintf(w, "  %s\n", f)
			}
			for _, f := range files {
				fmt.Fprintf(w, "wrote %s\n", f)
			}
			if n := len(m.Errors()); n > 0 {
				return &exitError{code: 1, err: fmt.Errorf("trace: %d error(s)", n)}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&cfg.Root, "root", ".", "the repository (the directory of go.mod)")
	cmd.Flags().StringVar(&cfg.QMS, "qms", "", "folder of the quality records (default ROOT/qms)")
	cmd.Flags().StringVar(&cfg.TestJSON, "test-json", filepath.FromSlash(defaultTestJSON), "go test -json output of the test run")
	cmd.Flags().StringVar(&cfg.Commit, "commit", "", "commit the run is of (default: git HEAD of ROOT, -dirty when changed)")
	cmd.Flags().StringVar(&out, "out", filepath.FromSlash(".vigil/trace"), "folder to write traceability.{md,html,csv,json} into")
	return cmd
}
