package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/validation"
)

func init() { subcommands = append(subcommands, newValidateCmd) }

// addValidationFlags adds the flags that configure the validation gates (validate, release).
func addValidationFlags(cmd *cobra.Command, cfg *validation.Config) {
	cmd.Flags().StringVar(&cfg.Root, "root", ".", "the repository (the directory of go.mod)")
	cmd.Flags().StringVar(&cfg.QMS, "qms", "", "folder of the quality records (default ROOT/qms)")
	cmd.Flags().StringVar(&cfg.TestJSON, "test-json", filepath.FromSlash(defaultTestJSON), "go test -json output of the unit and integration run")
	cmd.Flags().StringVar(&cfg.FuzzJSON, "fuzz-json", filepath.FromSlash(".vigil/ci/fuzz.json"), "go test -json output of the short fuzz runs (make fuzz)")
	cmd.Flags().StringVar(&cfg.VulnDB, "vulndb", envOr("VIGIL_VULNDB", ""), "folder of the offline OSV vulnerability database for govulncheck (env VIGIL_VULNDB); required by the vulnerabilities gate")
	cmd.Flags().StringVar(&cfg.VulnMode, "vuln-mode", "", "what the vulnerabilities gate scans: binary (the --binary given; what a release does) or source (every package, ~10× slower); default binary when --binary is given, else source")
	cmd.Flags().StringSliceVar(&cfg.Gates, "gate", nil, "run only these gates (repeatable; default all)")
}

func newValidateCmd() *cobra.Command {
	var cfg validation.Config
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Run the validation gates and write their evidence, JUnit XML and JSON",
		Long: `Validate runs the named validation gates, each a pass or a fail with its evidence files:

  unit-and-integration    the go test -json run (--test-json) has tests and no failure
  traceability            100 % of requirements verified by a passing test, no gaps (vigil trace)
  risk-controls-verified  every risk control is a verified requirement, every residual risk acceptable
  vulnerabilities         govulncheck against the offline OSV database (--vulndb): nothing reachable
                          (binary mode on --binary when given, else source mode; --vuln-mode)
  sbom                    CycloneDX 1.6 SBOM and SOUP list, valid against the CycloneDX schema
  licences                every SOUP licence allowed by qms/licences.yaml
  fuzz                    every fuzz target passed its fuzzing run (--fuzz-json)
  migrations              up from empty, schema current, down and up give the same schema
  benchmarks-recorded     every table of figures in docs/benchmarks.md has its command

It prints a table, writes the evidence, report.json and junit.xml into --out, and exits 1 when
a gate fails. The migrations gate creates and drops a database on the server of
VIGIL_TEST_DATABASE_URL (an administrative connection; default the local postgres user).
See docs/quality.md.`,
		Example: `  make unit fuzz     # writes .vigil/ci/go-test.json and .vigil/ci/fuzz.json
  vigil validate --vulndb path/to/vulndb/osv --out .vigil/validate`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.DatabaseAdminURL = envOrCtx(cmd.Context(), "VIGIL_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable")
			cfg.Version = version
			rep, err := validation.Run(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if err := rep.WriteTable(w); err != nil {
				return err
			}
			fmt.Fprintf(w, "evidence in %s (report.json, junit.xml)\n", cfg.Out)
			if !rep.Passed {
				return &exitError{code: 1, err: fmt.Errorf("%w: %v", validation.ErrGatesFailed, rep.Failed())}
			}
			return nil
		},
	}
	addValidationFlags(cmd, &cfg)
	cmd.Flags().StringVar(&cfg.Out, "out", filepath.FromSlash(".vigil/validate"), "folder for the evidence and the reports")
	cmd.Flags().StringVar(&cfg.Binary, "binary", "", "built vigil binary whose modules the SBOM lists and the vulnerabilities gate scans (default: the modules ./cmd/vigil links, from go list, and the source)")
	return cmd
}
