package validation

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/internal/testdb"
)

// The comment marker is assembled so that the fixtures' Verifies lines are not read as this
// repository's own.
var vmark = "/" + "/ Verifies: "

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

const fixturePolicy = `severity: [{name: minor}, {name: serious}]
probability: [{name: rare}, {name: often}]
matrix:
  minor: [A, A]
  serious: [A, U]
`

func fixtureReq(id string) string {
	return `  - id: ` + id + `
    title: Thing ` + id + `
    text: The fixture shall do thing ` + id + `.
    safety_class: B
    clauses: ["IEC 62304 5.2.2"]
    item: fix
    rationale: Because.
`
}

// fixture writes a small module with quality records and tests that verify them, as a real
// repository would have them. extra files override the defaults.
func fixture(t *testing.T, extra map[string]string) string {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{
		"go.mod":                      "module example.com/fixture\n\ngo 1.26\n",
		"qms/requirements/fix.yaml":   "area: fix\nrequirements:\n" + fixtureReq("REQ-FIX-001") + fixtureReq("REQ-FIX-002"),
		"qms/risk-policy.yaml":        fixturePolicy,
		"qms/items.yaml":              "system: Fixture\nitems:\n  - id: fix\n    name: Fix\n    description: The fixture.\n    safety_class: B\n    packages: [fix]\n    rationale: Test.\n",
		"qms/risks/fix.yaml":          "area: fix\nrisks:\n  - {id: RISK-001, title: T, hazard: H, sequence: S, situation: Si, harm: Ha, severity: serious, probability_before: often, probability_after: rare, controls: [REQ-FIX-001]}\n",
		"fix/fix.go":                  "package fix\n\nfunc Double(x int) int { return 2 * x }\n",
		"fix/fix_test.go":             "package fix\n\nimport \"testing\"\n\n" + vmark + "REQ-FIX-001\nfunc TestDouble(t *testing.T) {\n\tif Double(2) != 4 {\n\t\tt.Error(\"Double(2) != 4\")\n\t}\n}\n\n" + vmark + "REQ-FIX-002\nfunc TestOther(t *testing.T) {}\n",
		"docs/benchmarks.md":          "# Benchmarks\n\n## Fix\n\n```\ngo test -bench .\n```\n\n| case | figure |\n|---|---|\n| double | 1 ns |\n",
		"fix/fuzz_test.go":            "package fix\n\nimport \"testing\"\n\nfunc FuzzDouble(f *testing.F) {\n\tf.Add(1)\n\tf.Fuzz(func(t *testing.T, x int) { _ = Double(x) })\n}\n",
		"qms/licences.yaml":           "allowed: [MIT]\nexceptions: []\n",
		"qms/soup-purpose.yaml":       "purposes: {}\n",
		"qms/requirements/README.txt": "not yaml",
	}
	for k, v := range extra {
		files[k] = v
	}
	writeFiles(t, root, files)
	return root
}

// goTestJSON runs `go test -json` with args in dir and writes its output to a file, as
// `make unit` does; a failing run is expected in some cases, so its exit status is ignored.
func goTestJSON(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"test", "-json", "-count=1"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
	out, _ := cmd.Output()
	if !bytes.Contains(out, []byte(`"Action"`)) {
		t.Fatalf("go test -json %v gave no events: %s", args, out)
	}
	p := filepath.Join(t.TempDir(), "go-test.json")
	if err := os.WriteFile(p, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func runGates(t *testing.T, cfg Config, gates ...string) *Report {
	t.Helper()
	cfg.Gates = gates
	if cfg.Out == "" {
		cfg.Out = t.TempDir()
	}
	cfg.Now = func() time.Time { return time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC) }
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run() error = %v", err)
	}
	return rep
}

func gateResult(t *testing.T, rep *Report, name string) Result {
	t.Helper()
	r, ok := rep.Gate(name)
	if !ok {
		t.Fatalf("gate %s did not run", name)
	}
	return r
}

func hasReason(r Result, parts ...string) bool {
	for _, reason := range r.Reasons {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(reason, p)
		}
		if all {
			return true
		}
	}
	return false
}

// The test-result gates pass on a clean fixture and each fails for its own reason: a failing
// test, a requirement no test verifies, a risk control that is not a verified requirement.
// The reports say so in JSON and JUnit XML.
// Verifies: REQ-QMS-002, REQ-QMS-001, REQ-QMS-010
func TestGatesFailForTheRightReason(t *testing.T) {
	gates := []string{GateUnit, GateTrace, GateRisks}
	tests := []struct {
		name  string
		extra map[string]string
		want  map[string]bool // gate → passes
		why   map[string][]string
	}{
		{name: "clean", want: map[string]bool{GateUnit: true, GateTrace: true, GateRisks: true}},
		{
			name:  "failing test",
			extra: map[string]string{"fix/fix.go": "package fix\n\nfunc Double(x int) int { return 3 * x }\n"},
			want:  map[string]bool{GateUnit: false, GateTrace: false, GateRisks: false},
			why: map[string][]string{GateUnit: {"TestDouble failed"}, GateTrace: {"failing REQ-FIX-001"},
				GateRisks: {"control-unverified RISK-001", "REQ-FIX-001 is failing"}},
		},
		{
			name:  "requirement with no test",
			extra: map[string]string{"qms/requirements/more.yaml": "area: more\nrequirements:\n" + fixtureReq("REQ-FIX-003")},
			want:  map[string]bool{GateUnit: true, GateTrace: false, GateRisks: true},
			why:   map[string][]string{GateTrace: {"untested REQ-FIX-003"}},
		},
		{
			name: "risk control without a verified requirement",
			extra: map[string]string{"qms/risks/more.yaml": "area: more\nrisks:\n  - {id: RISK-002, title: T, hazard: H, sequence: S, situation: Si, harm: Ha, " +
				"severity: minor, probability_before: often, probability_after: rare, controls: [REQ-FIX-404]}\n"},
			want: map[string]bool{GateUnit: true, GateTrace: true, GateRisks: false},
			why:  map[string][]string{GateRisks: {"control-unknown RISK-002", "REQ-FIX-404"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := fixture(t, tc.extra)
			out := t.TempDir()
			rep := runGates(t, Config{Root: root, Out: out, TestJSON: goTestJSON(t, root, "./...")}, gates...)
			for _, g := range gates {
				r := gateResult(t, rep, g)
				if r.Passed != tc.want[g] {
					t.Errorf("gate %s passed = %v, want %v (%s; %v)", g, r.Passed, tc.want[g], r.Summary, r.Reasons)
				}
				if why := tc.why[g]; why != nil && !hasReason(r, why...) {
					t.Errorf("gate %s reasons = %v, want one with %q", g, r.Reasons, why)
				}
				for _, ev := range r.Evidence {
					if _, err := os.Stat(filepath.Join(out, ev)); err != nil {
						t.Errorf("gate %s evidence %s: %v", g, ev, err)
					}
				}
			}
			if rep.Passed != (tc.name == "clean") {
				t.Errorf("report passed = %v, failed gates %v", rep.Passed, rep.Failed())
			}
			var junit struct {
				Failures int `xml:"failures,attr"`
				Suites   []struct {
					Cases []struct {
						Name    string    `xml:"name,attr"`
						Failure *struct{} `xml:"failure"`
					} `xml:"testcase"`
				} `xml:"testsuite"`
			}
			raw, err := os.ReadFile(filepath.Join(out, "junit.xml"))
			if err != nil || xml.Unmarshal(raw, &junit) != nil || len(junit.Suites) != 1 || len(junit.Suites[0].Cases) != len(gates) {
				t.Fatalf("junit.xml = %s, %v; want one suite with a case per gate", raw, err)
			}
			for _, c := range junit.Suites[0].Cases {
				if (c.Failure == nil) != tc.want[c.Name] {
					t.Errorf("junit case %s failure = %v, want passed %v", c.Name, c.Failure != nil, tc.want[c.Name])
				}
			}
			var back Report
			raw, err = os.ReadFile(filepath.Join(out, "report.json"))
			if err != nil || json.Unmarshal(raw, &back) != nil || len(back.Gates) != len(gates) || back.Passed != rep.Passed {
				t.Errorf("report.json = %s, %v", raw, err)
			}
			var table bytes.Buffer
			if err := rep.WriteTable(&table); err != nil || !strings.Contains(table.String(), "GATE") {
				t.Errorf("WriteTable() = %q, %v", table.String(), err)
			}
		})
	}
	// No test results at all is a failure of the gates that need them, not a crash.
	rep := runGates(t, Config{Root: fixture(t, nil)}, gates...)
	if rep.Passed || !hasReason(gateResult(t, rep, GateUnit), "no go test -json output") {
		t.Errorf("gates without results = %+v, want a failure saying results are missing", rep.Gates)
	}
	if _, err := Run(context.Background(), Config{Root: t.TempDir(), Out: t.TempDir(), Gates: []string{"nonsense"}}); err == nil {
		t.Error("Run(unknown gate) error = nil, want an error")
	}
}

// The vulnerabilities gate runs govulncheck offline: a crafted OSV entry for a module of the
// build fails it when the vulnerable function is called, is listed but passes when only the
// package is imported, and a missing database fails it clearly. Given the built binary it
// scans that binary instead, with the same verdicts; the mode is recorded in the evidence.
// Verifies: REQ-QMS-003, REQ-QMS-021
func TestVulnerabilityGate(t *testing.T) {
	sums, err := os.ReadFile("../go.sum")
	if err != nil {
		t.Fatal(err)
	}
	var uuidSums []string
	for _, l := range strings.Split(string(sums), "\n") {
		if strings.HasPrefix(l, "github.com/google/uuid v1.6.0") {
			uuidSums = append(uuidSums, l)
		}
	}
	root := fixture(t, map[string]string{
		"go.mod":     "module example.com/fixture\n\ngo 1.26\n\nrequire github.com/google/uuid v1.6.0\n",
		"go.sum":     strings.Join(uuidSums, "\n") + "\n",
		"fix/fix.go": "package fix\n\nimport \"github.com/google/uuid\"\n\nfunc Double(x int) int { return 2 * x }\n\n// ID is a new id.\nfunc ID() string { return uuid.NewString() }\n",
	})
	osv := func(symbol string) string {
		return `{"schema_version":"1.3.1","id":"GO-2099-0001","modified":"2099-01-01T00:00:00Z","published":"2099-01-01T00:00:00Z",
"summary":"Crafted for Vigil's tests: predictable identifiers","details":"Not a real vulnerability.",
"affected":[{"package":{"name":"github.com/google/uuid","ecosystem":"Go"},
"ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"1.7.0"}]}],
"ecosystem_specific":{"imports":[{"path":"github.com/google/uuid","symbols":["` + symbol + `"]}]}}]}`
	}
	called, imported := t.TempDir(), t.TempDir()
	writeFiles(t, called, map[string]string{"GO-2099-0001.json": osv("NewString")})
	writeFiles(t, imported, map[string]string{"GO-2099-0001.json": osv("NewSHA1")})

	r := gateResult(t, runGates(t, Config{Root: root, VulnDB: called}, GateVulns), GateVulns)
	if r.Passed || !hasReason(r, "GO-2099-0001", "github.com/google/uuid@v1.6.0", "(called)", "fixed in v1.7.0", "fix.ID") {
		t.Errorf("vulnerabilities gate with a called vulnerable function = %v %s %v, want a failure naming GO-2099-0001 and the call path", r.Passed, r.Summary, r.Reasons)
	}
	r = gateResult(t, runGates(t, Config{Root: root, VulnDB: imported}, GateVulns), GateVulns)
	if !r.Passed || !hasReason(r, "note: GO-2099-0001", "(imported)") {
		t.Errorf("vulnerabilities gate with an unreached vulnerable function = %v %s %v, want a pass that lists it", r.Passed, r.Summary, r.Reasons)
	}
	missing := filepath.Join(t.TempDir(), "no-such-db")
	r = gateResult(t, runGates(t, Config{Root: root, VulnDB: missing}, GateVulns), GateVulns)
	if r.Passed || !hasReason(r, "vulnerability database not found", missing) {
		t.Errorf("vulnerabilities gate without a database = %v %v, want a failure naming the missing path", r.Passed, r.Reasons)
	}
	if _, err := ScanVulns(context.Background(), root, "", nil, nil); !errors.Is(err, ErrNoVulnDB) {
		t.Errorf("ScanVulns(no db) error = %v, want ErrNoVulnDB", err)
	}

	// Given the built binary, the gate scans it (binary mode: what ships, no type-checking)
	// and finds the same: the linked vulnerable function fails it, the unlinked one does not.
	writeFiles(t, root, map[string]string{"cmd/fix/main.go": "package main\n\nimport \"example.com/fixture/fix\"\n\nfunc main() { println(fix.ID()) }\n"})
	bin := filepath.Join(t.TempDir(), "fix")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, "./cmd/fix")
	build.Dir = root
	build.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off", "GOPROXY=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build fixture: %v\n%s", err, out)
	}
	r = gateResult(t, runGates(t, Config{Root: root, VulnDB: called, Binary: bin}, GateVulns), GateVulns)
	if r.Passed || !strings.Contains(r.Summary, "binary mode on "+bin) || !hasReason(r, "GO-2099-0001", "github.com/google/uuid@v1.6.0", "(called)", "uuid.NewString") {
		t.Errorf("vulnerabilities gate on a binary linking the vulnerable function = %v %s %v, want a binary-mode failure naming GO-2099-0001", r.Passed, r.Summary, r.Reasons)
	}
	r = gateResult(t, runGates(t, Config{Root: root, VulnDB: imported, Binary: bin}, GateVulns), GateVulns)
	if !r.Passed || !strings.Contains(r.Summary, "binary mode") || !hasReason(r, "note: GO-2099-0001") {
		t.Errorf("vulnerabilities gate on a binary without the vulnerable function = %v %s %v, want a binary-mode pass that lists it", r.Passed, r.Summary, r.Reasons)
	}
	out := t.TempDir()
	r = gateResult(t, runGates(t, Config{Root: root, VulnDB: called, Binary: bin, VulnMode: VulnModeSource, Out: out}, GateVulns), GateVulns)
	if r.Passed || !strings.Contains(r.Summary, "source mode on "+root) || !hasReason(r, "(called)", "fix.ID") {
		t.Errorf("vulnerabilities gate forced to source mode = %v %s %v, want a source-mode failure with the call path", r.Passed, r.Summary, r.Reasons)
	}
	var scan VulnScan
	if b, err := os.ReadFile(filepath.Join(out, GateVulns, "vulns.json")); err != nil || json.Unmarshal(b, &scan) != nil || scan.Mode != VulnModeSource || scan.Target != root {
		t.Errorf("vulns.json = %+v, %v; want the mode and the target recorded", scan, err)
	}
	if _, err := Run(context.Background(), Config{Root: root, Out: t.TempDir(), VulnMode: "guess"}); err == nil {
		t.Error("Run(VulnMode guess) error = nil, want an error")
	}
	if _, err := ScanBinaryVulns(context.Background(), called, filepath.Join(t.TempDir(), "none"), nil); err == nil {
		t.Error("ScanBinaryVulns(missing binary) error = nil, want an error")
	}
}

// The SBOM of Vigil's own binary lists every linked module with licence and purpose and
// validates against the CycloneDX 1.6 schema; a broken one does not; the licence allow-list
// refuses what it does not list.
// Verifies: REQ-QMS-009
func TestSBOMAndLicences(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cfg := Config{Root: root, QMS: filepath.Join(root, "qms"), MainPackage: "./cmd/vigil"}
	inv, err := BuildInventory(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Component{}
	for _, c := range inv.Components {
		byName[c.Name] = c
	}
	pgx := byName["github.com/jackc/pgx/v5"]
	if !pgx.Direct || pgx.Licence != "MIT" || pgx.Purpose == "" || pgx.Version == "" {
		t.Errorf("inventory entry of pgx = %+v, want a direct MIT dependency with its purpose", pgx)
	}
	if inv.Main != "github.com/vigilhealth/vigil" || len(inv.Components) < 20 {
		t.Errorf("inventory = main %q, %d components; want Vigil's modules", inv.Main, len(inv.Components))
	}
	var sbom bytes.Buffer
	if err := WriteSBOM(&sbom, inv, SBOMOptions{Version: "v1.2.3", Time: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}); err != nil {
		t.Fatal(err)
	}
	if err := ValidateSBOM(sbom.Bytes()); err != nil {
		t.Fatalf("ValidateSBOM(generated) error = %v", err)
	}
	for _, want := range []string{`"specVersion": "1.6"`, `"bomFormat": "CycloneDX"`, `"purl": "pkg:golang/github.com/jackc/pgx/v5@`, `"id": "MIT"`} {
		if !strings.Contains(sbom.String(), want) {
			t.Errorf("SBOM lacks %s", want)
		}
	}
	for name, broken := range map[string]string{
		"component type": strings.Replace(sbom.String(), `"type": "library"`, `"type": "gadget"`, 1),
		"licence id":     strings.Replace(sbom.String(), `"id": "MIT"`, `"id": "Not-A-Licence"`, 1),
		"serial number":  strings.Replace(sbom.String(), `"serialNumber": "urn:uuid:`, `"serialNumber": "x`, 1),
	} {
		if err := ValidateSBOM([]byte(broken)); err == nil {
			t.Errorf("ValidateSBOM(broken %s) = nil, want a schema error", name)
		}
	}
	own, err := LoadLicencePolicy(filepath.Join(root, "qms", "licences.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if bad := own.Check(inv); len(bad) != 0 {
		t.Errorf("qms/licences.yaml refuses %v", bad)
	}
	strict := &LicencePolicy{Allowed: []string{"MIT"}}
	bad := strict.Check(inv)
	if !strings.Contains(strings.Join(bad, "\n"), `github.com/google/uuid@v1.6.0: licence "BSD-3-Clause" is not in the allow-list`) {
		t.Errorf("Check(MIT only) = %v, want uuid's BSD-3-Clause refused", bad)
	}
}

// npm packages of a shipped lockfile are SOUP too, dev dependencies are not.
// Verifies: REQ-QMS-009
func TestNPMComponents(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{"portal/package-lock.json": `{"lockfileVersion": 3, "packages": {
  "": {"name": "portal", "dependencies": {"htmx.org": "2.0.4"}},
  "node_modules/htmx.org": {"version": "2.0.4", "license": "0BSD"},
  "node_modules/uplot": {"version": "1.6.31", "license": "MIT"},
  "node_modules/eslint": {"version": "9.0.0", "license": "MIT", "dev": true}}}`,
		"node_modules/x/package-lock.json": `{"packages": {"node_modules/ignored": {"version": "1"}}}`})
	got, err := npmComponents(root, Purposes{"htmx.org": "Partial page updates."})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "htmx.org" || !got[0].Direct || got[0].Purpose == "" || got[0].Licence != "0BSD" ||
		got[1].Name != "uplot" || got[1].Direct || got[1].PURL() != "pkg:npm/uplot@1.6.31" {
		t.Errorf("npmComponents() = %+v, want htmx.org (direct) and uplot, not eslint", got)
	}
}

// The migrations gate applies every migration to an empty database, reverts them and applies
// them again on the real PostgreSQL.
// Verifies: REQ-QMS-004
func TestMigrationsGate(t *testing.T) {
	root, _ := filepath.Abs("..")
	r := gateResult(t, runGates(t, Config{Root: root, DatabaseAdminURL: testdb.AdminURL()}, GateMigrations), GateMigrations)
	if !r.Passed || !strings.Contains(r.Summary, "down and up again give the same schema") {
		t.Errorf("migrations gate = %v %s %v, want a pass", r.Passed, r.Summary, r.Reasons)
	}
	r = gateResult(t, runGates(t, Config{Root: root}, GateMigrations), GateMigrations)
	if r.Passed {
		t.Error("migrations gate without a database passed")
	}
}

// The fuzz gate passes when every fuzz target of the tree has a passing fuzzing run, and names
// the one that has none; the benchmarks gate names a table of figures without a command.
// Verifies: REQ-QMS-012
func TestFuzzAndBenchmarksGates(t *testing.T) {
	root := fixture(t, nil)
	fuzzed := goTestJSON(t, root, "-run", "^$", "-fuzz", "^FuzzDouble$", "-fuzztime", "30x", "./fix")
	rep := runGates(t, Config{Root: root, FuzzJSON: fuzzed}, GateFuzz, GateBenchmarks)
	if r := gateResult(t, rep, GateFuzz); !r.Passed {
		t.Errorf("fuzz gate = %s %v, want a pass", r.Summary, r.Reasons)
	}
	if r := gateResult(t, rep, GateBenchmarks); !r.Passed {
		t.Errorf("benchmarks gate = %s %v, want a pass", r.Summary, r.Reasons)
	}
	writeFiles(t, root, map[string]string{
		"fix/more_test.go":   "package fix\n\nimport \"testing\"\n\nfunc FuzzTriple(f *testing.F) { f.Fuzz(func(t *testing.T, x int) {}) }\n",
		"docs/benchmarks.md": "# Benchmarks\n\n## Fix\n\n```\ngo test -bench .\n```\n\n| case | figure |\n|---|---|\n| double | 1 ns |\n\n## Claims\n\nFast.\n\n| case | figure |\n|---|---|\n| triple | 2 ns |\n",
	})
	rep = runGates(t, Config{Root: root, FuzzJSON: fuzzed}, GateFuzz, GateBenchmarks)
	if r := gateResult(t, rep, GateFuzz); r.Passed || !hasReason(r, "example.com/fixture/fix FuzzTriple: not-run") {
		t.Errorf("fuzz gate with a target never fuzzed = %v %v, want a failure naming FuzzTriple", r.Passed, r.Reasons)
	}
	if r := gateResult(t, rep, GateBenchmarks); r.Passed || !hasReason(r, "docs/benchmarks.md:19", `"Claims"`) {
		t.Errorf("benchmarks gate = %v %v, want a failure naming the table of Claims", r.Passed, r.Reasons)
	}
	// Vigil's own benchmarks document has a command for every table.
	own, err := os.ReadFile("../docs/benchmarks.md")
	if err != nil {
		t.Fatal(err)
	}
	tables, err := CheckBenchmarks(own)
	if err != nil || len(tables) == 0 {
		t.Fatalf("CheckBenchmarks(docs/benchmarks.md) = %v, %v", tables, err)
	}
	for _, tb := range tables {
		if tb.Commands == 0 {
			t.Errorf("docs/benchmarks.md:%d (%s): no command", tb.Line, tb.Section)
		}
	}
}
