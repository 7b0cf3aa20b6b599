package traceability

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/mod/modfile"
)

// Config locates the quality records and the test results of a repository. Zero fields take
// the documented defaults, relative to Root.
type Config struct {
	// Root is the repository (the directory of go.mod). Required.
	Root string
	// QMS is the folder of the quality records. Default Root/qms; it holds requirements/,
	// risks/, risk-policy.yaml and items.yaml.
	QMS string
	// TestJSON is the output of `go test -json` to read. Empty: no results (every
	// requirement is then not verified).
	TestJSON string
	// Commit names the commit the matrix is of. Default: GitCommit(Root).
	Commit string
}

// Load reads everything Build needs: requirements, risks, the policy, items, the tests'
// Verifies lines and the test run.
func Load(ctx context.Context, cfg Config) (Input, error) {
	if cfg.Root == "" {
		return Input{}, errors.New("traceability: Config.Root is required")
	}
	if cfg.QMS == "" {
		cfg.QMS = filepath.Join(cfg.Root, "qms")
	}
	var in Input
	gomod, err := os.ReadFile(filepath.Join(cfg.Root, "go.mod"))
	if err != nil {
		return Input{}, fmt.Errorf("traceability: %w", err)
	}
	in.Module = modfile.ModulePath(gomod)
	if in.Module == "" {
		return Input{}, fmt.Errorf("traceability: no module line in %s", filepath.Join(cfg.Root, "go.mod"))
	}
	in.Commit = cfg.Commit
	if in.Commit == "" {
		in.Commit = GitCommit(ctx, cfg.Root)
	}
	var errs []error
	if in.Requirements, err = LoadRequirements(filepath.Join(cfg.QMS, "requirements")); err != nil {
		errs = append(errs, err)
	}
	if in.Policy, err = LoadPolicy(filepath.Join(cfg.QMS, "risk-policy.yaml")); err != nil {
		errs = append(errs, err)
	}
	if in.Risks, err = LoadRisks(filepath.Join(cfg.QMS, "risks"), in.Policy); err != nil {
		errs = append(errs, err)
	}
	if in.Items, err = LoadItems(filepath.Join(cfg.QMS, "items.yaml")); err != nil {
		errs = append(errs, err)
	}
	if in.Tests, err = ScanTests(cfg.Root); err != nil {
		errs = append(errs, err)
	}
	if cfg.TestJSON != "" {
		f, err := os.Open(cfg.TestJSON)
		if err != nil {
			errs = append(errs, fmt.Errorf("test results: %w", err))
		} else {
			in.Run, err = ParseTestJSON(f)
			f.Close()
			if err != nil {
				errs = append(errs, fmt.Errorf("test results %s: %w", cfg.TestJSON, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Input{}, err
	}
	return in, nil
}

// GitCommit returns the commit checked out at root ("<sha>" or "<sha>-dirty" when the work
// tree has changes), or "unknown" when git cannot tell.
func GitCommit(ctx context.Context, root string) string {
	out, err := exec.CommandContext(ctx, "git", "-C", root, "rev-parse", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	sha := strings.TrimSpace(string(out))
	st, err := exec.CommandContext(ctx, "git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output()
	if err == nil && len(strings.TrimSpace(string(st))) > 0 {
		sha += "-dirty"
	}
	return sha
}
