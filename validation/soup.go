package validation

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/google/licensecheck"
	"go.yaml.in/yaml/v3"
	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
)

// Component is one item of SOUP (software of unknown provenance, IEC 62304 §8.1.2): a Go
// module linked into the binary or an npm package a shipped lockfile names.
type Component struct {
	Ecosystem string   `json:"ecosystem"` // "go" or "npm"
	Name      string   `json:"name"`
	Version   string   `json:"version"`
	Replace   string   `json:"replace,omitempty"` // path@version it is replaced by
	Sum       string   `json:"sum,omitempty"`     // go.sum hash (h1:…)
	Direct    bool     `json:"direct"`            // required directly by go.mod / package.json
	Licence   string   `json:"licence"`           // SPDX ids, " AND " between several; "unknown" when none was recognised
	Purpose   string   `json:"purpose,omitempty"` // from qms/soup-purpose.yaml (direct dependencies)
	Vulns     []string `json:"vulnerabilities"`   // known vulnerability ids (level in parentheses)
}

// PURL is the component's package URL.
func (c Component) PURL() string {
	if c.Ecosystem == "npm" {
		return "pkg:npm/" + strings.ReplaceAll(c.Name, "@", "%40") + "@" + c.Version
	}
	return "pkg:golang/" + c.Name + "@" + c.Version
}

// Inventory is the SOUP of one build: the main module and every component.
type Inventory struct {
	Main       string      `json:"main"` // main module path
	GoVersion  string      `json:"go_version"`
	Source     string      `json:"source"` // the binary read, or "go list -deps <pkg>"
	Components []Component `json:"components"`
}

// Purposes maps a direct dependency (module path or npm package) to why Vigil uses it
// (qms/soup-purpose.yaml).
type Purposes map[string]string

// LoadPurposes reads qms/soup-purpose.yaml: `purposes:` mapping each direct dependency to
// a short sentence.
func LoadPurposes(file string) (Purposes, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Purposes Purposes `yaml:"purposes"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(file), err)
	}
	return doc.Purposes, nil
}

type goModule struct{ Path, Version, Sum, ReplacePath, ReplaceVersion string }

// modulesOfBinary reads the modules linked into a Go binary from its build information.
func modulesOfBinary(bin string) (main, goVersion string, mods []goModule, err error) {
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		return "", "", nil, fmt.Errorf("read build information of %s: %w", bin, err)
	}
	for _, d := range bi.Deps {
		m := goModule{Path: d.Path, Version: d.Version, Sum: d.Sum}
		if d.Replace != nil {
			m.ReplacePath, m.ReplaceVersion, m.Sum = d.Replace.Path, d.Replace.Version, d.Replace.Sum
		}
		mods = append(mods, m)
	}
	return bi.Main.Path, bi.GoVersion, mods, nil
}

// modulesOfPackage lists the modules a main package links, as `go list -deps` sees them.
func modulesOfPackage(ctx context.Context, root, pkg string) (main, goVersion string, mods []goModule, err error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-deps", "-f",
		`{{with .Module}}{{if .Main}}main {{.Path}}{{else}}dep {{.Path}} {{.Version}}{{with .Replace}} {{.Path}} {{.Version}}{{end}}{{end}}{{end}}`, pkg)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", "", nil, fmt.Errorf("go list -deps %s: %w: %s", pkg, err, strings.TrimSpace(stderr.String()))
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "main":
			main = f[1]
		case len(f) >= 3 && f[0] == "dep" && !seen[f[1]]:
			seen[f[1]] = true
			m := goModule{Path: f[1], Version: f[2]}
			if len(f) >= 5 {
				m.ReplacePath, m.ReplaceVersion = f[3], f[4]
			}
			mods = append(mods, m)
		}
	}
	if v, err := exec.CommandContext(ctx, "go", "env", "GOVERSION").Output(); err == nil {
		goVersion = strings.TrimSpace(string(v))
	}
	sums, _ := os.ReadFile(filepath.Join(root, "go.sum"))
	for i := range mods {
		want := mods[i].Path + " " + mods[i].Version + " "
		for _, l := range strings.Split(string(sums), "\n") {
			if strings.HasPrefix(l, want) {
				mods[i].Sum = strings.TrimPrefix(l, want)
			}
		}
	}
	sort.Slice(mods, func(i, j int) bool { return mods[i].Path < mods[j].Path })
	return main, goVersion, mods, nil
}

// moduleDir finds a module's source in the module cache, downloading it if it is missing.
func moduleDir(ctx context.Context, root, cache, path, version string) (string, error) {
	ep, err1 := module.EscapePath(path)
	ev, err2 := module.EscapeVersion(version)
	if err1 == nil && err2 == nil && cache != "" {
		d := filepath.Join(cache, ep+"@"+ev)
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			return d, nil
		}
	}
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", path+"@"+version)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download %s@%s: %w", path, version, err)
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(out, &info); err != nil || info.Dir == "" {
		return "", fmt.Errorf("go mod download %s@%s: no folder (%s)", path, version, info.Error)
	}
	return info.Dir, nil
}

// DetectLicence names the licences of the licence files at the top of dir (LICENSE,
// LICENCE, COPYING, …) as SPDX ids joined by " AND ", or "unknown".
func DetectLicence(dir string) string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "unknown"
	}
	ids := map[string]bool{}
	for _, e := range entries {
		n := strings.ToUpper(e.Name())
		if e.IsDir() || !(strings.HasPrefix(n, "LICENSE") || strings.HasPrefix(n, "LICENCE") || strings.HasPrefix(n, "COPYING")) {
			continue
		}
		text, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		cov := licensecheck.Scan(text)
		for _, m := range cov.Match {
			if !m.IsURL {
				ids[m.ID] = true
			}
		}
	}
	if len(ids) == 0 {
		return "unknown"
	}
	out := make([]string, 0, len(ids))
	for id := range ids {
		out = append(out, id)
	}
	sort.Strings(out)
	return strings.Join(out, " AND ")
}

// BuildInventory lists the SOUP of the binary (cfg.Binary) or, with no binary, of the
// modules cfg.MainPackage links, with licences from the module cache and purposes from
// qms/soup-purpose.yaml, plus the npm packages of every package-lock.json in the repository
// (dev dependencies left out). Vulnerabilities are added by the vulnerabilities gate.
func BuildInventory(ctx context.Context, cfg Config) (*Inventory, error) {
	var (
		main, gov string
		mods      []goModule
		err       error
		inv       Inventory
	)
	if cfg.Binary != "" {
		main, gov, mods, err = modulesOfBinary(cfg.Binary)
		inv.Source = cfg.Binary
	} else {
		main, gov, mods, err = modulesOfPackage(ctx, cfg.Root, cfg.MainPackage)
		inv.Source = "go list -deps " + cfg.MainPackage
	}
	if err != nil {
		return nil, err
	}
	inv.Main, inv.GoVersion = main, gov
	purposes, err := LoadPurposes(filepath.Join(cfg.QMS, "soup-purpose.yaml"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	direct := map[string]bool{}
	if raw, err := os.ReadFile(filepath.Join(cfg.Root, "go.mod")); err == nil {
		if mf, err := modfile.ParseLax("go.mod", raw, nil); err == nil {
			for _, r := range mf.Require {
				if !r.Indirect {
					direct[r.Mod.Path] = true
				}
			}
		}
	}
	cache := ""
	if out, err := exec.CommandContext(ctx, "go", "env", "GOMODCACHE").Output(); err == nil {
		cache = strings.TrimSpace(string(out))
	}
	for _, m := range mods {
		c := Component{Ecosystem: "go", Name: m.Path, Version: m.Version, Sum: m.Sum, Direct: direct[m.Path], Purpose: purposes[m.Path], Vulns: []string{}}
		srcPath, srcVersion := m.Path, m.Version
		if m.ReplacePath != "" {
			c.Replace = m.ReplacePath + "@" + m.ReplaceVersion
			srcPath, srcVersion = m.ReplacePath, m.ReplaceVersion
		}
		c.Licence = "unknown"
		if strings.HasPrefix(srcPath, ".") || strings.HasPrefix(srcPath, "/") {
			c.Licence = DetectLicence(filepath.Join(cfg.Root, srcPath))
		} else if dir, err := moduleDir(ctx, cfg.Root, cache, srcPath, srcVersion); err == nil {
			c.Licence = DetectLicence(dir)
		}
		inv.Components = append(inv.Components, c)
	}
	npm, err := npmComponents(cfg.Root, purposes)
	if err != nil {
		return nil, err
	}
	inv.Components = append(inv.Components, npm...)
	return &inv, nil
}

// npmComponents reads every package-lock.json (lockfile v2/v3) of the repository outside
// node_modules, bin, testdata and hidden folders, and lists the packages that are not dev
// dependencies.
func npmComponents(root string, purposes Purposes) ([]Component, error) {
	var out []Component
	seen := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			n := d.Name()
			if path != root && (n == "node_modules" || n == "bin" || n == "testdata" || n == "vendor" || strings.HasPrefix(n, ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Name() != "package-lock.json" {
			return nil
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var lock struct {
			Packages map[string]struct {
				Name         string            `json:"name"`
				Version      string            `json:"version"`
				License      any               `json:"license"`
				Dev          bool              `json:"dev"`
				Dependencies map[string]string `json:"dependencies"`
			} `json:"packages"`
		}
		if err := json.Unmarshal(raw, &lock); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		direct := map[string]bool{}
		for name := range lock.Packages[""].Dependencies {
			direct[name] = true
		}
		for key, p := range lock.Packages {
			if key == "" || p.Dev {
				continue
			}
			name := key[strings.LastIndex(key, "node_modules/")+len("node_modules/"):]
			if seen[name+"@"+p.Version] {
				continue
			}
			seen[name+"@"+p.Version] = true
			lic := "unknown"
			if s, ok := p.License.(string); ok && s != "" {
				lic = s
			}
			out = append(out, Component{Ecosystem: "npm", Name: name, Version: p.Version, Direct: direct[name], Licence: lic,
				Purpose: purposes[name], Vulns: []string{}})
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}
