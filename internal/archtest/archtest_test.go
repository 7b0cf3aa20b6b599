package archtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The project's own tree obeys the layering and the logging rule.
// Verifies: REQ-FND-007
func TestProjectFollowsLayering(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found at %s: %v", root, err)
	}
	vs, err := Check(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		t.Errorf("%s", v)
	}
}

// The checker catches each kind of violation in a planted tree.
// Verifies: REQ-FND-007
func TestCheckCatchesViolations(t *testing.T) {
	root := t.TempDir()
	files := map[string]string{
		"go.mod":            "module " + Module + "\n",
		"keys/k.go":         "package keys\nimport _ \"" + Module + "/audit\"\n",
		"audit/a.go":        "package audit\nimport _ \"" + Module + "/keys\"\nimport \"log\"\nfunc f() { log.Print(1) }\n",
		"core/c.go":         "package core\nimport \"fmt\"\nfunc f() { fmt.Println(1) }\n",
		"devices/d.go":      "package devices\nimport _ \"" + Module + "/server\"\n",
		"devices/d_test.go": "package devices\nimport _ \"" + Module + "/server\"\n",
		"audit/r.go":        "package audit\nimport _ \"github.com/google/trillian\"\n",
		"audit/chain/c.go":  "package chain\nimport _ \"github.com/google/trillian/types\"\n",
		"core/x.go":         "package core\nimport _ \"" + Module + "/audit/chain\"\n",
		"cmd/vigil/main.go": "package main\nimport \"fmt\"\nfunc main() { fmt.Println(1) }\n",
		"extra/x.go":        "package extra\n",
	}
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	vs, err := Check(root)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range vs {
		got = append(got, v.String())
	}
	want := []string{
		"audit/a.go:3: imports \"log\"",
		"audit/r.go:2: imports \"github.com/google/trillian\": only audit/chain may",
		"core/c.go:3: fmt.Println in a library",
		"core/x.go:2: core may not import " + Module + "/audit/chain: only",
		"devices/d.go:2: devices may not import",
		"extra/x.go:1: top-level folder \"extra\"",
		"keys/k.go:2: keys may not import",
	}
	if len(got) != len(want) {
		t.Fatalf("Check() = %d violations %q, want %d", len(got), got, len(want))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("Check()[%d] = %q, want prefix %q", i, got[i], want[i])
		}
	}
}
