package traceability

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Status is the outcome of a test or a package in a test run.
type Status string

// Outcomes. NotRun is a test that the source declares but the run has no result for.
const (
	Pass   Status = "pass"
	Fail   Status = "fail"
	Skip   Status = "skip"
	NotRun Status = "not-run"
)

// TestResult is the outcome of one top-level test function in a go test -json run.
type TestResult struct {
	Package string  `json:"package"` // import path
	Test    string  `json:"test"`
	Status  Status  `json:"status"`
	Elapsed float64 `json:"elapsed_s"`
	// Output is the test's output when it failed (the last lines), for the report.
	Output []string `json:"output,omitempty"`
}

// PackageResult is the outcome of one package.
type PackageResult struct {
	Package     string   `json:"package"`
	Status      Status   `json:"status"`
	BuildFailed bool     `json:"build_failed,omitempty"`
	Output      []string `json:"output,omitempty"` // the last lines, when it failed
}

// Run is a parsed go test -json run.
type Run struct {
	Start, End time.Time
	Tests      []TestResult    // sorted by package, then test
	Packages   []PackageResult // sorted by package
	Subtests   int             // subtests seen (counted, not listed)
	index      map[string]int
}

// Result returns the result of a top-level test, and whether the run has one.
func (r *Run) Result(pkg, test string) (TestResult, bool) {
	if r == nil {
		return TestResult{}, false
	}
	i, ok := r.index[pkg+"\x00"+test]
	if !ok {
		return TestResult{}, false
	}
	return r.Tests[i], true
}

// Count returns how many top-level tests have each status.
func (r *Run) Count() map[Status]int {
	c := map[Status]int{}
	for _, t := range r.Tests {
		c[t.Status]++
	}
	return c
}

// FailedPackages returns the packages that failed (a failing test, a build failure, a panic,
// a timeout).
func (r *Run) FailedPackages() []PackageResult {
	var out []PackageResult
	for _, p := range r.Packages {
		if p.Status == Fail {
			out = append(out, p)
		}
	}
	return out
}

// ErrNoTestRun is returned by ParseTestJSON for input that holds no test event at all.
var ErrNoTestRun = errors.New("no go test -json events")

type testEvent struct {
	Time        time.Time
	Action      string
	Package     string
	Test        string
	Elapsed     float64
	Output      string
	FailedBuild string
	ImportPath  string
}

const keepLines = 60

func appendTail(lines []string, s string) []string {
	lines = append(lines, strings.TrimRight(s, "\n"))
	if len(lines) > keepLines {
		lines = lines[len(lines)-keepLines:]
	}
	return lines
}

// ParseTestJSON reads the output of `go test -json` (any number of packages). Lines that are
// not JSON (a build's stderr mixed in) are ignored. A test that started but never finished
// counts as failed when its package failed (a panic or a timeout killed it), else as
// not-run. Build failures (`build-fail`, FailedBuild) fail their package.
func ParseTestJSON(r io.Reader) (*Run, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1024*1024), 16*1024*1024)
	type key struct{ pkg, test string }
	tests := map[key]*TestResult{}
	pkgs := map[string]*PackageResult{}
	buildOut := map[string][]string{}
	run := &Run{}
	n := 0
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var ev testEvent
		if err := json.Unmarshal(line, &ev); err != nil {
			continue
		}
		n++
		if !ev.Time.IsZero() {
			if run.Start.IsZero() || ev.Time.Before(run.Start) {
				run.Start = ev.Time
			}
			if ev.Time.After(run.End) {
				run.End = ev.Time
			}
		}
		switch ev.Action {
		case "build-output":
			buildOut[ev.ImportPath] = appendTail(buildOut[ev.ImportPath], ev.Output)
			continue
		case "build-fail":
			continue
		}
		if ev.Package == "" {
			continue
		}
		p := pkgs[ev.Package]
		if p == nil {
			p = &PackageResult{Package: ev.Package}
			pkgs[ev.Package] = p
		}
		if ev.Test == "" {
			switch ev.Action {
			case "output":
				p.Output = appendTail(p.Output, ev.Output)
			case "pass", "skip":
				p.Status = Status(ev.Action)
			case "fail":
				p.Status = Fail
				if ev.FailedBuild != "" {
					p.BuildFailed = true
					p.Output = append(p.Output, buildOut[ev.FailedBuild]...)
				}
			}
			continue
		}
		top, _, sub := strings.Cut(ev.Test, "/")
		if sub {
			if ev.Action == "run" {
				run.Subtests++
			}
			if ev.Action == "output" {
				if t := tests[key{ev.Package, top}]; t != nil {
					t.Output = appendTail(t.Output, ev.Output)
				}
			}
			continue
		}
		k := key{ev.Package, ev.Test}
		t := tests[k]
		if t == nil {
			t = &TestResult{Package: ev.Package, Test: ev.Test, Status: NotRun}
			tests[k] = t
		}
		switch ev.Action {
		case "output":
			t.Output = appendTail(t.Output, ev.Output)
		case "pass", "fail", "skip":
			t.Status = Status(ev.Action)
			t.Elapsed = ev.Elapsed
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read go test -json: %w", err)
	}
	if n == 0 {
		return nil, ErrNoTestRun
	}
	for _, t := range tests {
		if t.Status == NotRun {
			if p := pkgs[t.Package]; p != nil && p.Status == Fail {
				t.Status = Fail
			}
		}
		if t.Status != Fail {
			t.Output = nil
		}
		run.Tests = append(run.Tests, *t)
	}
	for _, p := range pkgs {
		if p.Status == "" {
			p.Status = Fail // started, never finished: the run was cut short
			p.Output = appendTail(p.Output, "(no result for this package: the run was interrupted)")
		}
		if p.Status != Fail {
			p.Output = nil
		}
		run.Packages = append(run.Packages, *p)
	}
	sort.Slice(run.Tests, func(i, j int) bool {
		if run.Tests[i].Package != run.Tests[j].Package {
			return run.Tests[i].Package < run.Tests[j].Package
		}
		return run.Tests[i].Test < run.Tests[j].Test
	})
	sort.Slice(run.Packages, func(i, j int) bool { return run.Packages[i].Package < run.Packages[j].Package })
	run.index = make(map[string]int, len(run.Tests))
	for i, t := range run.Tests {
		run.index[t.Package+"\x00"+t.Test] = i
	}
	return run, nil
}
