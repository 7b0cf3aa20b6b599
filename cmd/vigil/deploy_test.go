package main

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// The deployment artefacts of deploy/ match this binary: every flag they pass is a flag of the
// command they run, every VIGIL_* variable they set is one cmd/vigil reads, the service and
// the image run unprivileged, the stop timeout covers the drain, the shutdown grace and the
// services' close, and the load balancer checks /readyz.
// Verifies: REQ-HA-026
func TestDeployArtifactsMatchTheBinary(t *testing.T) {
	t.Parallel()
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join("..", "..", "deploy", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	known := knownVariables(t)
	root := newRoot()
	for _, unit := range []string{"systemd/vigil.service", "systemd/vigil-migrate.service"} {
		text := read(unit)
		execStart, user := "", ""
		stop := time.Duration(0)
		sc := bufio.NewScanner(strings.NewReader(text))
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), "=")
			switch k {
			case "ExecStart":
				execStart = v
			case "User":
				user = v
			case "TimeoutStopSec":
				d, err := time.ParseDuration(v + "s")
				if err != nil {
					t.Errorf("%s: TimeoutStopSec=%s: %v", unit, v, err)
				}
				stop = d
			}
		}
		if user == "" || user == "root" {
			t.Errorf("%s runs as %q, want an unprivileged user", unit, user)
		}
		args := strings.Fields(execStart)
		if len(args) < 2 || filepath.Base(args[0]) != "vigil" {
			t.Fatalf("%s: ExecStart=%q does not run vigil", unit, execStart)
		}
		cmd, rest, err := root.Find(args[1:])
		if err != nil || cmd == root {
			t.Fatalf("%s: %q is no vigil command: %v", unit, execStart, err)
		}
		checkFlags(t, unit, cmd, rest)
		if cmd.Name() == "serve" {
			if err := cmd.ParseFlags(rest); err != nil {
				t.Fatalf("%s: %v", unit, err)
			}
			drain, _ := cmd.Flags().GetDuration("drain-delay")
			// Serve's grace (15 s) and the services' close (up to 30 s) follow the drain.
			if need := drain + 45*time.Second; stop < need {
				t.Errorf("%s: TimeoutStopSec %v < drain-delay %v + 45 s: systemd would kill a draining replica", unit, stop, drain)
			}
		}
	}
	for _, name := range []string{"systemd/vigil.env.example", "Dockerfile", "systemd/vigil.service"} {
		for _, v := range regexp.MustCompile(`VIGIL_[A-Z0-9_]+`).FindAllString(read(name), -1) {
			if !known[v] {
				t.Errorf("%s sets %s, which vigil does not read", name, v)
			}
		}
	}
	docker := read("Dockerfile")
	if !strings.Contains(docker, "./cmd/vigil") || !regexp.MustCompile(`(?m)^USER [1-9][0-9]*`).MatchString(docker) {
		t.Error("Dockerfile: want a build of ./cmd/vigil and a numeric non-root USER")
	}
	if ha := read("haproxy.cfg"); !strings.Contains(ha, "option httpchk GET /readyz") || !strings.Contains(ha, "retry-on") {
		t.Error("haproxy.cfg: want health checks on /readyz and retries on refusal")
	}
}

// checkFlags reports every --flag of args that cmd does not have.
func checkFlags(t *testing.T, where string, cmd *cobra.Command, args []string) {
	t.Helper()
	for _, a := range args {
		name, ok := strings.CutPrefix(a, "--")
		if !ok {
			continue
		}
		name, _, _ = strings.Cut(name, "=")
		if cmd.Flags().Lookup(name) == nil && cmd.InheritedFlags().Lookup(name) == nil {
			t.Errorf("%s: vigil %s has no --%s", where, cmd.Name(), name)
		}
	}
}

// knownVariables is every "VIGIL_*" string literal of cmd/vigil's non-test sources.
func knownVariables(t *testing.T) map[string]bool {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`"(VIGIL_[A-Z0-9_]+)"`)
	known := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			known[m[1]] = true
		}
	}
	return known
}
