// Command testlog keeps the `go test -json` stream of a test run in a file and prints a
// readable log of it: one line per package (ok, FAIL, no test files), the full output of
// every failing test, and build errors. `make unit` and `make fuzz` pipe `go test -json`
// through it; `vigil validate` and `vigil trace` read the file.
//
//	go test -json ./... 2>&1 | go run ./tools/testlog -o .vigil/ci/go-test.json
//
// With -a the file is appended to. Its exit status is 0; the caller's pipefail carries go
// test's own status, so a failing test still fails the make target.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

func main() {
	out := flag.String("o", "", "file to write the go test -json stream to (required)")
	appendTo := flag.Bool("a", false, "append to the file instead of truncating it")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "testlog: -o FILE is required")
		os.Exit(2)
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "testlog:", err)
		os.Exit(2)
	}
	mode := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if *appendTo {
		mode = os.O_CREATE | os.O_WRONLY | os.O_APPEND
	}
	f, err := os.OpenFile(*out, mode, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testlog:", err)
		os.Exit(2)
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	defer w.Flush()
	// Output of each running test, printed only if it fails.
	pending := map[string][]string{}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1024*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		w.WriteString(line)
		w.WriteByte('\n')
		var ev event
		if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &ev) != nil {
			fmt.Println(line) // not JSON: a build error or a message of go itself
			continue
		}
		key := ev.Package + " " + ev.Test
		switch {
		case ev.Action == "build-output":
			fmt.Print(ev.Output)
		case ev.Test == "" && ev.Action == "output":
			o := ev.Output
			if strings.HasPrefix(o, "ok ") || strings.HasPrefix(o, "FAIL") || strings.HasPrefix(o, "?") ||
				strings.HasPrefix(o, "panic:") || strings.Contains(o, "[build failed]") || strings.HasPrefix(o, "--- FAIL") {
				fmt.Print(o)
			}
		case ev.Test != "" && ev.Action == "output":
			pending[key] = append(pending[key], ev.Output)
		case ev.Test != "" && ev.Action == "fail":
			fmt.Print(strings.Join(pending[key], ""))
			delete(pending, key)
		case ev.Test != "" && (ev.Action == "pass" || ev.Action == "skip"):
			delete(pending, key)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "testlog:", err)
	}
}
