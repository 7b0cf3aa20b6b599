package validation

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"golang.org/x/mod/modfile"

	"github.com/vigilhealth/vigil/traceability"
)

var fuzzFuncRE = regexp.MustCompile(`^func\s+(Fuzz\w*)\s*\(\s*\w+\s+\*testing\.F\s*\)`)

// FuzzTarget is one fuzz test of the source tree.
type FuzzTarget struct {
	Package string `json:"package"` // import path
	Name    string `json:"name"`
	Status  string `json:"status"` // in the fuzz run: pass, fail, skip or not-run
}

// FuzzTargets lists every `func FuzzXxx(f *testing.F)` in the *_test.go files of root.
func FuzzTargets(root string) ([]FuzzTarget, error) {
	raw, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return nil, err
	}
	mod := modfile.ModulePath(raw)
	var out []FuzzTarget
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			n := d.Name()
			if p != root && (n == "testdata" || n == "vendor" || n == "node_modules" || n == "bin" || strings.HasPrefix(n, ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		rel, _ := filepath.Rel(root, filepath.Dir(p))
		pkg := mod
		if rel != "." {
			pkg = path.Join(mod, filepath.ToSlash(rel))
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1024*1024), 1024*1024)
		for sc.Scan() {
			if m := fuzzFuncRE.FindStringSubmatch(sc.Text()); m != nil {
				out = append(out, FuzzTarget{Package: pkg, Name: m[1]})
			}
		}
		return sc.Err()
	})
	sort.Slice(out, func(i, j int) bool {
		if out[i].Package != out[j].Package {
			return out[i].Package < out[j].Package
		}
		return out[i].Name < out[j].Name
	})
	return out, err
}

// fuzzGate passes when every fuzz target of the source tree has a passing run in the fuzz
// results (`go test -json -fuzz`, as `make fuzz` writes them).
func fuzzGate(_ context.Context, e *env) Result {
	targets, err := FuzzTargets(e.cfg.Root)
	if err != nil {
		return fail("fuzz targets could not be listed", err.Error())
	}
	if e.cfg.FuzzJSON == "" {
		return fail("no fuzz results", "no fuzz results were given (--fuzz-json); run make fuzz")
	}
	f, err := os.Open(e.cfg.FuzzJSON)
	if err != nil {
		return fail("no fuzz results", err.Error())
	}
	run, err := traceability.ParseTestJSON(f)
	f.Close()
	if err != nil {
		return fail("unreadable fuzz results", err.Error())
	}
	dir, rel, err := e.dir(GateFuzz)
	if err != nil {
		return fail("evidence", err.Error())
	}
	res := Result{}
	passed := 0
	for i := range targets {
		t := &targets[i]
		t.Status = string(traceability.NotRun)
		if r, ok := run.Result(t.Package, t.Name); ok {
			t.Status = string(r.Status)
		}
		if t.Status == string(traceability.Pass) {
			passed++
		} else {
			res.Reasons = append(res.Reasons, fmt.Sprintf("fuzz target %s %s: %s", t.Package, t.Name, t.Status))
		}
	}
	if err := writeJSONFile(filepath.Join(dir, "fuzz.json"), map[string]any{"source": e.cfg.FuzzJSON, "targets": targets}); err != nil {
		return fail("evidence", err.Error())
	}
	res.Evidence = []string{filepath.Join(rel, "fuzz.json")}
	res.Summary = fmt.Sprintf("%d/%d fuzz targets passed their fuzzing run", passed, len(targets))
	res.Passed = len(targets) > 0 && passed == len(targets)
	return res
}
