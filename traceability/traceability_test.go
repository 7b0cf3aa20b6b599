package traceability

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

const goodReq = `area: demo
requirements:
  - id: REQ-DEMO-001
    title: A thing
    text: The system shall do a thing.
    safety_class: B
    clauses: ["IEC 62304 5.2.2", "HIPAA 164.312(b)"]
    item: core
    rationale: Because.
  - id: REQ-DEMO-002
    title: Another thing
    text: The system shall do another thing.
    safety_class: C
    clauses: ["IEC 60601-1-8 6.8"]
    item: core
    rationale: Because.
`

// Verifies: REQ-FND-006, REQ-QMS-001
func TestLoadRequirementsRejectsMalformedFiles(t *testing.T) {
	tests := []struct {
		name, body, wantProblem string
	}{
		{"bad id", strings.Replace(goodReq, "REQ-DEMO-001", "REQ-1", 1), "id does not match"},
		{"duplicate id", strings.Replace(goodReq, "REQ-DEMO-002", "REQ-DEMO-001", 1), "also defined"},
		{"bad class", strings.Replace(goodReq, "safety_class: B", "safety_class: D", 1), "safety_class"},
		{"empty text", strings.Replace(goodReq, "The system shall do a thing.", `""`, 1), "text is empty"},
		{"unknown field", strings.Replace(goodReq, "rationale: Because.\n  - id", "rationale: Because.\n    colour: red\n  - id", 1), "colour"},
		{"wrong area", strings.Replace(goodReq, "area: demo", "area: other", 1), "area"},
		{"no clauses", strings.Replace(goodReq, `clauses: ["IEC 60601-1-8 6.8"]`, "clauses: []", 1), "clauses is empty"},
		{"unknown standard", strings.Replace(goodReq, `"IEC 60601-1-8 6.8"`, `"ISO 9001 7.1"`, 1), `clause "ISO 9001 7.1"`},
		{"no item", strings.Replace(goodReq, "clauses: [\"IEC 60601-1-8 6.8\"]\n    item: core\n", "clauses: [\"IEC 60601-1-8 6.8\"]\n", 1), `item ""`},
		{"bad risk id", strings.Replace(goodReq, "item: core\n    rationale: Because.\n  - id", "item: core\n    risk_controls: [R-1]\n    rationale: Because.\n  - id", 1), "not a risk id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, dir, "demo.yaml", tc.body)
			_, err := LoadRequirements(dir)
			if !errors.Is(err, ErrInvalidRequirements) || !strings.Contains(err.Error(), tc.wantProblem) {
				t.Errorf("LoadRequirements() error = %v, want ErrInvalidRequirements mentioning %q", err, tc.wantProblem)
			}
		})
	}
	dir := t.TempDir()
	write(t, dir, "demo.yaml", goodReq)
	reqs, err := LoadRequirements(dir)
	if err != nil || len(reqs) != 2 || reqs[1].SafetyClass != "C" {
		t.Fatalf("LoadRequirements(good) = %+v, %v; want 2 requirements", reqs, err)
	}
}

// Verifies: REQ-FND-006
func TestScanAndCheckFindGaps(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "pkg"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The fixture's comment marker is assembled so this file's own lines are not scanned as
	// Verifies lines of the real project.
	c := "/" + "/"
	write(t, filepath.Join(root, "pkg"), "a_test.go", "package pkg\n\n"+c+" Does something.\n"+
		c+" Verifies: REQ-DEMO-001, REQ-DEMO-009\nfunc TestA(t *testing.T) {}\n\nfunc TestUntraced(t *testing.T) {}\n")
	refs, err := ScanTests(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(refs) != 1 || refs[0].Name != "TestA" || refs[0].Package != "pkg" || len(refs[0].Verifies) != 2 {
		t.Fatalf("ScanTests() = %+v, want TestA verifying 2 ids", refs)
	}
	dir := t.TempDir()
	write(t, dir, "demo.yaml", goodReq)
	reqs, err := LoadRequirements(dir)
	if err != nil {
		t.Fatal(err)
	}
	gaps := Check(reqs, refs)
	got := []string{}
	for _, g := range gaps {
		got = append(got, g.Kind+" "+g.ID)
	}
	want := "unknown REQ-DEMO-009,untested REQ-DEMO-002"
	if strings.Join(got, ",") != want {
		t.Errorf("Check() = %v, want %s", got, want)
	}

	// A Verifies line that belongs to no test is itself an error.
	write(t, filepath.Join(root, "pkg"), "b_test.go", "package pkg\n\n"+c+" Verifies: REQ-DEMO-002\nvar x = 1\n")
	if _, err := ScanTests(root); !errors.Is(err, ErrInvalidRequirements) {
		t.Errorf("ScanTests(dangling Verifies) error = %v, want ErrInvalidRequirements", err)
	}
}

// A Verifies line above the package clause applies to every test of the file.
// Verifies: REQ-FND-006
func TestFileLevelVerifies(t *testing.T) {
	root := t.TempDir()
	c := "/" + "/"
	write(t, root, "h_test.go", c+" Verifies: REQ-DEMO-001\npackage pkg\n\nfunc helper() {}\n\n"+c+" Verifies: REQ-DEMO-002\nfunc TestB(t *testing.T) {}\n\nfunc BenchmarkC(b *testing.B) {}\n")
	refs, err := ScanTests(root)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range refs {
		got[r.Name] = strings.Join(r.Verifies, ",")
	}
	want := map[string]string{"TestB": "REQ-DEMO-001,REQ-DEMO-002", "BenchmarkC": "REQ-DEMO-001"}
	if len(got) != len(want) || got["TestB"] != want["TestB"] || got["BenchmarkC"] != want["BenchmarkC"] {
		t.Errorf("ScanTests(file-level) = %v, want %v", got, want)
	}
}
