package traceability

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Requirement is one entry of a qms/requirements/<area>.yaml file (format in that folder's
// README.md).
type Requirement struct {
	ID           string   `yaml:"id"`
	Title        string   `yaml:"title"`
	Text         string   `yaml:"text"`
	SafetyClass  string   `yaml:"safety_class"`
	Rationale    string   `yaml:"rationale"`
	RiskControls []string `yaml:"risk_controls"`
	// Clauses are the clauses of standards and regulations this requirement answers, each
	// "<standard> <clause>": "IEC 62304 5.2.2", "HIPAA 164.312(b)", "IEC 60601-1-8 6.3"
	// ([ClausePattern]).
	Clauses []string `yaml:"clauses"`
	// Item is the id of the software item (qms/items.yaml) that implements it.
	Item string `yaml:"item"`
	File string `yaml:"-"` // the file it came from
}

type requirementFile struct {
	Area         string        `yaml:"area"`
	Requirements []Requirement `yaml:"requirements"`
}

// ErrInvalidRequirements is wrapped by LoadRequirements for any problem in the files.
var ErrInvalidRequirements = errors.New("invalid requirements")

// IDPattern is the form of a requirement id.
var IDPattern = regexp.MustCompile(`^REQ-[A-Z]+-[0-9]{3}$`)

// ClausePattern is the form of a clause reference: one of the standards Vigil answers, then
// the clause, section or paragraph in that standard's own numbering.
var ClausePattern = regexp.MustCompile(`^(IEC 62304|HIPAA|IEC 60601-1-8|ISO 14971|21 CFR 11|IEC 81001-5-1) [0-9][0-9A-Za-z.()]*$`)

// ItemPattern is the form of a software item id (qms/items.yaml).
var ItemPattern = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)

// LoadRequirements reads every *.yaml file in dir, checks each requirement (fields present,
// id form, safety class, ids unique across files), and returns them sorted by id. All
// problems found are reported together.
func LoadRequirements(dir string) ([]Requirement, error) {
	var all []Requirement
	seen := map[string]string{}
	err := loadAreaFiles(dir, func(rf *requirementFile) string { return rf.Area }, func(base string, rf *requirementFile) (problems []string) {
		for _, r := range rf.Requirements {
			r.File = base
			where := fmt.Sprintf("%s: %s", base, r.ID)
			if !IDPattern.MatchString(r.ID) {
				problems = append(problems, fmt.Sprintf("%s: id does not match %s", where, IDPattern))
			}
			if prev, dup := seen[r.ID]; dup {
				problems = append(problems, fmt.Sprintf("%s: id also defined in %s", where, prev))
			}
			seen[r.ID] = base
			for field, v := range map[string]string{"title": r.Title, "text": r.Text, "rationale": r.Rationale} {
				if strings.TrimSpace(v) == "" {
					problems = append(problems, fmt.Sprintf("%s: %s is empty", where, field))
				}
			}
			switch r.SafetyClass {
			case "A", "B", "C":
			default:
				problems = append(problems, fmt.Sprintf("%s: safety_class %q, want A, B or C", where, r.SafetyClass))
			}
			if len(r.Clauses) == 0 {
				problems = append(problems, fmt.Sprintf("%s: clauses is empty (the standard clauses it answers)", where))
			}
			for _, c := range r.Clauses {
				if !ClausePattern.MatchString(c) {
					problems = append(problems, fmt.Sprintf("%s: clause %q does not match %s", where, c, ClausePattern))
				}
			}
			if !ItemPattern.MatchString(r.Item) {
				problems = append(problems, fmt.Sprintf("%s: item %q does not match %s (an id of qms/items.yaml)", where, r.Item, ItemPattern))
			}
			for _, rc := range r.RiskControls {
				if !RiskIDPattern.MatchString(rc) {
					problems = append(problems, fmt.Sprintf("%s: risk_controls names %q, not a risk id (%s)", where, rc, RiskIDPattern))
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

// loadAreaFiles reads every *.yaml file in dir (a folder of records, one file an area),
// decoding each strictly (unknown fields refused) into a new F, and has check look at each
// decoded file (with its base name). A file that does not decode, or whose area is not its
// name, is a problem too. All problems found are reported together, sorted, as
// ErrInvalidRequirements; a folder with no *.yaml file is one.
func loadAreaFiles[F any](dir string, area func(*F) string, check func(base string, f *F) []string) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("%w: no *.yaml files in %s", ErrInvalidRequirements, dir)
	}
	var problems []string
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		base := filepath.Base(f)
		rf := new(F)
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		dec.KnownFields(true)
		if err := dec.Decode(rf); err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", base, err))
			continue
		}
		if want := strings.TrimSuffix(base, ".yaml"); area(rf) != want {
			problems = append(problems, fmt.Sprintf("%s: area %q, want %q (the file name)", base, area(rf), want))
		}
		problems = append(problems, check(base, rf)...)
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return fmt.Errorf("%w:\n  %s", ErrInvalidRequirements, strings.Join(problems, "\n  "))
	}
	return nil
}
