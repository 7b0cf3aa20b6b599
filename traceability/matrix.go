package traceability

import (
	"fmt"
	"path"
	"sort"
	"time"
)

// Requirement states in the matrix.
const (
	ReqVerified = "verified" // at least one passing test, none failing
	ReqFailing  = "failing"  // at least one failing test
	ReqNotRun   = "not-run"  // tests name it, but none passed or failed in the run (skipped, not run)
	ReqUntested = "untested" // no test names it
)

// Finding areas: which part of the quality records a finding is about.
const (
	AreaRequirements = "requirements"
	AreaRisks        = "risks"
	AreaItems        = "items"
	AreaTests        = "tests"
)

// Finding is one problem (or, with Severity "info", one observation) the matrix shows.
type Finding struct {
	Area     string `json:"area"`
	Kind     string `json:"kind"`
	ID       string `json:"id"`
	Severity string `json:"severity"` // "error" or "info"
	Detail   string `json:"detail"`
}

func (f Finding) String() string {
	return fmt.Sprintf("%s %s %s: %s", f.Severity, f.Kind, f.ID, f.Detail)
}

// TestLink is one test that names a requirement, with its outcome in the run.
type TestLink struct {
	Name    string `json:"name"`
	Package string `json:"package"` // import path
	File    string `json:"file"`
	Line    int    `json:"line"`
	Status  Status `json:"status"`
}

// RequirementRow is one requirement with the tests that verify it.
type RequirementRow struct {
	Requirement
	Status string     `json:"status"`
	Tests  []TestLink `json:"tests"`
	Risks  []string   `json:"risks"` // risks this requirement is a control of
}

// ControlLink is one risk control and the state of its requirement.
type ControlLink struct {
	ID     string `json:"id"`
	Status string `json:"status"` // the requirement's status, or "unknown"
}

// RiskRow is one risk with its estimate and controls.
type RiskRow struct {
	Risk
	Before   Acceptability `json:"before"`
	After    Acceptability `json:"after"`
	Controls []ControlLink `json:"control_status"`
	Verified bool          `json:"verified"` // every control is a verified requirement
}

// ItemRow is one software item with the requirements it implements.
type ItemRow struct {
	Item
	Requirements []string `json:"requirements"`
	Verified     int      `json:"verified"`
}

// Summary is the matrix's figures.
type Summary struct {
	Requirements    int     `json:"requirements"`
	Verified        int     `json:"verified"`
	Coverage        float64 `json:"coverage_percent"` // verified / requirements × 100
	Tests           int     `json:"tests"`            // top-level tests in the run
	Passed          int     `json:"passed"`
	Failed          int     `json:"failed"`
	Skipped         int     `json:"skipped"`
	TracingTests    int     `json:"tracing_tests"` // test functions that name requirements
	Risks           int     `json:"risks"`
	RisksVerified   int     `json:"risks_verified"`
	Items           int     `json:"items"`
	SystemClass     string  `json:"system_class"`
	Errors          int     `json:"errors"`
	VerifiesNothing int     `json:"tests_verifying_nothing"`
}

// Matrix is the requirement ↔ test ↔ risk-control ↔ item matrix of one test run.
type Matrix struct {
	Generated    time.Time        `json:"generated"`
	Commit       string           `json:"commit"`
	Module       string           `json:"module"`
	System       string           `json:"system"`
	RunStart     time.Time        `json:"run_start"`
	RunEnd       time.Time        `json:"run_end"`
	Summary      Summary          `json:"summary"`
	Requirements []RequirementRow `json:"requirements"`
	Risks        []RiskRow        `json:"risks"`
	Items        []ItemRow        `json:"items"`
	Findings     []Finding        `json:"findings"`
	// VerifiesNothing lists the tests of the run that name no requirement (helpers' own
	// tests, regression tests): shown, not an error.
	VerifiesNothing []TestResult `json:"tests_verifying_nothing"`
}

// Input is what Build makes a matrix from.
type Input struct {
	Module       string // module path; TestRef packages are directories below it
	Commit       string
	Now          func() time.Time // default time.Now
	Requirements []Requirement
	Risks        []Risk
	Policy       *Policy
	Items        *Items
	Tests        []TestRef
	// Run is the parsed go test -json run; nil means no results, so no requirement is verified.
	Run *Run
}

// Errors returns the findings of severity "error" in the given areas (all areas when none
// is given).
func (m *Matrix) Errors(areas ...string) []Finding {
	var out []Finding
	for _, f := range m.Findings {
		if f.Severity != "error" {
			continue
		}
		if len(areas) == 0 {
			out = append(out, f)
			continue
		}
		for _, a := range areas {
			if f.Area == a {
				out = append(out, f)
				break
			}
		}
	}
	return out
}

func importPath(module, dir string) string {
	if dir == "." || dir == "" {
		return module
	}
	return path.Join(module, dir)
}

// Build links requirements, tests and their results, risks and items, and reports every gap.
func Build(in Input) *Matrix {
	now := time.Now
	if in.Now != nil {
		now = in.Now
	}
	m := &Matrix{Generated: now().UTC(), Commit: in.Commit, Module: in.Module, Requirements: []RequirementRow{},
		Risks: []RiskRow{}, Items: []ItemRow{}, Findings: []Finding{}, VerifiesNothing: []TestResult{}}
	if in.Run != nil {
		m.RunStart, m.RunEnd = in.Run.Start, in.Run.End
	}
	add := func(area, kind, id, sev, format string, args ...any) {
		m.Findings = append(m.Findings, Finding{Area: area, Kind: kind, ID: id, Severity: sev, Detail: fmt.Sprintf(format, args...)})
	}
	if in.Run == nil {
		add(AreaTests, "no-test-run", "-", "error", "no go test -json results were given: no requirement can be verified")
	}
	// Requirements and their tests.
	rows := map[string]*RequirementRow{}
	m.Requirements = make([]RequirementRow, len(in.Requirements))
	for i, r := range in.Requirements {
		m.Requirements[i] = RequirementRow{Requirement: r, Tests: []TestLink{}, Risks: []string{}}
		rows[r.ID] = &m.Requirements[i]
	}
	traced := map[string]bool{} // pkg\x00test of tests that name a requirement
	for _, t := range in.Tests {
		pkg := importPath(in.Module, t.Package)
		traced[pkg+"\x00"+t.Name] = true
		st := NotRun
		if res, ok := in.Run.Result(pkg, t.Name); ok {
			st = res.Status
		}
		for _, id := range t.Verifies {
			row := rows[id]
			if row == nil {
				add(AreaTests, "unknown-requirement", id, "error", "named by %s (%s:%d) but defined in no requirements file", t.Name, t.File, t.Line)
				continue
			}
			row.Tests = append(row.Tests, TestLink{Name: t.Name, Package: pkg, File: t.File, Line: t.Line, Status: st})
		}
	}
	if in.Run != nil {
		for _, t := range in.Run.Tests {
			if !traced[t.Package+"\x00"+t.Test] {
				m.VerifiesNothing = append(m.VerifiesNothing, t)
			}
		}
	}
	for i := range m.Requirements {
		row := &m.Requirements[i]
		var pass, fail, other int
		for _, t := range row.Tests {
			switch t.Status {
			case Pass:
				pass++
			case Fail:
				fail++
			default:
				other++
			}
		}
		switch {
		case len(row.Tests) == 0:
			row.Status = ReqUntested
			add(AreaRequirements, "untested", row.ID, "error", "%q (%s) is verified by no test", row.Title, row.File)
		case fail > 0:
			row.Status = ReqFailing
			add(AreaRequirements, "failing", row.ID, "error", "%d of its %d tests failed", fail, len(row.Tests))
		case pass == 0:
			row.Status = ReqNotRun
			add(AreaRequirements, "not-passed", row.ID, "error", "none of its %d tests passed in the run (skipped or not run)", len(row.Tests))
		default:
			row.Status = ReqVerified
			m.Summary.Verified++
		}
	}
	// Items.
	itemRows := map[string]*ItemRow{}
	if in.Items != nil {
		m.System = in.Items.System
		m.Summary.SystemClass = in.Items.SystemClass()
		m.Items = make([]ItemRow, len(in.Items.Items))
		for i, it := range in.Items.Items {
			m.Items[i] = ItemRow{Item: it, Requirements: []string{}}
			itemRows[it.ID] = &m.Items[i]
		}
	}
	for _, row := range m.Requirements {
		ir := itemRows[row.Item]
		if ir == nil {
			if in.Items != nil {
				add(AreaItems, "unknown-item", row.ID, "error", "item %q is not in items.yaml", row.Item)
			}
			continue
		}
		ir.Requirements = append(ir.Requirements, row.ID)
		if row.Status == ReqVerified {
			ir.Verified++
		}
		if row.SafetyClass > ir.SafetyClass {
			add(AreaItems, "item-class", row.ID, "error", "class %s requirement in item %q of class %s (an item's class is at least its requirements')", row.SafetyClass, ir.ID, ir.SafetyClass)
		}
	}
	for _, ir := range m.Items {
		if len(ir.Requirements) == 0 {
			add(AreaItems, "item-untraced", ir.ID, "error", "item %q implements no requirement", ir.Name)
		}
	}
	// Risks.
	riskByID := map[string]*Risk{}
	for i := range in.Risks {
		riskByID[in.Risks[i].ID] = &in.Risks[i]
	}
	for _, r := range in.Risks {
		rr := RiskRow{Risk: r, Controls: []ControlLink{}, Verified: true}
		if in.Policy != nil {
			var err error
			if rr.Before, err = in.Policy.Rate(r.Severity, r.ProbabilityBefore); err != nil {
				add(AreaRisks, "estimate", r.ID, "error", "before control: %v", err)
			}
			if rr.After, err = in.Policy.Rate(r.SeverityAfterControl(), r.ProbabilityAfter); err != nil {
				add(AreaRisks, "estimate", r.ID, "error", "after control: %v", err)
			}
			switch rr.After {
			case Unacceptable:
				add(AreaRisks, "residual-unacceptable", r.ID, "error", "residual risk (%s, %s) is unacceptable under the policy", r.SeverityAfterControl(), r.ProbabilityAfter)
			case ALARP:
				if r.Residual == "" {
					add(AreaRisks, "residual-unjustified", r.ID, "error", "residual risk is ALARP but the risk gives no residual-risk justification")
				}
			}
		}
		if len(r.Controls) == 0 {
			rr.Verified = false
			add(AreaRisks, "no-control", r.ID, "error", "no risk-control measure")
		}
		for _, c := range r.Controls {
			row := rows[c]
			if row == nil {
				rr.Controls = append(rr.Controls, ControlLink{ID: c, Status: "unknown"})
				rr.Verified = false
				add(AreaRisks, "control-unknown", r.ID, "error", "control %s is not a requirement", c)
				continue
			}
			row.Risks = append(row.Risks, r.ID)
			rr.Controls = append(rr.Controls, ControlLink{ID: c, Status: row.Status})
			if row.Status != ReqVerified {
				rr.Verified = false
				add(AreaRisks, "control-unverified", r.ID, "error", "control %s is %s", c, row.Status)
			}
		}
		if rr.Verified {
			m.Summary.RisksVerified++
		}
		m.Risks = append(m.Risks, rr)
	}
	// A requirement that says it controls a risk must be one of that risk's controls.
	for _, row := range m.Requirements {
		for _, id := range row.RiskControls {
			r := riskByID[id]
			found := false
			if r != nil {
				for _, c := range r.Controls {
					found = found || c == row.ID
				}
			}
			if !found {
				add(AreaRisks, "risk-link", row.ID, "error", "risk_controls names %s, which does not list %s among its controls", id, row.ID)
			}
		}
	}
	if in.Run != nil {
		for _, p := range in.Run.FailedPackages() {
			what := "failed"
			if p.BuildFailed {
				what = "did not build"
			}
			add(AreaTests, "package-failed", p.Package, "error", "package %s", what)
		}
		c := in.Run.Count()
		m.Summary.Tests, m.Summary.Passed, m.Summary.Failed, m.Summary.Skipped = len(in.Run.Tests), c[Pass], c[Fail], c[Skip]
	}
	if n := len(m.VerifiesNothing); n > 0 {
		add(AreaTests, "verifies-nothing", "-", "info", "%d tests of the run name no requirement (listed in the matrix)", n)
	}
	m.Summary.Requirements = len(m.Requirements)
	if m.Summary.Requirements > 0 {
		m.Summary.Coverage = float64(m.Summary.Verified) * 100 / float64(m.Summary.Requirements)
	}
	m.Summary.TracingTests = len(in.Tests)
	m.Summary.Risks = len(m.Risks)
	m.Summary.Items = len(m.Items)
	m.Summary.VerifiesNothing = len(m.VerifiesNothing)
	sort.SliceStable(m.Findings, func(i, j int) bool {
		a, b := m.Findings[i], m.Findings[j]
		if a.Severity != b.Severity {
			return a.Severity == "error"
		}
		if a.Area != b.Area {
			return a.Area < b.Area
		}
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		return a.ID < b.ID
	})
	m.Summary.Errors = len(m.Errors())
	return m
}
