package validation

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/vigilhealth/vigil/traceability"
)

// unitGate passes when the go test -json run exists, ran at least one test, and no test or
// package failed (a build failure, a panic or a timeout fails the package).
func unitGate(_ context.Context, e *env) Result {
	if e.cfg.TestJSON == "" {
		return fail("no test results", "no go test -json output was given (--test-json); run the tests first (make unit)")
	}
	f, err := os.Open(e.cfg.TestJSON)
	if err != nil {
		return fail("no test results", fmt.Sprintf("cannot read the test results: %v", err))
	}
	run, err := traceability.ParseTestJSON(f)
	f.Close()
	if err != nil {
		return fail("unreadable test results", err.Error())
	}
	dir, rel, err := e.dir(GateUnit)
	if err != nil {
		return fail("evidence", err.Error())
	}
	c := run.Count()
	res := Result{Summary: fmt.Sprintf("%d tests in %d packages: %d passed, %d failed, %d skipped (%d subtests); run %s – %s",
		len(run.Tests), len(run.Packages), c[traceability.Pass], c[traceability.Fail], c[traceability.Skip], run.Subtests,
		run.Start.Format("2006-01-02 15:04:05"), run.End.Format("15:04:05"))}
	summary := map[string]any{"source": e.cfg.TestJSON, "start": run.Start, "end": run.End, "tests": len(run.Tests),
		"passed": c[traceability.Pass], "failed": c[traceability.Fail], "skipped": c[traceability.Skip], "subtests": run.Subtests,
		"packages": run.Packages, "failed_tests": []traceability.TestResult{}}
	var failed []traceability.TestResult
	for _, t := range run.Tests {
		if t.Status == traceability.Fail {
			failed = append(failed, t)
			res.Reasons = append(res.Reasons, fmt.Sprintf("test %s %s failed", t.Package, t.Test))
		}
	}
	if failed != nil {
		summary["failed_tests"] = failed
	}
	for _, p := range run.FailedPackages() {
		what := "failed"
		if p.BuildFailed {
			what = "did not build"
		}
		res.Reasons = append(res.Reasons, fmt.Sprintf("package %s %s", p.Package, what))
	}
	for _, t := range run.Tests {
		if t.Status == traceability.Skip {
			res.Reasons = append(res.Reasons, fmt.Sprintf("note: test %s %s skipped", t.Package, t.Test))
		}
	}
	if err := writeJSONFile(filepath.Join(dir, "tests.json"), summary); err != nil {
		return fail("evidence", err.Error())
	}
	res.Evidence = []string{filepath.Join(rel, "tests.json")}
	switch {
	case len(run.Tests) == 0:
		res.Reasons = append(res.Reasons, "the run has no test at all")
	case c[traceability.Fail] == 0 && len(run.FailedPackages()) == 0:
		res.Passed = true
	}
	return res
}

func writeMatrix(e *env, gate string, m *traceability.Matrix) ([]string, error) {
	dir, rel, err := e.dir(gate)
	if err != nil {
		return nil, err
	}
	files, err := m.WriteFiles(dir, "traceability")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, f := range files {
		out = append(out, filepath.Join(rel, filepath.Base(f)))
	}
	return out, nil
}

// traceGate passes when every requirement is verified by a passing test (100 %) and the
// requirements, tests and items have no other error.
func traceGate(ctx context.Context, e *env) Result {
	m, err := e.matrixOf(ctx)
	if err != nil {
		return fail("matrix could not be built", strings.Split(err.Error(), "\n")...)
	}
	ev, err := writeMatrix(e, GateTrace, m)
	if err != nil {
		return fail("evidence", err.Error())
	}
	s := m.Summary
	res := Result{Evidence: ev, Summary: fmt.Sprintf("%d/%d requirements verified by a passing test (%.1f %%); %d items, system class %s",
		s.Verified, s.Requirements, s.Coverage, s.Items, s.SystemClass)}
	errs := m.Errors(traceability.AreaRequirements, traceability.AreaItems, traceability.AreaTests)
	for _, f := range errs {
		res.Reasons = append(res.Reasons, f.String())
	}
	res.Passed = len(errs) == 0 && s.Requirements > 0 && s.Verified == s.Requirements
	return res
}

// riskGate passes when every risk's controls are verified requirements and every residual
// risk is acceptable under the policy (ALARP with a written justification).
func riskGate(ctx context.Context, e *env) Result {
	m, err := e.matrixOf(ctx)
	if err != nil {
		return fail("matrix could not be built", strings.Split(err.Error(), "\n")...)
	}
	dir, rel, err := e.dir(GateRisks)
	if err != nil {
		return fail("evidence", err.Error())
	}
	if err := writeFile(filepath.Join(dir, "risks.md"), func(w io.Writer) error { return writeRiskTable(w, m) }); err != nil {
		return fail("evidence", err.Error())
	}
	if err := writeJSONFile(filepath.Join(dir, "risks.json"), m.Risks); err != nil {
		return fail("evidence", err.Error())
	}
	alarp := 0
	for _, r := range m.Risks {
		if r.After == traceability.ALARP {
			alarp++
		}
	}
	res := Result{Evidence: []string{filepath.Join(rel, "risks.md"), filepath.Join(rel, "risks.json")},
		Summary: fmt.Sprintf("%d/%d risks with every control verified; residual: %d acceptable, %d ALARP (justified)",
			m.Summary.RisksVerified, m.Summary.Risks, m.Summary.Risks-alarp, alarp)}
	errs := m.Errors(traceability.AreaRisks)
	for _, f := range errs {
		res.Reasons = append(res.Reasons, f.String())
	}
	res.Passed = len(errs) == 0 && m.Summary.Risks > 0
	if m.Summary.Risks == 0 {
		res.Reasons = append(res.Reasons, "the risk file is empty")
	}
	return res
}

func writeRiskTable(w io.Writer, m *traceability.Matrix) error {
	fmt.Fprintf(w, "# Risk controls — commit %s\n\n| risk | title | severity | before | after | controls | verified |\n|---|---|---|---|---|---|---|\n", m.Commit)
	for _, r := range m.Risks {
		var cs []string
		for _, c := range r.Controls {
			cs = append(cs, c.ID+" ("+c.Status+")")
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s (%s) | %s (%s) | %s | %v |\n", r.ID, r.Title, r.Severity, r.ProbabilityBefore, r.Before,
			r.ProbabilityAfter, r.After, strings.Join(cs, ", "), r.Verified)
	}
	return nil
}
