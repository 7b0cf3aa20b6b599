package archtest

import (
	"fmt"
	"go/ast"
	"go/token"
	"path"
	"slices"
	"strconv"
	"strings"
)

// Leaves are subtrees that others link into their own programs, kept small: a package at or
// below a key may import, of Vigil's own packages, only its own subtree and exactly the
// packages listed (not internal/, whatever the area rules of Allowed permit). devices/sdk is
// what device makers link (docs/devices-sdk.md); the wire-format packages it may import are
// leaves themselves, importing nothing of Vigil's, so the rule holds for its whole closure.
// devices/sdk's deps test checks the same closure with `go list -deps`, third-party packages
// included. Tests may integrate across the boundary.
var Leaves = map[string][]string{
	"devices/sdk":      {"devices/envelope", "devices/mqttwire"},
	"devices/envelope": {},
	"devices/mqttwire": {},
}

// leafOf returns the key of Leaves whose subtree holds the package directory dir ("" if none).
func leafOf(dir string) string {
	best := ""
	for k := range Leaves {
		if (dir == k || strings.HasPrefix(dir, k+"/")) && len(k) > len(best) {
			best = k
		}
	}
	return best
}

// checkLeaf reports the imports of Vigil's packages that the file rel, if it belongs to a
// leaf, may not make.
func checkLeaf(fset *token.FileSet, rel string, f *ast.File) []Violation {
	leaf := leafOf(path.Dir(rel))
	if leaf == "" || strings.HasSuffix(rel, "_test.go") {
		return nil
	}
	var out []Violation
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		own, ours := strings.CutPrefix(p, Module+"/")
		if !ours || own == leaf || strings.HasPrefix(own, leaf+"/") || slices.Contains(Leaves[leaf], own) {
			continue
		}
		out = append(out, Violation{rel, fset.Position(imp.Pos()).Line,
			fmt.Sprintf("%s is a leaf and may not import %s (internal/archtest.Leaves allows %v)", leaf, p, Leaves[leaf])})
	}
	return out
}
