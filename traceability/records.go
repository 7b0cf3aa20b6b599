package traceability

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// RiskIDPattern is the form of a risk id.
var RiskIDPattern = regexp.MustCompile(`^RISK-[0-9]{3}$`)

// Risk is one entry of the ISO 14971 risk file (qms/risks/<area>.yaml; format in that
// folder's README.md): a hazard, how it leads to harm, the estimate of the risk before and
// after control, and the requirements that are its risk-control measures.
type Risk struct {
	ID        string `yaml:"id"`
	Title     string `yaml:"title"`
	Hazard    string `yaml:"hazard"`
	Sequence  string `yaml:"sequence"`  // the foreseeable sequence of events
	Situation string `yaml:"situation"` // the hazardous situation
	Harm      string `yaml:"harm"`
	// Severity of the harm, a name from the policy's severity scale.
	Severity string `yaml:"severity"`
	// ProbabilityBefore and ProbabilityAfter are the probability of the harm before and
	// after the risk controls, names from the policy's probability scale.
	ProbabilityBefore string `yaml:"probability_before"`
	ProbabilityAfter  string `yaml:"probability_after"`
	// SeverityAfter is the severity after control when a control reduces it; default Severity.
	SeverityAfter string `yaml:"severity_after"`
	// Controls are the ids of the requirements that are its risk-control measures.
	Controls []string `yaml:"controls"`
	// Residual explains the residual risk; required when the policy rates it ALARP (the
	// benefit-risk argument of ISO 14971 §7.4).
	Residual string `yaml:"residual"`
	File     string `yaml:"-"`
}

// SeverityAfterControl is SeverityAfter, or Severity when it is empty.
func (r Risk) SeverityAfterControl() string {
	if r.SeverityAfter != "" {
		return r.SeverityAfter
	}
	return r.Severity
}

type riskFile struct {
	Area  string `yaml:"area"`
	Risks []Risk `yaml:"risks"`
}

// Level is one step of a severity or probability scale.
type Level struct {
	Name    string `yaml:"name"`
	Meaning string `yaml:"meaning"`
}

// Acceptability of a risk under the policy.
type Acceptability string

// The three acceptability regions of the policy's matrix.
const (
	Acceptable   Acceptability = "acceptable"   // A: no further action needed
	ALARP        Acceptability = "alarp"        // R: reduced as far as possible; acceptable with a benefit-risk justification
	Unacceptable Acceptability = "unacceptable" // U: must be reduced further
)

// Policy is the risk acceptability policy (qms/risk-policy.yaml): the severity and
// probability scales, least to most, and the acceptance matrix.
type Policy struct {
	Severity    []Level `yaml:"severity"`
	Probability []Level `yaml:"probability"`
	// Matrix maps a severity name to one code per probability level, in the probability
	// scale's order: A (acceptable), R (ALARP), U (unacceptable).
	Matrix map[string][]string `yaml:"matrix"`
}

// LoadPolicy reads and checks the risk policy file.
func LoadPolicy(file string) (*Policy, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var p Policy
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalidRequirements, filepath.Base(file), err)
	}
	var problems []string
	if len(p.Severity) < 2 || len(p.Probability) < 2 {
		problems = append(problems, "severity and probability need at least two levels each")
	}
	for _, s := range p.Severity {
		row, ok := p.Matrix[s.Name]
		if !ok {
			problems = append(problems, fmt.Sprintf("matrix has no row for severity %q", s.Name))
			continue
		}
		if len(row) != len(p.Probability) {
			problems = append(problems, fmt.Sprintf("matrix row %q has %d entries, want %d (one per probability level)", s.Name, len(row), len(p.Probability)))
		}
		for _, c := range row {
			if c != "A" && c != "R" && c != "U" {
				problems = append(problems, fmt.Sprintf("matrix row %q: %q, want A, R or U", s.Name, c))
			}
		}
	}
	if len(p.Matrix) != len(p.Severity) {
		problems = append(problems, "matrix has rows for severities not in the scale")
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%w: %s:\n  %s", ErrInvalidRequirements, filepath.Base(file), strings.Join(problems, "\n  "))
	}
	return &p, nil
}

func levelIndex(ls []Level, name string) int {
	for i, l := range ls {
		if l.Name == name {
			return i
		}
	}
	return -1
}

// Rate returns the acceptability of a severity and a probability, or an error for names not
// in the scales.
func (p *Policy) Rate(severity, probability string) (Acceptability, error) {
	si, pi := levelIndex(p.Severity, severity), levelIndex(p.Probability, probability)
	if si < 0 {
		return "", fmt.Errorf("severity %q is not in the policy's scale", severity)
	}
	if pi < 0 {
		return "", fmt.Errorf("probability %q is not in the policy's scale", probability)
	}
	switch p.Matrix[severity][pi] {
	case "A":
		return Acceptable, nil
	case "R":
		return ALARP, nil
	}
	return Unacceptable, nil
}

// LoadRisks reads every *.yaml file in dir and checks each risk (fields present, id form,
// scale names known to the policy, at least one control, ids unique). All problems found are
// reported together. It does not check that controls exist: Build reports that.
func LoadRisks(dir string, policy *Policy) ([]Risk, error) {
	var all []Risk
	seen := map[string]string{}
	err := loadAreaFiles(dir, func(rf *riskFile) string { return rf.Area }, func(base string, rf *riskFile) (problems []string) {
		for _, r := range rf.Risks {
			r.File = base
			where := fmt.Sprintf("%s: %s", base, r.ID)
			if !RiskIDPattern.MatchString(r.ID) {
				problems = append(problems, fmt.Sprintf("%s: id does not match %s", where, RiskIDPattern))
			}
			if prev, dup := seen[r.ID]; dup {
				problems = append(problems, fmt.Sprintf("%s: id also defined in %s", where, prev))
			}
			seen[r.ID] = base
			for _, fv := range []struct{ field, v string }{{"title", r.Title}, {"hazard", r.Hazard}, {"sequence", r.Sequence},
				{"situation", r.Situation}, {"harm", r.Harm}} {
				if strings.TrimSpace(fv.v) == "" {
					problems = append(problems, fmt.Sprintf("%s: %s is empty", where, fv.field))
				}
			}
			if policy != nil {
				for _, sp := range []struct{ sev, prob, when string }{{r.Severity, r.ProbabilityBefore, "before control"},
					{r.SeverityAfterControl(), r.ProbabilityAfter, "after control"}} {
					if _, err := policy.Rate(sp.sev, sp.prob); err != nil {
						problems = append(problems, fmt.Sprintf("%s: %s: %v", where, sp.when, err))
					}
				}
			}
			if len(r.Controls) == 0 {
				problems = append(problems, fmt.Sprintf("%s: no controls (requirement ids)", where))
			}
			for _, c := range r.Controls {
				if !IDPattern.MatchString(c) {
					problems = append(problems, fmt.Sprintf("%s: control %q is not a requirement id", where, c))
				}
			}
			all = append(all, r)
		}
		return problems
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
	return all, nil
}

// Item is one software item (qms/items.yaml): a part of Vigil made of Go packages, with its
// IEC 62304 safety class. The requirements it implements are those whose Item names it.
type Item struct {
	ID          string `yaml:"id"`
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	SafetyClass string `yaml:"safety_class"`
	// Packages are the module-relative directories of its Go packages; "x/..." means x and
	// everything below it.
	Packages []string `yaml:"packages"`
	// Rationale says why the item has its class (IEC 62304 §4.3).
	Rationale string `yaml:"rationale"`
}

// Items is the content of qms/items.yaml.
type Items struct {
	System string `yaml:"system"`
	Items  []Item `yaml:"items"`
}

// SystemClass is the highest class of the items: the class of the software system.
func (it *Items) SystemClass() string {
	c := "A"
	for _, i := range it.Items {
		if i.SafetyClass > c {
			c = i.SafetyClass
		}
	}
	return c
}

// ItemOf returns the item whose packages include the module-relative directory dir ("" when
// none does). The most specific pattern wins.
func (it *Items) ItemOf(dir string) string {
	best, bestLen := "", -1
	for _, i := range it.Items {
		for _, p := range i.Packages {
			prefix, tree := strings.CutSuffix(p, "/...")
			if dir == prefix || (tree && strings.HasPrefix(dir, prefix+"/")) {
				if len(prefix) > bestLen {
					best, bestLen = i.ID, len(prefix)
				}
			}
		}
	}
	return best
}

// LoadItems reads and checks qms/items.yaml.
func LoadItems(file string) (*Items, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var it Items
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&it); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalidRequirements, filepath.Base(file), err)
	}
	var problems []string
	seen := map[string]bool{}
	for _, i := range it.Items {
		if !ItemPattern.MatchString(i.ID) {
			problems = append(problems, fmt.Sprintf("item %q: id does not match %s", i.ID, ItemPattern))
		}
		if seen[i.ID] {
			problems = append(problems, fmt.Sprintf("item %q: defined twice", i.ID))
		}
		seen[i.ID] = true
		switch i.SafetyClass {
		case "A", "B", "C":
		default:
			problems = append(problems, fmt.Sprintf("item %q: safety_class %q, want A, B or C", i.ID, i.SafetyClass))
		}
		if strings.TrimSpace(i.Name) == "" || strings.TrimSpace(i.Description) == "" || strings.TrimSpace(i.Rationale) == "" {
			problems = append(problems, fmt.Sprintf("item %q: name, description and rationale are required", i.ID))
		}
		if len(i.Packages) == 0 {
			problems = append(problems, fmt.Sprintf("item %q: no packages", i.ID))
		}
	}
	if len(it.Items) == 0 {
		problems = append(problems, "no items")
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%w: %s:\n  %s", ErrInvalidRequirements, filepath.Base(file), strings.Join(problems, "\n  "))
	}
	return &it, nil
}
