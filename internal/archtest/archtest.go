// Package archtest enforces the architecture described in docs/architecture.md on the source
// tree: which layer may import which, that Trillian is imported by audit/chain alone, and that
// nothing logs except through log/slog. Its test runs in `make test`.
package archtest

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Module is the module path of Vigil.
const Module = "github.com/vigilhealth/vigil"

// Allowed maps each top-level area to the other areas it may import. Every area may import
// its own subpackages and internal/. An area missing here is a violation by itself, so a new
// top-level folder must be placed in the layering on purpose.
var Allowed = map[string][]string{
	"keys":         {},
	"audit":        {"keys"},
	"core":         {"audit", "keys"},
	"devices":      {"core", "audit", "keys"},
	"interop":      {"core", "devices", "audit", "keys"},
	"auth":         {"audit", "keys"},
	"traceability": {},
	"validation":   {"traceability"},
	"qms":          {"traceability", "validation", "audit", "keys"},
	"portal":       {"core", "devices", "interop", "auth", "audit", "keys", "qms", "traceability", "validation"},
	"server":       {"portal", "core", "devices", "interop", "auth", "audit", "keys", "qms", "traceability", "validation"},
	"cmd":          {"server", "portal", "core", "devices", "interop", "auth", "audit", "keys", "qms", "traceability", "validation"},
	"internal":     {},
	"bench":        {"server", "portal", "core", "devices", "interop", "auth", "audit", "keys", "qms", "traceability", "validation"},
}

// ReadSide lists packages of Vigil that only some areas may import although their area is
// allowed: domain packages record audit events through audit.Recorder; reading the chain
// (proofs, checkpoints, verification, packs) is for the shell, the commands and the quality
// system.
var ReadSide = map[string][]string{
	// portal: the audit browser shows events with their proofs and exports packs (issue #15).
	"audit/chain": {"audit", "server", "cmd", "qms", "bench", "portal"},
}

// Confined maps an import path prefix to the one package directory that may import it: the
// transparency log's client and server (Trillian) belong to the audit chain, so that anything
// that only records an event links no log server.
var Confined = map[string]string{
	"github.com/google/trillian": "audit/chain",
}

// ForbiddenLoggers are packages that log outside log/slog.
var ForbiddenLoggers = map[string]bool{
	"log":                            true,
	"github.com/sirupsen/logrus":     true,
	"go.uber.org/zap":                true,
	"github.com/rs/zerolog":          true,
	"github.com/rs/zerolog/log":      true,
	"github.com/golang/glog":         true,
	"k8s.io/klog":                    true,
	"k8s.io/klog/v2":                 true,
	"github.com/labstack/gommon/log": true,
}

// Violation is one breach of the rules.
type Violation struct {
	File string
	Line int
	Rule string
}

func (v Violation) String() string { return fmt.Sprintf("%s:%d: %s", v.File, v.Line, v.Rule) }

// skipDir reports directories that are not part of the module's Go code.
func skipDir(rel, name string) bool {
	return name == "testdata" || name == "node_modules" || name == "vendor" || strings.HasPrefix(name, ".") ||
		name == "bin" || rel == "tools"
}

// Check walks the module at root and returns every violation, sorted.
func Check(root string) ([]Violation, error) {
	var out []Violation
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel != "." && skipDir(rel, d.Name()) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		out = append(out, checkFile(fset, rel, f)...)
		out = append(out, checkLeaf(fset, rel, f)...)
		return nil
	})
	sort.Slice(out, func(i, j int) bool {
		if out[i].File != out[j].File {
			return out[i].File < out[j].File
		}
		return out[i].Line < out[j].Line
	})
	return out, err
}

// readSide reports whether area may import pkg under ReadSide, and if not, who may.
func readSide(area, pkg string) (string, bool) {
	for p, areas := range ReadSide {
		if pkg != p && !strings.HasPrefix(pkg, p+"/") {
			continue
		}
		for _, a := range areas {
			if a == area {
				return "", true
			}
		}
		return "only " + strings.Join(areas, ", ") + " may", false
	}
	return "", true
}

func checkFile(fset *token.FileSet, rel string, f *ast.File) []Violation {
	var out []Violation
	area := strings.SplitN(rel, "/", 2)[0]
	isTest := strings.HasSuffix(rel, "_test.go")
	allowed, known := Allowed[area]
	if !known && strings.Contains(rel, "/") {
		out = append(out, Violation{rel, 1, fmt.Sprintf("top-level folder %q is not placed in the layering (internal/archtest.Allowed, docs/architecture.md)", area)})
	}
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		line := fset.Position(imp.Pos()).Line
		if ForbiddenLoggers[p] && !strings.HasPrefix(rel, "internal/klogslog/") {
			out = append(out, Violation{rel, line, fmt.Sprintf("imports %q: log through log/slog only", p)})
		}
		for prefix, dir := range Confined {
			if (p == prefix || strings.HasPrefix(p, prefix+"/")) && path.Dir(rel) != dir {
				out = append(out, Violation{rel, line, fmt.Sprintf("imports %q: only %s may (docs/architecture.md)", p, dir)})
			}
		}
		if isTest || !strings.HasPrefix(p, Module+"/") {
			continue // tests may integrate across layers
		}
		pkg := strings.TrimPrefix(p, Module+"/")
		if v, ok := readSide(area, pkg); !ok {
			out = append(out, Violation{rel, line, fmt.Sprintf("%s may not import %s: %s (docs/architecture.md)", area, p, v)})
		}
		target := strings.SplitN(pkg, "/", 2)[0]
		if target == area || target == "internal" {
			continue
		}
		ok := false
		for _, a := range allowed {
			ok = ok || a == target
		}
		if !ok {
			out = append(out, Violation{rel, line, fmt.Sprintf("%s may not import %s (docs/architecture.md layering)", area, p)})
		}
	}
	// Libraries return errors; only commands print. fmt.Print* and print/println write to the
	// process's stdout behind the logger's back.
	if f.Name.Name != "main" && !isTest {
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			switch fn := call.Fun.(type) {
			case *ast.SelectorExpr:
				if x, ok := fn.X.(*ast.Ident); ok && x.Name == "fmt" && (fn.Sel.Name == "Print" || fn.Sel.Name == "Printf" || fn.Sel.Name == "Println") {
					out = append(out, Violation{rel, fset.Position(call.Pos()).Line, "fmt." + fn.Sel.Name + " in a library: return errors or log with slog"})
				}
			case *ast.Ident:
				if fn.Name == "print" || fn.Name == "println" {
					out = append(out, Violation{rel, fset.Position(call.Pos()).Line, fn.Name + " in a library: return errors or log with slog"})
				}
			}
			return true
		})
	}
	return out
}
