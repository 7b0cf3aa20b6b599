package validation

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/vigilhealth/vigil/traceability"
)

// The gates, in the order they run.
const (
	GateUnit       = "unit-and-integration"
	GateTrace      = "traceability"
	GateRisks      = "risk-controls-verified"
	GateVulns      = "vulnerabilities"
	GateSBOM       = "sbom"
	GateLicences   = "licences"
	GateFuzz       = "fuzz"
	GateMigrations = "migrations"
	GateBenchmarks = "benchmarks-recorded"
)

// Config configures a validation run. Paths are relative to the working directory unless
// said otherwise; zero values take the documented defaults.
type Config struct {
	// Root is the repository (directory of go.mod). Required.
	Root string
	// QMS is the folder of the quality records. Default Root/qms.
	QMS string
	// Out is the folder the evidence and the reports are written to. Required.
	Out string
	// TestJSON is the `go test -json` output of the unit and integration run. Required by
	// the unit-and-integration, traceability and risk-controls-verified gates.
	TestJSON string
	// FuzzJSON is the `go test -json -fuzz` output of the short fuzz runs (fuzz gate).
	FuzzJSON string
	// VulnDB is the folder of the offline OSV database govulncheck reads (vulnerabilities
	// gate). No default: the gate fails when it is empty or missing.
	VulnDB string
	// Binary is a built vigil binary whose modules the SBOM lists and, by default, the
	// vulnerabilities gate scans. Empty: the modules the main package links, from
	// `go list -deps`, and a scan of the source.
	Binary string
	// VulnMode is how the vulnerabilities gate runs govulncheck: VulnModeBinary on Binary,
	// VulnModeSource on the packages of Root, or VulnModeAuto (default): binary when Binary
	// is given, else source.
	VulnMode string
	// MainPackage is the package of the binary, for the SBOM and the licences. Default
	// "./cmd/vigil".
	MainPackage string
	// DatabaseAdminURL is a PostgreSQL connection allowed to create and drop databases, for
	// the migrations gate.
	DatabaseAdminURL string
	// Gates names the gates to run; default all, in order (AllGates).
	Gates []string
	// Commit names the commit; default traceability.GitCommit(Root).
	Commit string
	// Version is the version recorded in the SBOM. Default "dev".
	Version string
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Result is the outcome of one gate.
type Result struct {
	Gate     string        `json:"gate"`
	Passed   bool          `json:"passed"`
	Summary  string        `json:"summary"`
	Reasons  []string      `json:"reasons,omitempty"` // why it failed (or what it noted), one line each
	Evidence []string      `json:"evidence"`          // files, relative to Config.Out
	Duration time.Duration `json:"duration_ns"`
}

// Report is the outcome of a validation run.
type Report struct {
	Commit   string    `json:"commit"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Passed   bool      `json:"passed"`
	Gates    []Result  `json:"gates"`
}

// Failed returns the names of the gates that failed.
func (r *Report) Failed() []string {
	var out []string
	for _, g := range r.Gates {
		if !g.Passed {
			out = append(out, g.Gate)
		}
	}
	return out
}

// Gate returns the result of the named gate, and whether it ran.
func (r *Report) Gate(name string) (Result, bool) {
	for _, g := range r.Gates {
		if g.Gate == name {
			return g, true
		}
	}
	return Result{}, false
}

// ErrGatesFailed is returned (wrapped, naming the gates) by callers that refuse to go on
// after a failed gate, such as a release.
var ErrGatesFailed = errors.New("validation gates failed")

type gate struct {
	name string
	run  func(ctx context.Context, e *env) Result
}

var gates = []gate{
	{GateUnit, unitGate},
	{GateTrace, traceGate},
	{GateRisks, riskGate},
	{GateVulns, vulnGate},
	{GateSBOM, sbomGate},
	{GateLicences, licenceGate},
	{GateFuzz, fuzzGate},
	{GateMigrations, migrationsGate},
	{GateBenchmarks, benchmarksGate},
}

// AllGates lists the gates' names in the order they run.
func AllGates() []string {
	out := make([]string, len(gates))
	for i, g := range gates {
		out[i] = g.name
	}
	return out
}

// env is what the gates of one run share: the config and results computed once.
type env struct {
	cfg Config

	matrixOnce sync.Once
	matrix     *traceability.Matrix
	matrixErr  error

	invOnce sync.Once
	inv     *Inventory
	invErr  error

	vulns    *VulnScan     // set by the vulnerabilities gate when it ran
	vulnDone chan struct{} // closed when the vulnerabilities gate is done (or not run)
}

func (e *env) setVulns(s *VulnScan) { e.vulns = s }

// annotateVulns lists, on each component, the known vulnerabilities the vulnerabilities
// gate found in it.
func (e *env) annotateVulns(inv *Inventory) {
	<-e.vulnDone
	if e.vulns == nil {
		return
	}
	for i := range inv.Components {
		c := &inv.Components[i]
		c.Vulns = []string{}
		for _, v := range e.vulns.Vulns {
			if v.Module == c.Name {
				c.Vulns = append(c.Vulns, v.ID+" ("+v.Level+")")
			}
		}
	}
}

// dir returns the evidence folder of a gate (created) and its path relative to Out.
func (e *env) dir(gate string) (abs, rel string, err error) {
	abs = filepath.Join(e.cfg.Out, gate)
	return abs, gate, os.MkdirAll(abs, 0o755)
}

func (e *env) matrixOf(ctx context.Context) (*traceability.Matrix, error) {
	e.matrixOnce.Do(func() {
		if e.cfg.TestJSON == "" {
			e.matrixErr = errors.New("no go test -json results given (--test-json)")
			return
		}
		in, err := traceability.Load(ctx, traceability.Config{Root: e.cfg.Root, QMS: e.cfg.QMS, TestJSON: e.cfg.TestJSON, Commit: e.cfg.Commit})
		if err != nil {
			e.matrixErr = err
			return
		}
		in.Now = e.cfg.Now
		e.matrix = traceability.Build(in)
	})
	return e.matrix, e.matrixErr
}

// Run runs the configured gates (concurrently; reported in order) and writes their evidence, report.json and
// junit.xml into cfg.Out. A gate that fails does not stop the others. The error is for a
// run that could not be made at all (bad configuration, unwritable Out).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Root == "" || cfg.Out == "" {
		return nil, errors.New("validation: Config.Root and Config.Out are required")
	}
	if cfg.QMS == "" {
		cfg.QMS = filepath.Join(cfg.Root, "qms")
	}
	if cfg.MainPackage == "" {
		cfg.MainPackage = "./cmd/vigil"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	if cfg.Commit == "" {
		cfg.Commit = traceability.GitCommit(ctx, cfg.Root)
	}
	want := cfg.Gates
	if len(want) == 0 {
		want = AllGates()
	}
	known := map[string]gate{}
	for _, g := range gates {
		known[g.name] = g
	}
	for _, n := range want {
		if _, ok := known[n]; !ok {
			return nil, fmt.Errorf("validation: unknown gate %q (gates: %s)", n, strings.Join(AllGates(), ", "))
		}
	}
	switch cfg.VulnMode {
	case VulnModeAuto, VulnModeBinary, VulnModeSource:
	default:
		return nil, fmt.Errorf("validation: unknown vulnerability scan mode %q (want %q or %q)", cfg.VulnMode, VulnModeBinary, VulnModeSource)
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return nil, fmt.Errorf("validation: %w", err)
	}
	e := &env{cfg: cfg, vulnDone: make(chan struct{})}
	if !contains(want, GateVulns) {
		close(e.vulnDone)
	}
	rep := &Report{Commit: cfg.Commit, Started: cfg.Now().UTC(), Passed: true}
	// The gates are independent (the SBOM waits for the vulnerability scan to list known
	// vulnerabilities); they run at once, so the slowest (govulncheck) hides the others.
	var selected []gate
	for _, g := range gates {
		if contains(want, g.name) {
			selected = append(selected, g)
		}
	}
	results := make([]Result, len(selected))
	var wg sync.WaitGroup
	for i, g := range selected {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			res := g.run(ctx, e)
			if g.name == GateVulns {
				close(e.vulnDone)
			}
			res.Gate = g.name
			res.Duration = time.Since(start)
			if res.Evidence == nil {
				res.Evidence = []string{}
			}
			results[i] = res
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	for _, res := range results {
		rep.Gates = append(rep.Gates, res)
		rep.Passed = rep.Passed && res.Passed
	}
	rep.Finished = cfg.Now().UTC()
	if err := writeFile(filepath.Join(cfg.Out, "report.json"), rep.WriteJSON); err != nil {
		return nil, err
	}
	if err := writeFile(filepath.Join(cfg.Out, "junit.xml"), rep.WriteJUnit); err != nil {
		return nil, err
	}
	return rep, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("validation: %w", err)
	}
	err = write(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("validation: write %s: %w", path, err)
	}
	return nil
}

func writeJSONFile(path string, v any) error {
	return writeFile(path, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	})
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes one line per gate: name, PASS or FAIL, duration, summary, and the
// reasons of failed gates indented below.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "GATE\tRESULT\tTIME\tSUMMARY\n")
	for _, g := range r.Gates {
		res := "PASS"
		if !g.Passed {
			res = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%s\t%.1fs\t%s\n", g.Gate, res, g.Duration.Seconds(), g.Summary)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, g := range r.Gates {
		if g.Passed {
			continue
		}
		fmt.Fprintf(w, "\n%s failed:\n", g.Gate)
		for i, reason := range g.Reasons {
			if i == 20 {
				fmt.Fprintf(w, "  … %d more (see %s)\n", len(g.Reasons)-20, strings.Join(g.Evidence, ", "))
				break
			}
			fmt.Fprintf(w, "  - %s\n", reason)
		}
	}
	verdict := "all gates passed"
	if !r.Passed {
		verdict = "FAILED: " + strings.Join(r.Failed(), ", ")
	}
	failed := len(r.Failed())
	_, err := fmt.Fprintf(w, "\nvalidation of %s: %s\ngates: %d passed, %d failed\n", r.Commit, verdict, len(r.Gates)-failed, failed)
	return err
}

type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Time     string       `xml:"time,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name      string      `xml:"name,attr"`
	Tests     int         `xml:"tests,attr"`
	Failures  int         `xml:"failures,attr"`
	Time      string      `xml:"time,attr"`
	Timestamp string      `xml:"timestamp,attr"`
	Props     []junitProp `xml:"properties>property"`
	Cases     []junitCase `xml:"testcase"`
}

type junitProp struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitFailure `xml:"failure,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitFailure struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Text    string `xml:",chardata"`
}

// WriteJUnit writes the report as JUnit XML: one test case per gate, in suite "validation".
func (r *Report) WriteJUnit(w io.Writer) error {
	s := junitSuite{Name: "validation", Timestamp: r.Started.Format(time.RFC3339), Props: []junitProp{{"commit", r.Commit}}}
	var total time.Duration
	for _, g := range r.Gates {
		total += g.Duration
		c := junitCase{Name: g.Gate, Classname: "vigil.validate", Time: fmt.Sprintf("%.3f", g.Duration.Seconds()),
			SystemOut: g.Summary + "\nevidence: " + strings.Join(g.Evidence, ", ")}
		if !g.Passed {
			s.Failures++
			c.Failure = &junitFailure{Message: g.Summary, Type: "gate-failed", Text: strings.Join(g.Reasons, "\n")}
		}
		s.Cases = append(s.Cases, c)
	}
	s.Tests = len(s.Cases)
	s.Time = fmt.Sprintf("%.3f", total.Seconds())
	doc := junitSuites{Name: "vigil validate", Tests: s.Tests, Failures: s.Failures, Time: s.Time, Suites: []junitSuite{s}}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

func fail(summary string, reasons ...string) Result {
	return Result{Passed: false, Summary: summary, Reasons: reasons}
}
