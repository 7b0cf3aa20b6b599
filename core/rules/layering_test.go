package rules_test

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"testing"
)

// core imports core/rules and core/alarms, so they must never import core (nor anything
// above it).
// Verifies: REQ-CORE-107
func TestNoImportOfCore(t *testing.T) {
	t.Parallel()
	forbidden := map[string]bool{
		"github.com/vigilhealth/vigil/core": true, "github.com/vigilhealth/vigil/devices": true,
		"github.com/vigilhealth/vigil/server": true,
	}
	for _, dir := range []string{".", "../alarms", "rulestest"} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil || len(files) == 0 {
			t.Fatalf("glob %s: %v (%d files)", dir, err, len(files))
		}
		for _, f := range files {
			af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, im := range af.Imports {
				p, _ := strconv.Unquote(im.Path.Value)
				if forbidden[p] {
					t.Errorf("%s imports %s, want no import of a higher layer", f, p)
				}
			}
		}
	}
}
