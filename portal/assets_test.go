package portal_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigilhealth/vigil/portal"
)

// npmCacheDir is npm's cache (its content-addressed store holds every tarball npm ci
// verified): $npm_config_cache, else `npm config get cache`, else ~/.npm.
func npmCacheDir(t *testing.T) string {
	if d := os.Getenv("npm_config_cache"); d != "" {
		return d
	}
	if out, err := exec.Command("npm", "config", "get", "cache").Output(); err == nil {
		if d := strings.TrimSpace(string(out)); d != "" {
			return d
		}
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".npm")
}

// requireTools reports whether the test must not skip for lack of the npm tarballs or the
// browser (make unit sets these).
func requireTools() bool {
	return os.Getenv("VIGIL_REQUIRE_BROWSER") == "1" || os.Getenv("VIGIL_REQUIRE_INTEROP_TOOLS") == "1"
}

type lockFile struct {
	Packages map[string]struct {
		Version   string `json:"version"`
		Integrity string `json:"integrity"`
	} `json:"packages"`
}

type pkgJSON struct {
	Dependencies map[string]string `json:"dependencies"`
}

// The committed front-end files are exactly the files of the npm packages pinned in
// package-lock.json: each tarball is found in npm's content-addressed cache by the lock's
// sha512 integrity, its hash is checked, and the file is compared byte for byte with the one
// embedded in the binary.
// Verifies: REQ-POR-001
func TestVendoredAssets(t *testing.T) {
	t.Parallel()
	var lock lockFile
	readJSON(t, "web/package-lock.json", &lock)
	var pj pkgJSON
	readJSON(t, "web/package.json", &pj)
	for name, want := range pj.Dependencies {
		got := lock.Packages["node_modules/"+name].Version
		if strings.ContainsAny(want, "^~<>*x ") || got != want {
			t.Errorf("package.json pins %s@%s, lock has %q: pin an exact version and npm install", name, want, got)
		}
	}
	cache := npmCacheDir(t)
	for _, v := range portal.Vendored {
		t.Run(v.File, func(t *testing.T) {
			entry, ok := lock.Packages["node_modules/"+v.Package]
			if !ok {
				t.Fatalf("package-lock.json has no %s", v.Package)
			}
			if _, ok := pj.Dependencies[v.Package]; !ok {
				t.Fatalf("package.json does not depend on %s", v.Package)
			}
			digest, ok := strings.CutPrefix(entry.Integrity, "sha512-")
			if !ok {
				t.Fatalf("integrity of %s is %q, want sha512", v.Package, entry.Integrity)
			}
			sum, err := base64.StdEncoding.DecodeString(digest)
			if err != nil {
				t.Fatal(err)
			}
			h := hex.EncodeToString(sum)
			tgz, err := os.ReadFile(filepath.Join(cache, "_cacache", "content-v2", "sha512", h[:2], h[2:4], h[4:]))
			if errors.Is(err, fs.ErrNotExist) && !requireTools() {
				t.Skipf("the tarball of %s@%s is not in npm's cache (%s): run make tools", v.Package, entry.Version, cache)
			}
			if err != nil {
				t.Fatalf("tarball of %s@%s: %v (make tools runs npm ci in portal/web)", v.Package, entry.Version, err)
			}
			if got := sha512.Sum512(tgz); !bytes.Equal(got[:], sum) {
				t.Fatalf("the cached tarball of %s does not match the lock's integrity", v.Package)
			}
			want := fileInTarball(t, tgz, "package/"+v.Path)
			got, err := os.ReadFile(filepath.Join("web", "vendor", v.File))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("web/vendor/%s differs from %s@%s %s: run make portal-assets and commit", v.File, v.Package, entry.Version, v.Path)
			}
		})
	}
	// Nothing else is in web/vendor.
	ents, err := os.ReadDir("web/vendor")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		found := false
		for _, v := range portal.Vendored {
			found = found || v.File == e.Name()
		}
		if !found {
			t.Errorf("web/vendor/%s is not a vendored file of portal.Vendored", e.Name())
		}
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func fileInTarball(t *testing.T, tgz []byte, name string) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			t.Fatalf("%s is not in the tarball", name)
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == name {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}

// Every asset is served under its content-hashed URL with a year of immutable caching, the
// right type and nosniff; the unhashed name and a stale hash are not found.
// Verifies: REQ-POR-002
func TestAssetsServedHashedAndImmutable(t *testing.T) {
	t.Parallel()
	e := newStack(t)
	for _, a := range e.portal.Assets().All() {
		res := e.get(t, a.URL, nil)
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("GET %s = %d", a.URL, res.StatusCode)
		}
		if got := res.Header.Get("Cache-Control"); got != "public, max-age=31536000, immutable" {
			t.Errorf("GET %s Cache-Control = %q", a.URL, got)
		}
		if got := res.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("GET %s X-Content-Type-Options = %q", a.URL, got)
		}
		wantType := map[string]string{".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}[filepath.Ext(a.Name)]
		if got := res.Header.Get("Content-Type"); got != wantType {
			t.Errorf("GET %s Content-Type = %q, want %q", a.URL, got, wantType)
		}
		si := sha512.Sum384(body)
		if want := "sha384-" + base64.StdEncoding.EncodeToString(si[:]); a.Integrity != want {
			t.Errorf("%s integrity = %q, the body's is %q", a.Name, a.Integrity, want)
		}
		if !strings.Contains(a.URL, ".") || !strings.HasPrefix(a.URL, portal.AssetPrefix) {
			t.Errorf("%s URL = %q, want a hashed name under %s", a.Name, a.URL, portal.AssetPrefix)
		}
		for _, bad := range []string{portal.AssetPrefix + a.Name, strings.Replace(a.URL, ".", ".0000", 1)} {
			res := e.get(t, bad, nil)
			res.Body.Close()
			if res.StatusCode != http.StatusNotFound {
				t.Errorf("GET %s = %d, want 404", bad, res.StatusCode)
			}
		}
	}
}
