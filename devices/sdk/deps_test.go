package sdk_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/vigilhealth/vigil/internal/archtest"
)

// forbiddenDeps are module paths whose packages must never be linked into a device: the
// server's database driver, transparency log and HTTP framework.
var forbiddenDeps = []string{
	"github.com/jackc/pgx",
	"github.com/google/trillian",
	"github.com/labstack/echo",
}

// sdkTree is the import path of the SDK; it and its subpackages are what device makers link.
const sdkTree = archtest.Module + "/devices/sdk"

// listedPackage is the part of `go list -json` output the check reads.
type listedPackage struct {
	ImportPath string
	Standard   bool
}

// closureViolations returns why each package of an SDK dependency closure may not be in it:
// a forbidden module, or a package of Vigil's outside the SDK's tree and its leaf
// allow-list (internal/archtest.Leaves["devices/sdk"]).
func closureViolations(pkgs []listedPackage) []string {
	var out []string
	for _, p := range pkgs {
		if p.Standard {
			continue
		}
		for _, f := range forbiddenDeps {
			if p.ImportPath == f || strings.HasPrefix(p.ImportPath, f+"/") {
				out = append(out, p.ImportPath+": "+f+" is server-side")
			}
		}
		own, ours := strings.CutPrefix(p.ImportPath, archtest.Module+"/")
		if !ours || p.ImportPath == sdkTree || strings.HasPrefix(p.ImportPath, sdkTree+"/") || slices.Contains(archtest.Leaves["devices/sdk"], own) {
			continue
		}
		out = append(out, p.ImportPath+": not in the SDK's allow-list of leaf packages")
	}
	return out
}

// goTool is the go command of the toolchain running the test.
func goTool(t *testing.T) string {
	if root := runtime.GOROOT(); root != "" {
		p := filepath.Join(root, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	p, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go command not found: %v", err)
	}
	return p
}

// What a device links with the SDK (HTTP and MQTT) is small: `go list -deps` of
// ./devices/sdk/... holds neither pgx, Trillian nor echo, and of Vigil's own packages only
// the SDK and the wire-format leaves it is allowed.
// Verifies: REQ-DEV-114
func TestSDKDependencyClosure(t *testing.T) {
	cmd := exec.Command(goTool(t), "list", "-deps", "-json=ImportPath,Standard", sdkTree+"/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s/...: %v\n%s", sdkTree, err, stderr.Bytes())
	}
	var pkgs []listedPackage
	for dec := json.NewDecoder(bytes.NewReader(out)); ; {
		var p listedPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	// The closure was really listed: it holds the SDK, its MQTT transport and the envelope.
	for _, want := range []string{sdkTree, sdkTree + "/mqtt", archtest.Module + "/devices/envelope"} {
		if !slices.ContainsFunc(pkgs, func(p listedPackage) bool { return p.ImportPath == want }) {
			t.Errorf("go list -deps %s/... lists %d packages without %s", sdkTree, len(pkgs), want)
		}
	}
	for _, v := range closureViolations(pkgs) {
		t.Errorf("SDK dependency closure: %s", v)
	}
}

// The closure check refuses each kind of package a device must not link.
// Verifies: REQ-DEV-114
func TestClosureViolations(t *testing.T) {
	m := archtest.Module + "/"
	tests := []struct {
		pkg  listedPackage
		want bool // a violation
	}{
		{listedPackage{ImportPath: "net/http", Standard: true}, false},
		{listedPackage{ImportPath: "github.com/fxamacker/cbor/v2"}, false},
		{listedPackage{ImportPath: "github.com/eclipse/paho.golang/paho"}, false},
		{listedPackage{ImportPath: m + "devices/sdk"}, false},
		{listedPackage{ImportPath: m + "devices/sdk/mqtt"}, false},
		{listedPackage{ImportPath: m + "devices/envelope"}, false},
		{listedPackage{ImportPath: m + "devices/mqttwire"}, false},
		{listedPackage{ImportPath: "github.com/jackc/pgx/v5"}, true},
		{listedPackage{ImportPath: "github.com/jackc/pgx/v5/pgxpool"}, true},
		{listedPackage{ImportPath: "github.com/google/trillian"}, true},
		{listedPackage{ImportPath: "github.com/google/trillian/storage/postgresql"}, true},
		{listedPackage{ImportPath: "github.com/labstack/echo/v4"}, true},
		{listedPackage{ImportPath: m + "devices"}, true},
		{listedPackage{ImportPath: m + "devices/mqtt"}, true},
		{listedPackage{ImportPath: m + "devices/sdkx"}, true},
		{listedPackage{ImportPath: m + "devices/envelope/x"}, true},
		{listedPackage{ImportPath: m + "audit"}, true},
		{listedPackage{ImportPath: m + "internal/every"}, true},
	}
	for _, tt := range tests {
		got := closureViolations([]listedPackage{tt.pkg})
		if (len(got) > 0) != tt.want {
			t.Errorf("closureViolations(%s) = %q, want violation %v", tt.pkg.ImportPath, got, tt.want)
		}
	}
}
