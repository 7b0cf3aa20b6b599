package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A context's environment overlays the process's: its variables first ("" reads as unset
// for envOrCtx), the process's for the rest; without one, the process's.
// Verifies: REQ-FND-001
func TestEnvThroughContext(t *testing.T) {
	t.Parallel()
	path, ok := os.LookupEnv("PATH")
	if !ok {
		t.Skip("no PATH in the process environment to fall back to")
	}
	ctx := withEnv(context.Background(), map[string]string{"VIGIL_TEST_ONLY_X": "x", "PATH": ""})
	if got := getenv(ctx, "VIGIL_TEST_ONLY_X"); got != "x" {
		t.Errorf("getenv(overlaid) = %q, want x", got)
	}
	if got := envOrCtx(ctx, "PATH", "default"); got != "default" {
		t.Errorf("envOrCtx(overlaid with \"\") = %q, want the default", got)
	}
	if got := getenv(withEnv(context.Background(), nil), "PATH"); got != path {
		t.Errorf("getenv(not overlaid) = %q, want the process's %q", got, path)
	}
	if got := getenv(context.Background(), "VIGIL_TEST_ONLY_X"); got != "" {
		t.Errorf("getenv(context without environment) = %q, want the process's (unset)", got)
	}
}

// The commands read variables only through their context (env.go), so that tests can give
// them theirs and run in parallel: no other file of the command reads the process's
// environment, but for the flag defaults of envOr (main.go).
// Verifies: REQ-FND-001
func TestCommandsReadTheEnvironmentThroughTheirContext(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if f == "env.go" || strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			if !strings.Contains(line, "os.Getenv(") && !strings.Contains(line, "os.LookupEnv(") {
				continue
			}
			if f == "main.go" && strings.Contains(line, "os.LookupEnv(name)") { // envOr: flag defaults
				continue
			}
			t.Errorf("%s:%d reads the process environment: use getenv(ctx, …) or envOrCtx (env.go)", f, i+1)
		}
	}
}
