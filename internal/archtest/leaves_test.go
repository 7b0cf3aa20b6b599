package archtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A leaf (devices/sdk and the wire formats it links) imports of Vigil only its own subtree
// and its listed packages, even where the area rules would allow more; its tests may
// integrate.
// Verifies: REQ-FND-007, REQ-DEV-114
func TestCheckLeaves(t *testing.T) {
	imp := func(pkg string, paths ...string) string {
		s := "package " + pkg + "\n"
		for _, p := range paths {
			s += "import _ \"" + Module + "/" + p + "\"\n"
		}
		return s
	}
	tests := []struct {
		name, file, body string
		want             string // violation prefix; "" for none
	}{
		{"wire format", "devices/sdk/a.go", imp("sdk", "devices/envelope", "devices/mqttwire"), ""},
		{"own subpackage", "devices/sdk/a.go", imp("sdk", "devices/sdk/mqtt"), ""},
		{"subpackage to parent", "devices/sdk/mqtt/m.go", imp("mqtt", "devices/sdk", "devices/mqttwire"), ""},
		{"test integrates", "devices/sdk/a_test.go", imp("sdk", "devices", "server", "internal/testdb"), ""},
		{"server side", "devices/sdk/a.go", imp("sdk", "devices"), "devices/sdk/a.go:2: devices/sdk is a leaf and may not import " + Module + "/devices "},
		{"sibling", "devices/sdk/mqtt/m.go", imp("mqtt", "devices/mqtt"), "devices/sdk/mqtt/m.go:2: devices/sdk is a leaf"},
		{"internal", "devices/sdk/a.go", imp("sdk", "internal/every"), "devices/sdk/a.go:2: devices/sdk is a leaf"},
		{"allowed area", "devices/sdk/a.go", imp("sdk", "keys"), "devices/sdk/a.go:2: devices/sdk is a leaf"},
		{"wire subpackage", "devices/sdk/a.go", imp("sdk", "devices/envelope/x"), "devices/sdk/a.go:2: devices/sdk is a leaf"},
		{"wire format imports ours", "devices/mqttwire/w.go", imp("mqttwire", "devices/envelope"), "devices/mqttwire/w.go:2: devices/mqttwire is a leaf"},
		{"envelope imports internal", "devices/envelope/e.go", imp("envelope", "internal/every"), "devices/envelope/e.go:2: devices/envelope is a leaf"},
		{"not a leaf", "devices/mqtt/i.go", imp("mqtt", "devices", "devices/sdk/mqtt", "internal/every"), ""},
		{"prefix is not a subtree", "devices/sdkx/a.go", imp("sdkx", "devices"), ""},
	}
	for _, tt := range tests {
		root := t.TempDir()
		for name, body := range map[string]string{"go.mod": "module " + Module + "\n", tt.file: tt.body} {
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
		switch {
		case tt.want == "" && len(vs) != 0:
			t.Errorf("%s: Check(%s) = %v, want no violation", tt.name, tt.file, vs)
		case tt.want != "" && (len(vs) != 1 || !strings.HasPrefix(vs[0].String(), tt.want)):
			t.Errorf("%s: Check(%s) = %v, want one violation %q…", tt.name, tt.file, vs, tt.want)
		}
	}
}
