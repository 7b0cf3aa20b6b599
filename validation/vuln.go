package validation

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"

	"golang.org/x/vuln/scan"
)

// Vulnerability levels, from govulncheck's findings: how close Vigil's code gets to it.
const (
	VulnCalled   = "called"   // a vulnerable function is reachable from Vigil's code
	VulnImported = "imported" // a vulnerable package is imported, its vulnerable code not reached
	VulnRequired = "required" // a vulnerable module version is required, its package not imported
)

// Vuln is one known vulnerability of a module in the build.
type Vuln struct {
	ID           string   `json:"id"`
	Aliases      []string `json:"aliases,omitempty"`
	Summary      string   `json:"summary"`
	Module       string   `json:"module"` // "stdlib" for the Go standard library
	Version      string   `json:"version"`
	FixedVersion string   `json:"fixed_version,omitempty"`
	Level        string   `json:"level"`           // VulnCalled, VulnImported or VulnRequired
	Trace        []string `json:"trace,omitempty"` // for VulnCalled: the call path, Vigil's code first
}

// VulnScan is the result of govulncheck on a source tree.
type VulnScan struct {
	DB      string `json:"db"`
	Scanner string `json:"scanner"`
	// Mode is what was scanned: VulnModeBinary (a built binary) or VulnModeSource.
	Mode string `json:"mode"`
	// Target is the binary (binary mode) or the root of the source tree (source mode).
	Target string `json:"target"`
	Vulns  []Vuln `json:"vulns"`
}

// Called returns the vulnerabilities reachable from the scanned code.
func (s *VulnScan) Called() []Vuln {
	var out []Vuln
	for _, v := range s.Vulns {
		if v.Level == VulnCalled {
			out = append(out, v)
		}
	}
	return out
}

// vulnVersion is the version of golang.org/x/vuln linked into this binary.
func vulnVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "golang.org/x/vuln" {
				return d.Version
			}
		}
	}
	return "unknown version"
}

// ErrNoVulnDB is returned by ScanVulns when the vulnerability database folder is not given
// or does not exist.
var ErrNoVulnDB = errors.New("vulnerability database not found")

type govulnFrame struct {
	Module, Version, Package, Function, Receiver string
}

type govulnMessage struct {
	Config *struct {
		ScannerName    string `json:"scanner_name"`
		ScannerVersion string `json:"scanner_version"`
		DB             string `json:"db"`
	} `json:"config"`
	OSV *struct {
		ID      string   `json:"id"`
		Summary string   `json:"summary"`
		Details string   `json:"details"`
		Aliases []string `json:"aliases"`
	} `json:"osv"`
	Finding *struct {
		OSV          string         `json:"osv"`
		FixedVersion string         `json:"fixed_version"`
		Trace        []*govulnFrame `json:"trace"`
	} `json:"finding"`
}

// The modes of the vulnerabilities gate ([Config.VulnMode]).
const (
	// VulnModeAuto scans the binary when [Config.Binary] is given, else the source.
	VulnModeAuto = ""
	// VulnModeBinary scans the built binary: the modules, Go version and symbols it links.
	VulnModeBinary = "binary"
	// VulnModeSource scans the source tree: a call graph of every package (./...).
	VulnModeSource = "source"
)

// ScanVulns runs govulncheck (golang.org/x/vuln, in this process) in source mode on the
// packages of root against the offline OSV database in the folder db, with no network, and
// writes its JSON stream to raw (when not nil). Source mode type-checks and builds a call
// graph of every package: on Vigil about 10 s, the slowest thing `vigil validate` does.
func ScanVulns(ctx context.Context, root, db string, patterns []string, raw io.Writer) (*VulnScan, error) {
	if len(patterns) == 0 {
		patterns = []string{"./..."}
	}
	args := append([]string{"-C", root}, patterns...)
	return govulncheck(ctx, db, VulnModeSource, args, raw)
}

// ScanBinaryVulns runs govulncheck in binary mode on a built Go binary against the offline
// OSV database in the folder db: the modules and the Go version recorded in the binary, and
// the symbols it links (a vulnerable function linked into the binary is reported as called,
// since the linker keeps only what can be reached, at most more than source mode would).
// It reads the binary's symbol table and build information, with no type-checking: on
// Vigil's binary under a second (docs/benchmarks.md).
func ScanBinaryVulns(ctx context.Context, db, binary string, raw io.Writer) (*VulnScan, error) {
	if fi, err := os.Stat(binary); err != nil || fi.IsDir() {
		return nil, fmt.Errorf("govulncheck: binary %s: not a file", binary)
	}
	abs, err := filepath.Abs(binary)
	if err != nil {
		return nil, err
	}
	return govulncheck(ctx, db, VulnModeBinary, []string{"-mode", "binary", abs}, raw)
}

func govulncheck(ctx context.Context, db, mode string, args []string, raw io.Writer) (*VulnScan, error) {
	if db == "" {
		return nil, fmt.Errorf("%w: no database folder given (--vulndb)", ErrNoVulnDB)
	}
	abs, err := filepath.Abs(db)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("%w: %s is not a folder of OSV entries (--vulndb)", ErrNoVulnDB, abs)
	}
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(abs)}
	var out, stderr bytes.Buffer
	cmd := scan.Command(ctx, append([]string{"-db", u.String(), "-format", "json"}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	// No network: the database is a local folder, and modules come from the module cache.
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off")
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("govulncheck: %w", err)
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("govulncheck: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	if raw != nil {
		if _, err := raw.Write(out.Bytes()); err != nil {
			return nil, err
		}
	}
	res, err := parseGovulncheck(&out)
	if err != nil {
		return nil, err
	}
	res.Mode = mode
	return res, nil
}

func parseGovulncheck(r io.Reader) (*VulnScan, error) {
	dec := json.NewDecoder(bufio.NewReader(r))
	res := &VulnScan{Vulns: []Vuln{}}
	type osvInfo struct {
		summary string
		aliases []string
	}
	osvs := map[string]osvInfo{}
	best := map[string]*Vuln{}
	rank := map[string]int{VulnRequired: 1, VulnImported: 2, VulnCalled: 3}
	for {
		var m govulnMessage
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("govulncheck output: %w", err)
		}
		switch {
		case m.Config != nil:
			res.DB = m.Config.DB
			res.Scanner = "govulncheck (golang.org/x/vuln " + vulnVersion() + ", in " + m.Config.ScannerName + ")"
		case m.OSV != nil:
			s := m.OSV.Summary
			if s == "" {
				s = strings.SplitN(m.OSV.Details, "\n", 2)[0]
			}
			osvs[m.OSV.ID] = osvInfo{s, m.OSV.Aliases}
		case m.Finding != nil && len(m.Finding.Trace) > 0:
			f := m.Finding
			top := f.Trace[0]
			level := VulnRequired
			switch {
			case top.Function != "":
				level = VulnCalled
			case top.Package != "":
				level = VulnImported
			}
			v := &Vuln{ID: f.OSV, Module: top.Module, Version: top.Version, FixedVersion: f.FixedVersion, Level: level}
			if level == VulnCalled {
				for i := len(f.Trace) - 1; i >= 0; i-- {
					fr := f.Trace[i]
					name := fr.Package + "." + fr.Function
					if fr.Receiver != "" {
						name = fr.Package + ".(" + fr.Receiver + ")." + fr.Function
					}
					v.Trace = append(v.Trace, name)
				}
			}
			k := f.OSV + "\x00" + top.Module
			if old := best[k]; old == nil || rank[level] > rank[old.Level] {
				best[k] = v
			}
		}
	}
	for _, v := range best {
		if o, ok := osvs[v.ID]; ok {
			v.Summary, v.Aliases = o.summary, o.aliases
		}
		res.Vulns = append(res.Vulns, *v)
	}
	sort.Slice(res.Vulns, func(i, j int) bool {
		a, b := res.Vulns[i], res.Vulns[j]
		if rank[a.Level] != rank[b.Level] {
			return rank[a.Level] > rank[b.Level]
		}
		if a.Module != b.Module {
			return a.Module < b.Module
		}
		return a.ID < b.ID
	})
	return res, nil
}

// vulnGate fails when govulncheck finds a known vulnerability reachable from Vigil's code,
// or cannot run (no database). Vulnerable modules whose code is not reached are listed.
func vulnGate(ctx context.Context, e *env) Result {
	dir, rel, err := e.dir(GateVulns)
	if err != nil {
		return fail("evidence", err.Error())
	}
	rawPath := filepath.Join(dir, "govulncheck.json")
	raw, err := os.Create(rawPath)
	if err != nil {
		return fail("evidence", err.Error())
	}
	var s *VulnScan
	switch mode := e.vulnMode(); mode {
	case VulnModeBinary:
		if e.cfg.Binary == "" {
			raw.Close()
			return fail("no binary to scan", "the vulnerabilities gate in binary mode needs the built binary (--binary)")
		}
		s, err = ScanBinaryVulns(ctx, e.cfg.VulnDB, e.cfg.Binary, raw)
		if s != nil {
			s.Target = e.cfg.Binary
		}
	case VulnModeSource:
		s, err = ScanVulns(ctx, e.cfg.Root, e.cfg.VulnDB, nil, raw)
		if s != nil {
			s.Target = e.cfg.Root
		}
	default:
		raw.Close()
		return fail("unknown mode", fmt.Sprintf("vulnerability scan mode %q: want %q or %q", mode, VulnModeBinary, VulnModeSource))
	}
	raw.Close()
	if err != nil {
		if errors.Is(err, ErrNoVulnDB) {
			return fail("no vulnerability database", err.Error())
		}
		return fail("govulncheck failed", strings.Split(err.Error(), "\n")...)
	}
	if err := writeJSONFile(filepath.Join(dir, "vulns.json"), s); err != nil {
		return fail("evidence", err.Error())
	}
	e.setVulns(s)
	called := s.Called()
	res := Result{Evidence: []string{filepath.Join(rel, "vulns.json"), filepath.Join(rel, "govulncheck.json")},
		Summary: fmt.Sprintf("%s, %s mode on %s, against %s: %d reachable, %d in the build but not reached", s.Scanner, s.Mode, s.Target, e.cfg.VulnDB, len(called), len(s.Vulns)-len(called))}
	for _, v := range s.Vulns {
		line := fmt.Sprintf("%s %s@%s (%s): %s", v.ID, v.Module, v.Version, v.Level, v.Summary)
		if v.FixedVersion != "" {
			line += "; fixed in " + v.FixedVersion
		}
		if v.Level == VulnCalled {
			line += "; via " + strings.Join(v.Trace, " → ")
		} else {
			line = "note: " + line
		}
		res.Reasons = append(res.Reasons, line)
	}
	res.Passed = len(called) == 0
	return res
}

// vulnMode is the scan mode of the run: Config.VulnMode, or for auto the binary when one is
// given (what ships, and ten times faster) and the source otherwise.
func (e *env) vulnMode() string {
	switch {
	case e.cfg.VulnMode != VulnModeAuto:
		return e.cfg.VulnMode
	case e.cfg.Binary != "":
		return VulnModeBinary
	}
	return VulnModeSource
}
