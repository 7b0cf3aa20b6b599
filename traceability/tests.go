package traceability

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// TestRef is one test function that declares which requirements it verifies.
type TestRef struct {
	Package  string   // directory relative to the scanned root, e.g. "audit"
	File     string   // file relative to the root
	Line     int      // line of the func declaration
	Name     string   // e.g. TestRecordCommitsAndRollsBackWithAction, FuzzParse
	Verifies []string // requirement ids
}

var (
	verifiesRE = regexp.MustCompile(`^\s*//\s*Verifies:\s*(.+)$`)
	funcRE     = regexp.MustCompile(`^func\s+((?:Test|Fuzz|Benchmark|Example)\w*)\s*\(`)
)

// ScanTests walks root for *_test.go files and returns every test function preceded by a
// `// Verifies: REQ-…[, REQ-…]` line in its doc comment. Directories named testdata, vendor,
// node_modules and hidden ones are skipped. A Verifies line that names a malformed id, or is
// not followed by a test function, is an error — except directly above the `package` clause,
// where it is a file-level line: it applies to every test function of the file, and in a
// file of test helpers (no test functions) it says which requirements the helpers serve.
func ScanTests(root string) ([]TestRef, error) {
	var refs []TestRef
	var problems []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			n := d.Name()
			if path != root && (n == "testdata" || n == "vendor" || n == "node_modules" || strings.HasPrefix(n, ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		fr, p, err := scanFile(path, rel)
		refs = append(refs, fr...)
		problems = append(problems, p...)
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(problems) > 0 {
		return refs, fmt.Errorf("%w:\n  %s", ErrInvalidRequirements, strings.Join(problems, "\n  "))
	}
	sort.Slice(refs, func(i, j int) bool {
		if refs[i].File != refs[j].File {
			return refs[i].File < refs[j].File
		}
		return refs[i].Line < refs[j].Line
	})
	return refs, nil
}

func scanFile(path, rel string) ([]TestRef, []string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	var refs []TestRef
	var problems []string
	var pending, fileLevel []string
	pendingLine := 0
	var fileRefs []int // indexes in refs of this file's tests
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1024*1024), 1024*1024)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if m := verifiesRE.FindStringSubmatch(text); m != nil {
			for _, id := range strings.Split(m[1], ",") {
				id = strings.TrimSpace(id)
				if !IDPattern.MatchString(id) {
					problems = append(problems, fmt.Sprintf("%s:%d: malformed requirement id %q", rel, line, id))
					continue
				}
				pending = append(pending, id)
			}
			pendingLine = line
			continue
		}
		if len(pending) == 0 {
			if m := funcRE.FindStringSubmatch(text); m != nil && len(fileLevel) > 0 {
				fileRefs = append(fileRefs, len(refs))
				refs = append(refs, TestRef{Package: filepath.ToSlash(filepath.Dir(rel)), File: filepath.ToSlash(rel), Line: line, Name: m[1]})
			}
			continue
		}
		trimmed := strings.TrimSpace(text)
		if strings.HasPrefix(trimmed, "//") {
			continue // more doc comment
		}
		if strings.HasPrefix(trimmed, "package ") {
			fileLevel = pending
		} else if m := funcRE.FindStringSubmatch(text); m != nil {
			fileRefs = append(fileRefs, len(refs))
			refs = append(refs, TestRef{Package: filepath.ToSlash(filepath.Dir(rel)), File: filepath.ToSlash(rel), Line: line, Name: m[1], Verifies: pending})
		} else {
			problems = append(problems, fmt.Sprintf("%s:%d: Verifies line not followed by a Test/Fuzz/Benchmark function", rel, pendingLine))
		}
		pending = nil
	}
	if len(fileLevel) > 0 {
		for _, i := range fileRefs {
			refs[i].Verifies = append(append([]string(nil), fileLevel...), refs[i].Verifies...)
		}
	}
	return refs, problems, sc.Err()
}
