package qms

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/vigilhealth/vigil/traceability"
)

// Anomaly is one known anomaly of this version (qms/anomalies.yaml, IEC 62304 §5.8.2–5.8.3).
type Anomaly struct {
	ID          string   `yaml:"id" json:"id"`
	Title       string   `yaml:"title" json:"title"`
	Description string   `yaml:"description" json:"description"`
	Evaluation  string   `yaml:"evaluation" json:"evaluation"`
	Risks       []string `yaml:"risks" json:"risks"`
	Status      string   `yaml:"status" json:"status"` // open or fixed
}

// Safeguard is one HIPAA §164.312 technical safeguard and its configuration evidence
// (qms/hipaa-safeguards.yaml).
type Safeguard struct {
	Clause        string `yaml:"clause"` // e.g. "164.312(b)"
	Title         string `yaml:"title"`
	Kind          string `yaml:"kind"` // standard, required or addressable
	Configuration string `yaml:"configuration"`
}

// ErrInvalidRecords is wrapped for malformed quality records.
var ErrInvalidRecords = errors.New("invalid quality records")

var anomalyIDRE = regexp.MustCompile(`^ANOM-[0-9]{3}$`)

func decodeStrict(file string, v any) error {
	raw, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInvalidRecords, filepath.Base(file), err)
	}
	return nil
}

// LoadAnomalies reads and checks qms/anomalies.yaml.
func LoadAnomalies(file string) ([]Anomaly, error) {
	var doc struct {
		Anomalies []Anomaly `yaml:"anomalies"`
	}
	if err := decodeStrict(file, &doc); err != nil {
		return nil, err
	}
	var problems []string
	seen := map[string]bool{}
	for _, a := range doc.Anomalies {
		if !anomalyIDRE.MatchString(a.ID) || seen[a.ID] {
			problems = append(problems, fmt.Sprintf("%q: id malformed or repeated", a.ID))
		}
		seen[a.ID] = true
		if strings.TrimSpace(a.Title) == "" || strings.TrimSpace(a.Description) == "" || strings.TrimSpace(a.Evaluation) == "" {
			problems = append(problems, fmt.Sprintf("%s: title, description and evaluation are required", a.ID))
		}
		if a.Status != "open" && a.Status != "fixed" {
			problems = append(problems, fmt.Sprintf("%s: status %q, want open or fixed", a.ID, a.Status))
		}
		for _, r := range a.Risks {
			if !traceability.RiskIDPattern.MatchString(r) {
				problems = append(problems, fmt.Sprintf("%s: %q is not a risk id", a.ID, r))
			}
		}
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%w: anomalies.yaml:\n  %s", ErrInvalidRecords, strings.Join(problems, "\n  "))
	}
	return doc.Anomalies, nil
}

// LoadSafeguards reads qms/hipaa-safeguards.yaml.
func LoadSafeguards(file string) ([]Safeguard, error) {
	var doc struct {
		Safeguards []Safeguard `yaml:"safeguards"`
	}
	if err := decodeStrict(file, &doc); err != nil {
		return nil, err
	}
	for _, s := range doc.Safeguards {
		if !strings.HasPrefix(s.Clause, "164.312(") || s.Title == "" || s.Configuration == "" {
			return nil, fmt.Errorf("%w: hipaa-safeguards.yaml: %q needs a 164.312 clause, a title and its configuration", ErrInvalidRecords, s.Clause)
		}
		switch s.Kind {
		case "standard", "required", "addressable":
		default:
			return nil, fmt.Errorf("%w: hipaa-safeguards.yaml: %s: kind %q", ErrInvalidRecords, s.Clause, s.Kind)
		}
	}
	return doc.Safeguards, nil
}

// Package is one Go package of the module and the packages it imports.
type Package struct {
	Dir     string   `json:"dir"` // module-relative
	Item    string   `json:"item"`
	Imports []string `json:"imports"`
}

// Interface is a dependency of one software item on another (or on SOUP), from the package
// graph: which packages of From import which of To.
type Interface struct {
	From  string   `json:"from"`
	To    string   `json:"to"`
	Via   []string `json:"via"` // "from/pkg -> to/pkg"
	Kind  string   `json:"kind"`
	Count int      `json:"count"`
}

// Architecture is the item graph of the module (IEC 62304 §5.3), generated from `go list`.
type Architecture struct {
	Packages   []Package   `json:"packages"`
	Interfaces []Interface `json:"interfaces"`
	Unplaced   []string    `json:"unplaced"` // packages no item claims
}

// BuildArchitecture lists the module's non-test packages with `go list` and groups their
// imports by software item; imports of other modules become SOUP interfaces (by module).
func BuildArchitecture(ctx context.Context, root string, items *traceability.Items, soup []string) (*Architecture, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-json=ImportPath,Imports,Module,Standard", "./...")
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	type listed struct {
		ImportPath string
		Imports    []string
		Module     *struct{ Path string }
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	var pkgs []listed
	for dec.More() {
		var p listed
		if err := dec.Decode(&p); err != nil {
			return nil, err
		}
		pkgs = append(pkgs, p)
	}
	arch := &Architecture{}
	if len(pkgs) == 0 {
		return arch, nil
	}
	mod := ""
	if pkgs[0].Module != nil {
		mod = pkgs[0].Module.Path
	}
	rel := func(ip string) string {
		if ip == mod {
			return "."
		}
		return strings.TrimPrefix(ip, mod+"/")
	}
	ifs := map[[2]string]*Interface{}
	for _, p := range pkgs {
		dir := rel(p.ImportPath)
		item := items.ItemOf(dir)
		if item == "" {
			arch.Unplaced = append(arch.Unplaced, dir)
		}
		arch.Packages = append(arch.Packages, Package{Dir: dir, Item: item, Imports: p.Imports})
		for _, imp := range p.Imports {
			var to, kind, target string
			switch {
			case imp == mod || strings.HasPrefix(imp, mod+"/"):
				target = rel(imp)
				to, kind = items.ItemOf(target), "item"
				if to == item || to == "" {
					continue
				}
			case strings.Contains(strings.SplitN(imp, "/", 2)[0], "."):
				for _, m := range soup {
					if (imp == m || strings.HasPrefix(imp, m+"/")) && len(m) > len(to) {
						to = m
					}
				}
				if to == "" {
					continue
				}
				kind, target = "soup", imp
			default:
				continue
			}
			k := [2]string{item, to}
			in := ifs[k]
			if in == nil {
				in = &Interface{From: item, To: to, Kind: kind}
				ifs[k] = in
			}
			in.Count++
			if len(in.Via) < 4 {
				in.Via = append(in.Via, dir+" -> "+target)
			}
		}
	}
	for _, in := range ifs {
		arch.Interfaces = append(arch.Interfaces, *in)
	}
	sort.Slice(arch.Interfaces, func(i, j int) bool {
		a, b := arch.Interfaces[i], arch.Interfaces[j]
		if a.Kind != b.Kind {
			return a.Kind == "item"
		}
		if a.From != b.From {
			return a.From < b.From
		}
		return a.To < b.To
	})
	return arch, nil
}
