package traceability

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

const mod = "example.com/m"

// A go test -json stream: a passing, a failing (with a failing subtest), a skipped test, a
// package that did not build, and a package cut short by a panic while a test ran.
var testJSON = strings.Join([]string{
	`{"Action":"start","Package":"example.com/m/a","Time":"2026-01-02T10:00:00Z"}`,
	`{"Action":"run","Package":"example.com/m/a","Test":"TestPass"}`,
	`{"Action":"output","Package":"example.com/m/a","Test":"TestPass","Output":"=== RUN   TestPass\n"}`,
	`{"Action":"pass","Package":"example.com/m/a","Test":"TestPass","Elapsed":0.1}`,
	`{"Action":"run","Package":"example.com/m/a","Test":"TestFail"}`,
	`{"Action":"run","Package":"example.com/m/a","Test":"TestFail/case_1"}`,
	`{"Action":"output","Package":"example.com/m/a","Test":"TestFail/case_1","Output":"    a_test.go:9: Thing() = 1, want 2\n"}`,
	`{"Action":"fail","Package":"example.com/m/a","Test":"TestFail/case_1"}`,
	`{"Action":"fail","Package":"example.com/m/a","Test":"TestFail","Elapsed":0.2}`,
	`{"Action":"run","Package":"example.com/m/a","Test":"TestSkip"}`,
	`{"Action":"skip","Package":"example.com/m/a","Test":"TestSkip"}`,
	`{"Action":"run","Package":"example.com/m/a","Test":"TestNoReq"}`,
	`{"Action":"pass","Package":"example.com/m/a","Test":"TestNoReq"}`,
	`{"Action":"fail","Package":"example.com/m/a","Time":"2026-01-02T10:00:05Z"}`,
	`not json: a line of go's own`,
	`{"ImportPath":"example.com/m/b [example.com/m/b.test]","Action":"build-output","Output":"b.go:3:1: syntax error\n"}`,
	`{"ImportPath":"example.com/m/b [example.com/m/b.test]","Action":"build-fail"}`,
	`{"Action":"start","Package":"example.com/m/b"}`,
	`{"Action":"fail","Package":"example.com/m/b","FailedBuild":"example.com/m/b [example.com/m/b.test]"}`,
	`{"Action":"start","Package":"example.com/m/c"}`,
	`{"Action":"run","Package":"example.com/m/c","Test":"TestPanics"}`,
	`{"Action":"output","Package":"example.com/m/c","Output":"panic: boom\n"}`,
	`{"Action":"fail","Package":"example.com/m/c"}`,
}, "\n")

// Verifies: REQ-QMS-001
func TestParseTestJSON(t *testing.T) {
	run, err := ParseTestJSON(strings.NewReader(testJSON))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		pkg, test string
		want      Status
	}{
		{"example.com/m/a", "TestPass", Pass},
		{"example.com/m/a", "TestFail", Fail},
		{"example.com/m/a", "TestSkip", Skip},
		{"example.com/m/c", "TestPanics", Fail}, // never finished, its package failed
	}
	for _, tc := range tests {
		got, ok := run.Result(tc.pkg, tc.test)
		if !ok || got.Status != tc.want {
			t.Errorf("Result(%s, %s) = %v, %v; want %s", tc.pkg, tc.test, got.Status, ok, tc.want)
		}
	}
	if r, _ := run.Result("example.com/m/a", "TestFail"); !strings.Contains(strings.Join(r.Output, ""), "want 2") {
		t.Errorf("failing test output = %q, want the subtest's failure line", r.Output)
	}
	if run.Subtests != 1 {
		t.Errorf("Subtests = %d, want 1", run.Subtests)
	}
	failed := map[string]bool{}
	for _, p := range run.FailedPackages() {
		failed[p.Package] = true
		if p.Package == "example.com/m/b" && (!p.BuildFailed || !strings.Contains(strings.Join(p.Output, ""), "syntax error")) {
			t.Errorf("package b = %+v, want a build failure with the compiler's output", p)
		}
	}
	if len(failed) != 3 {
		t.Errorf("FailedPackages() = %v, want a, b and c", failed)
	}
	if want := time.Date(2026, 1, 2, 10, 0, 5, 0, time.UTC); !run.End.Equal(want) {
		t.Errorf("End = %v, want %v", run.End, want)
	}
	if _, err := ParseTestJSON(strings.NewReader("PASS\nok  \tx\t0.1s\n")); !errors.Is(err, ErrNoTestRun) {
		t.Errorf("ParseTestJSON(plain text) error = %v, want ErrNoTestRun", err)
	}
}

func testPolicy() *Policy {
	return &Policy{
		Severity:    []Level{{Name: "minor"}, {Name: "serious"}, {Name: "catastrophic"}},
		Probability: []Level{{Name: "improbable"}, {Name: "remote"}, {Name: "frequent"}},
		Matrix: map[string][]string{
			"minor":        {"A", "A", "R"},
			"serious":      {"A", "R", "U"},
			"catastrophic": {"R", "U", "U"},
		},
	}
}

func req(id, item, class string, risks ...string) Requirement {
	return Requirement{ID: id, Title: "title of " + id, Text: "The system shall.", SafetyClass: class, Rationale: "r",
		Clauses: []string{"IEC 62304 5.2.2"}, Item: item, RiskControls: risks, File: "x.yaml"}
}

// Build reports each kind of gap, and only those.
// Verifies: REQ-QMS-001, REQ-QMS-010
func TestBuildFindsEveryGap(t *testing.T) {
	run, err := ParseTestJSON(strings.NewReader(testJSON))
	if err != nil {
		t.Fatal(err)
	}
	in := Input{
		Module: mod, Commit: "abc", Policy: testPolicy(), Run: run,
		Now: func() time.Time { return time.Date(2026, 1, 2, 11, 0, 0, 0, time.UTC) },
		Requirements: []Requirement{
			req("REQ-X-001", "core", "C", "RISK-001"), // verified
			req("REQ-X-002", "core", "B"),             // failing test
			req("REQ-X-003", "core", "B"),             // only a skipped test
			req("REQ-X-004", "core", "B"),             // no test
			req("REQ-X-005", "ghost", "A"),            // item not in items.yaml
			req("REQ-X-006", "tools", "C"),            // class above its item's
			req("REQ-X-007", "core", "A", "RISK-003"), // says it controls a risk that does not list it
		},
		Items: &Items{System: "S", Items: []Item{
			{ID: "core", Name: "Core", SafetyClass: "C", Packages: []string{"a"}},
			{ID: "tools", Name: "Tools", SafetyClass: "A", Packages: []string{"t"}},
			{ID: "empty", Name: "Empty", SafetyClass: "B", Packages: []string{"e"}},
		}},
		Tests: []TestRef{
			{Package: "a", File: "a/a_test.go", Line: 3, Name: "TestPass", Verifies: []string{"REQ-X-001", "REQ-X-005", "REQ-X-006", "REQ-X-007"}},
			{Package: "a", File: "a/a_test.go", Line: 9, Name: "TestFail", Verifies: []string{"REQ-X-002"}},
			{Package: "a", File: "a/a_test.go", Line: 20, Name: "TestSkip", Verifies: []string{"REQ-X-003", "REQ-X-999"}},
		},
		Risks: []Risk{
			{ID: "RISK-001", Title: "ok", Severity: "serious", ProbabilityBefore: "frequent", ProbabilityAfter: "improbable", Controls: []string{"REQ-X-001"}},
			{ID: "RISK-002", Title: "control fails", Severity: "minor", ProbabilityBefore: "frequent", ProbabilityAfter: "remote", Controls: []string{"REQ-X-001", "REQ-X-002"}},
			{ID: "RISK-003", Title: "unknown control, unacceptable", Severity: "catastrophic", ProbabilityBefore: "frequent", ProbabilityAfter: "remote", Controls: []string{"REQ-X-404"}},
			{ID: "RISK-004", Title: "ALARP with no justification", Severity: "catastrophic", ProbabilityBefore: "frequent", ProbabilityAfter: "improbable", Controls: []string{"REQ-X-001"}},
			{ID: "RISK-005", Title: "ALARP justified", Severity: "catastrophic", ProbabilityBefore: "frequent", ProbabilityAfter: "improbable", Controls: []string{"REQ-X-001"}, Residual: "because"},
		},
	}
	m := Build(in)
	var got []string
	for _, f := range m.Findings {
		got = append(got, f.Severity+" "+f.Kind+" "+f.ID)
	}
	sort.Strings(got)
	want := []string{
		"error control-unknown RISK-003",
		"error control-unverified RISK-002",
		"error failing REQ-X-002",
		"error item-class REQ-X-006",
		"error item-untraced empty",
		"error not-passed REQ-X-003",
		"error package-failed example.com/m/a",
		"error package-failed example.com/m/b",
		"error package-failed example.com/m/c",
		"error residual-unacceptable RISK-003",
		"error residual-unjustified RISK-004",
		"error risk-link REQ-X-007",
		"error unknown-item REQ-X-005",
		"error unknown-requirement REQ-X-999",
		"error untested REQ-X-004",
		"info verifies-nothing -",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Build() findings =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	status := map[string]string{}
	for _, r := range m.Requirements {
		status[r.ID] = r.Status
	}
	for id, w := range map[string]string{"REQ-X-001": ReqVerified, "REQ-X-002": ReqFailing, "REQ-X-003": ReqNotRun, "REQ-X-004": ReqUntested} {
		if status[id] != w {
			t.Errorf("status of %s = %s, want %s", id, status[id], w)
		}
	}
	if m.Summary.Verified != 4 || m.Summary.Requirements != 7 || m.Summary.SystemClass != "C" || m.Summary.RisksVerified != 3 {
		t.Errorf("Summary = %+v, want 4/7 verified, class C, 3 risks verified", m.Summary)
	}
	if len(m.VerifiesNothing) != 2 { // TestNoReq and TestPanics
		t.Errorf("VerifiesNothing = %v, want TestNoReq and TestPanics", m.VerifiesNothing)
	}
	// Without a test run nothing is verified, and the matrix says why.
	in.Run = nil
	m = Build(in)
	if m.Summary.Verified != 0 || len(m.Errors(AreaTests)) == 0 || m.Errors(AreaTests)[0].Kind != "no-test-run" {
		t.Errorf("Build(no run) = %d verified, test errors %v; want 0 and no-test-run", m.Summary.Verified, m.Errors(AreaTests))
	}
}

// The matrix is written as Markdown, HTML, CSV and JSON with the same content.
// Verifies: REQ-QMS-001
func TestMatrixFormats(t *testing.T) {
	run, err := ParseTestJSON(strings.NewReader(testJSON))
	if err != nil {
		t.Fatal(err)
	}
	m := Build(Input{Module: mod, Commit: "abc123", Policy: testPolicy(), Run: run,
		Requirements: []Requirement{req("REQ-X-001", "core", "B"), req("REQ-X-002", "core", "B")},
		Items:        &Items{System: "S", Items: []Item{{ID: "core", Name: "Core", SafetyClass: "C", Packages: []string{"a"}}}},
		Tests:        []TestRef{{Package: "a", Name: "TestPass", Verifies: []string{"REQ-X-001"}}, {Package: "a", Name: "TestFail", Verifies: []string{"REQ-X-002"}}},
	})
	dir := t.TempDir()
	files, err := m.WriteFiles(dir, "traceability")
	if err != nil || len(files) != 4 {
		t.Fatalf("WriteFiles() = %v, %v; want 4 files", files, err)
	}
	read := func(ext string) string {
		b, err := os.ReadFile(filepath.Join(dir, "traceability."+ext))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	md := read("md")
	for _, want := range []string{"| REQ-X-001 |", "**verified**", "**failing**", "1 / 2 (50.0 %)", "Commit `abc123`"} {
		if !strings.Contains(md, want) {
			t.Errorf("Markdown lacks %q", want)
		}
	}
	html := read("html")
	for _, want := range []string{`<td id="REQ-X-002">REQ-X-002</td>`, `class="failing">failing`, `table.sortable th`} {
		if !strings.Contains(html, want) {
			t.Errorf("HTML lacks %q", want)
		}
	}
	rows, err := csv.NewReader(strings.NewReader(read("csv"))).ReadAll()
	if err != nil || len(rows) != 3 || rows[1][0] != "REQ-X-001" || rows[1][5] != ReqVerified || rows[2][5] != ReqFailing {
		t.Errorf("CSV = %v, %v; want a header and two rows, verified then failing", rows, err)
	}
	var back Matrix
	if err := json.Unmarshal([]byte(read("json")), &back); err != nil || back.Summary.Verified != 1 || len(back.Requirements) != 2 ||
		back.Requirements[1].Tests[0].Status != Fail {
		t.Errorf("JSON round trip = %+v, %v; want the same matrix", back.Summary, err)
	}
	var buf bytes.Buffer
	if err := m.WriteMarkdown(&buf); err != nil || buf.String() != md {
		t.Errorf("WriteMarkdown differs from the file written")
	}
}

// Malformed risk files and policies are refused with every problem named.
// Verifies: REQ-QMS-010
func TestLoadRisksAndPolicy(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "policy.yaml", `severity: [{name: minor}, {name: serious}]
probability: [{name: rare}, {name: often}]
matrix:
  minor: [A, R]
  serious: [R, U]
`)
	p, err := LoadPolicy(filepath.Join(dir, "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		sev, prob string
		want      Acceptability
	}{{"minor", "rare", Acceptable}, {"minor", "often", ALARP}, {"serious", "often", Unacceptable}} {
		if got, err := p.Rate(tc.sev, tc.prob); got != tc.want || err != nil {
			t.Errorf("Rate(%s, %s) = %s, %v; want %s", tc.sev, tc.prob, got, err, tc.want)
		}
	}
	write(t, dir, "bad-policy.yaml", "severity: [{name: minor}, {name: serious}]\nprobability: [{name: rare}, {name: often}]\nmatrix:\n  minor: [A]\n  serious: [R, X]\n")
	if _, err := LoadPolicy(filepath.Join(dir, "bad-policy.yaml")); !errors.Is(err, ErrInvalidRequirements) ||
		!strings.Contains(err.Error(), `row "minor" has 1 entries`) || !strings.Contains(err.Error(), `"X"`) {
		t.Errorf("LoadPolicy(bad) error = %v, want both problems", err)
	}
	risks := filepath.Join(dir, "risks")
	if err := os.MkdirAll(risks, 0o755); err != nil {
		t.Fatal(err)
	}
	good := `area: clinical
risks:
  - id: RISK-001
    title: T
    hazard: H
    sequence: S
    situation: Si
    harm: Ha
    severity: serious
    probability_before: often
    probability_after: rare
    controls: [REQ-A-001]
`
	write(t, risks, "clinical.yaml", good)
	rs, err := LoadRisks(risks, p)
	if err != nil || len(rs) != 1 || rs[0].Controls[0] != "REQ-A-001" {
		t.Fatalf("LoadRisks(good) = %+v, %v", rs, err)
	}
	for _, tc := range []struct{ name, body, want string }{
		{"unknown severity", strings.Replace(good, "severity: serious", "severity: dire", 1), `severity "dire"`},
		{"no controls", strings.Replace(good, "controls: [REQ-A-001]", "controls: []", 1), "no controls"},
		{"bad control", strings.Replace(good, "REQ-A-001", "RISK-009", 1), "not a requirement id"},
		{"empty harm", strings.Replace(good, "harm: Ha", `harm: ""`, 1), "harm is empty"},
		{"unknown field", strings.Replace(good, "harm: Ha", "harm: Ha\n    likelihood: high", 1), "likelihood"},
		{"bad id", strings.Replace(good, "RISK-001", "R-1", 1), "id does not match"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			write(t, risks, "clinical.yaml", tc.body)
			if _, err := LoadRisks(risks, p); !errors.Is(err, ErrInvalidRequirements) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("LoadRisks() error = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}
