package validation

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// commandRE recognises a line of a fenced block that runs something.
var commandRE = regexp.MustCompile(`^\s*(\$ )?(go |make |bin/vigil|vigil |\./|tools/|curl |psql |pgbench |export |VIGIL_[A-Z_]+=|GOMAXPROCS=|GOGC=|time |for |bash )`)

var figureRE = regexp.MustCompile(`[0-9]`)

// BenchmarkTable is one table of figures in the benchmarks document.
type BenchmarkTable struct {
	Line     int    `json:"line"`
	Section  string `json:"section"`
	Commands int    `json:"commands"` // commands found in its section (and parent section)
}

// CheckBenchmarks reads a benchmarks document (Markdown) and returns each table of figures
// with the number of commands its section offers to reproduce it. A section is the text
// under a heading down to the next heading of the same or a higher level; a table in a
// ### section may take its command from the enclosing ## section.
func CheckBenchmarks(doc []byte) ([]BenchmarkTable, error) {
	type section struct {
		level    int
		title    string
		commands int
		parent   *section
	}
	var (
		tables  []BenchmarkTable
		secs    []*section
		cur     = &section{title: "(top)"}
		inFence bool
		inTable bool
		owners  []*section
	)
	sc := bufio.NewScanner(bytes.NewReader(doc))
	sc.Buffer(make([]byte, 1024*1024), 1024*1024)
	line := 0
	for sc.Scan() {
		line++
		t := sc.Text()
		trim := strings.TrimSpace(t)
		if strings.HasPrefix(trim, "```") {
			inFence = !inFence
			continue
		}
		if inFence {
			if commandRE.MatchString(t) {
				cur.commands++
			}
			continue
		}
		if strings.HasPrefix(t, "#") {
			level := len(t) - len(strings.TrimLeft(t, "#"))
			s := &section{level: level, title: strings.TrimSpace(t[level:])}
			for p := cur; p != nil; p = p.parent {
				if p.level < level {
					s.parent = p
					break
				}
			}
			cur = s
			secs = append(secs, s)
			inTable = false
			continue
		}
		isRow := strings.HasPrefix(trim, "|")
		if isRow && !inTable && figureRE.MatchString(trim) {
			inTable = true
			tables = append(tables, BenchmarkTable{Line: line, Section: cur.title})
			owners = append(owners, cur)
		}
		if !isRow {
			inTable = false
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for i, s := range owners {
		for p := s; p != nil; p = p.parent {
			tables[i].Commands += p.commands
			if p.level <= 2 {
				break
			}
		}
	}
	_ = secs
	return tables, nil
}

// benchmarksGate fails when a table of figures in docs/benchmarks.md has no command to
// reproduce it in its section.
func benchmarksGate(_ context.Context, e *env) Result {
	doc, err := os.ReadFile(filepath.Join(e.cfg.Root, "docs", "benchmarks.md"))
	if err != nil {
		return fail("no benchmarks document", err.Error())
	}
	tables, err := CheckBenchmarks(doc)
	if err != nil {
		return fail("benchmarks document unreadable", err.Error())
	}
	dir, rel, err := e.dir(GateBenchmarks)
	if err != nil {
		return fail("evidence", err.Error())
	}
	if err := writeJSONFile(filepath.Join(dir, "benchmarks.json"), tables); err != nil {
		return fail("evidence", err.Error())
	}
	res := Result{Evidence: []string{filepath.Join(rel, "benchmarks.json")}}
	for _, t := range tables {
		if t.Commands == 0 {
			res.Reasons = append(res.Reasons, fmt.Sprintf("docs/benchmarks.md:%d: the table in %q has no command to reproduce it in its section", t.Line, t.Section))
		}
	}
	res.Summary = fmt.Sprintf("%d tables of figures in docs/benchmarks.md, %d without a command", len(tables), len(res.Reasons))
	res.Passed = len(tables) > 0 && len(res.Reasons) == 0
	return res
}
