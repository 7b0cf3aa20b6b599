package traceability

import (
	"fmt"
	"sort"
)

// Gap is one traceability problem.
type Gap struct {
	Kind   string // "untested" (a requirement no test verifies) or "unknown" (a test names an id that does not exist)
	ID     string
	Detail string
}

func (g Gap) String() string { return fmt.Sprintf("%s %s: %s", g.Kind, g.ID, g.Detail) }

// Check links requirements to the tests that verify them and returns every gap: requirements
// no test verifies, and tests that name requirements that do not exist. No gaps means every
// requirement is traced to at least one test.
func Check(reqs []Requirement, refs []TestRef) []Gap {
	known := make(map[string]bool, len(reqs))
	for _, r := range reqs {
		known[r.ID] = true
	}
	tested := map[string]bool{}
	var gaps []Gap
	for _, t := range refs {
		for _, id := range t.Verifies {
			if !known[id] {
				gaps = append(gaps, Gap{Kind: "unknown", ID: id, Detail: fmt.Sprintf("named by %s (%s:%d) but defined in no requirements file", t.Name, t.File, t.Line)})
				continue
			}
			tested[id] = true
		}
	}
	for _, r := range reqs {
		if !tested[r.ID] {
			gaps = append(gaps, Gap{Kind: "untested", ID: r.ID, Detail: fmt.Sprintf("%q (%s) is verified by no test", r.Title, r.File)})
		}
	}
	sort.Slice(gaps, func(i, j int) bool {
		if gaps[i].Kind != gaps[j].Kind {
			return gaps[i].Kind < gaps[j].Kind
		}
		return gaps[i].ID < gaps[j].ID
	})
	return gaps
}
