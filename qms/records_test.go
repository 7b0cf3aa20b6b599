package qms_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/modfile"

	"github.com/vigilhealth/vigil/qms"
	"github.com/vigilhealth/vigil/traceability"
	"github.com/vigilhealth/vigil/validation"
)

// The project's own quality records hold together: at least 20 risks, each rated by the
// policy with every control an existing requirement; every requirement in an existing item
// of a class at least its own; every item with requirements; every package of the module in
// an item; a purpose for every direct dependency and none for a module that is not one;
// anomalies and safeguards well formed and naming existing risks and clauses.
// Verifies: REQ-QMS-010, REQ-QMS-009, REQ-FND-006
func TestQualityRecords(t *testing.T) {
	root := repoRoot(t)
	ctx := context.Background()
	in, err := traceability.Load(ctx, traceability.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	if len(in.Risks) < 20 {
		t.Errorf("%d risks in qms/risks, want at least 20", len(in.Risks))
	}
	m := traceability.Build(in) // no test run: only the records' own consistency matters here
	for _, f := range m.Errors(traceability.AreaRisks, traceability.AreaItems) {
		if f.Kind == "control-unverified" {
			continue // needs the test run: the traceability and risk gates check it
		}
		t.Errorf("quality records: %s", f)
	}
	for _, f := range m.Errors(traceability.AreaTests) {
		if f.Kind != "no-test-run" {
			t.Errorf("quality records: %s", f)
		}
	}
	risks := map[string]bool{}
	for _, r := range in.Risks {
		risks[r.ID] = true
	}
	anomalies, err := qms.LoadAnomalies(filepath.Join(root, "qms", "anomalies.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range anomalies {
		for _, r := range a.Risks {
			if !risks[r] {
				t.Errorf("anomaly %s names %s, which is not in the risk file", a.ID, r)
			}
		}
	}
	safeguards, err := qms.LoadSafeguards(filepath.Join(root, "qms", "hipaa-safeguards.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	clauses := map[string]bool{}
	for _, s := range safeguards {
		clauses["HIPAA "+s.Clause] = true
	}
	for _, r := range in.Requirements {
		for _, c := range r.Clauses {
			if strings.HasPrefix(c, "HIPAA ") && !clauses[c] {
				t.Errorf("%s answers %s, which qms/hipaa-safeguards.yaml does not list", r.ID, c)
			}
		}
	}
	arch, err := qms.BuildArchitecture(ctx, root, in.Items, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(arch.Unplaced) > 0 {
		t.Errorf("packages in no item of qms/items.yaml: %v", arch.Unplaced)
	}
	purposes, err := validation.LoadPurposes(filepath.Join(root, "qms", "soup-purpose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	mf, err := modfile.Parse("go.mod", raw, nil)
	if err != nil {
		t.Fatal(err)
	}
	direct := map[string]bool{}
	for _, r := range mf.Require {
		if !r.Indirect {
			direct[r.Mod.Path] = true
			if strings.TrimSpace(purposes[r.Mod.Path]) == "" {
				t.Errorf("direct dependency %s has no purpose in qms/soup-purpose.yaml", r.Mod.Path)
			}
		}
	}
	// npm packages: the dependencies of every package.json in the repository (outside
	// node_modules), the portal's and the test tools' alike.
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "node_modules" || d.Name() == "bin" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || d.Name() != "package.json" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var pkg struct {
			Dependencies map[string]string `json:"dependencies"`
		}
		if err := json.Unmarshal(b, &pkg); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		for name := range pkg.Dependencies {
			direct[name] = true
			if strings.TrimSpace(purposes[name]) == "" {
				t.Errorf("npm dependency %s (%s) has no purpose in qms/soup-purpose.yaml", name, path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for p := range purposes {
		if !direct[p] {
			t.Errorf("qms/soup-purpose.yaml names %s, which is not a direct dependency", p)
		}
	}
}

// The evidence pack renders every document of the project's own records as HTML pages and
// one PDF.
// Verifies: REQ-QMS-006
func TestEvidencePackPages(t *testing.T) {
	root := repoRoot(t)
	ctx := context.Background()
	ev, err := qms.LoadEvidence(ctx, root, filepath.Join(root, "qms"), "", "test-commit")
	if err != nil {
		t.Fatal(err)
	}
	ev.Product, ev.Version, ev.Created, ev.KeyID = "Vigil", "v9.9.9", time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), "release-signing:v1"
	ev.Inventory = &validation.Inventory{Main: "github.com/vigilhealth/vigil", Source: "test",
		Components: []validation.Component{{Ecosystem: "go", Name: "github.com/google/uuid", Version: "v1.6.0", Licence: "BSD-3-Clause", Direct: true, Purpose: "ids"}}}
	ev.Validation = &validation.Report{Passed: false, Gates: []validation.Result{{Gate: validation.GateUnit, Passed: false, Summary: "no test results"}}}
	dir := t.TempDir()
	files, err := qms.WriteEvidence(dir, &ev.Evidence)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 11+4+1 {
		t.Errorf("WriteEvidence() wrote %d files, want 11 pages, 4 matrix files and the PDF", len(files))
	}
	hipaa, err := os.ReadFile(filepath.Join(dir, "hipaa.html"))
	if err != nil || !bytes.Contains(hipaa, []byte("§164.312(b) Audit controls")) || !bytes.Contains(hipaa, []byte("REQ-AUD-001")) {
		t.Errorf("hipaa.html lacks the audit-controls safeguard with its requirements")
	}
	checklist, _ := os.ReadFile(filepath.Join(dir, "checklist.html"))
	if !bytes.Contains(checklist, []byte(`<td class="bad">fail</td>`)) {
		t.Errorf("checklist.html does not show §5.8.1 failed when a gate failed")
	}
	pdf, _ := os.ReadFile(filepath.Join(dir, qms.PDFName))
	if !bytes.HasPrefix(pdf, []byte("%PDF-")) || len(pdf) < 10000 {
		t.Errorf("evidence.pdf is %d bytes starting %q", len(pdf), pdf[:min(8, len(pdf))])
	}
}
