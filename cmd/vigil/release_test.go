package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/internal/sigstorecheck"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/qms"
)

// releaseTool finds a tool the release tests need (pdftotext from poppler-utils, which
// .ci/ensure-poppler installs). With VIGIL_REQUIRE_INTEROP_TOOLS=1 (make unit) a missing tool
// fails the test; otherwise the checks that need it are skipped.
func releaseTool(t *testing.T, name string) string {
	t.Helper()
	if p, err := filepath.Abs(filepath.Join("..", "..", "bin", name)); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if os.Getenv("VIGIL_REQUIRE_INTEROP_TOOLS") == "1" {
		t.Fatalf("%s not found (bin/%s or PATH): .ci/ensure-poppler installs pdftotext", name, name)
	}
	t.Skipf("%s not found; set VIGIL_REQUIRE_INTEROP_TOOLS=1 to make this a failure", name)
	return ""
}

func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

func flipByte(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x01
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// goTestRun runs go test -json in dir and returns the file it wrote (a real test run for the
// release's matrix and gates).
func goTestRun(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"test", "-json", "-count=1"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, _ := cmd.Output()
	if !bytes.Contains(out, []byte(`"Action"`)) {
		t.Fatalf("go test -json %v: no events: %s", args, out)
	}
	p := filepath.Join(t.TempDir(), "go-test.json")
	if err := os.WriteFile(p, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// A release built in the test: reproducible, with its evidence pack in HTML and PDF (the PDF
// holds the traceability table), signed so that sigstore's own verifier (sigstore-go, what
// stock cosign verify-blob uses) verifies the binary, the SBOM
// and the manifest and rejects each with one byte changed, recorded as release.signed in the
// audit log (which audit verify then finds), and verified offline by release verify. A failed
// gate refuses the release.
// Verifies: REQ-QMS-005, REQ-QMS-006, REQ-QMS-007, REQ-QMS-008, REQ-KEY-009
func TestReleaseSignedRecordedAndVerified(t *testing.T) {
	t.Parallel()
	pdftotext := releaseTool(t, "pdftotext")
	pool, url := testdb.NewWithURL(t)
	env := map[string]string{"VIGIL_DATABASE_URL": url, "VIGIL_KEYRING_PASSPHRASE": "release-test-passphrase", "VIGIL_VAULT_ADDR": ""}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	dataDir := t.TempDir()
	testJSON := goTestRun(t, root, "-run", "^TestParseTestJSON$|^TestMatrixFormats$", "./traceability")

	// A failing test run: the release is refused and nothing is signed.
	failing := t.TempDir()
	if err := os.WriteFile(filepath.Join(failing, "go.mod"), []byte("module example.com/failing\n\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(failing, "f_test.go"), []byte("package f\n\nimport \"testing\"\n\nfunc TestBroken(t *testing.T) { t.Fatal(\"broken\") }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	refusedDir := filepath.Join(t.TempDir(), "refused")
	out, err := executeEnv(t, env, "release", "--root", root, "--out", refusedDir, "--data-dir", dataDir, "--version", "v0.0.0-refused",
		"--test-json", goTestRun(t, failing, "./..."), "--gate", "unit-and-integration")
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 || !errors.Is(err, qms.ErrReleaseRefused) || !strings.Contains(err.Error(), "unit-and-integration") {
		t.Fatalf("release with a failing test = %v\n%s\nwant refused (exit 1) naming the gate", err, out)
	}
	for _, name := range []string{qms.BinaryName, qms.ManifestName, qms.BinaryName + qms.BundleSuffix, qms.AuditProofName} {
		if _, err := os.Stat(filepath.Join(refusedDir, name)); err == nil {
			t.Errorf("refused release left %s behind", name)
		}
	}

	dist := filepath.Join(t.TempDir(), "dist")
	out, err = executeEnv(t, env, "release", "--root", root, "--out", dist, "--data-dir", dataDir, "--version", "v0.0.0-test",
		"--test-json", testJSON, "--gate", "benchmarks-recorded,sbom,licences")
	if err != nil {
		t.Fatalf("vigil release = %v\n%s", err, out)
	}

	// Reproducible: the same commit and version build to the same bytes.
	again, err := qms.BuildReproducible(context.Background(), root, "./cmd/vigil", "v0.0.0-test", filepath.Join(t.TempDir(), "vigil"))
	if err != nil {
		t.Fatal(err)
	}
	built, err := os.ReadFile(filepath.Join(dist, qms.BuildName))
	if err != nil || !bytes.Contains(built, []byte(`"sha256": "`+again.SHA256+`"`)) {
		t.Errorf("a second build has SHA-256 %s; build.json of the release = %s", again.SHA256, built)
	}

	// The evidence pack: one index, HTML pages, a PDF with the traceability table.
	index, err := os.ReadFile(filepath.Join(dist, qms.IndexName))
	if err != nil || !bytes.Contains(index, []byte("evidence/evidence.pdf")) || !bytes.Contains(index, []byte("release.signed")) {
		t.Errorf("index.html = %v, want links to the pack and the audit event", err)
	}
	for _, page := range []string{"overview.html", "plan.html", "requirements.html", "architecture.html", "soup.html", "risks.html",
		"traceability.html", "verification.html", "anomalies.html", "checklist.html", "hipaa.html"} {
		if _, err := os.Stat(filepath.Join(dist, qms.EvidenceDir, page)); err != nil {
			t.Errorf("evidence page %s: %v", page, err)
		}
	}
	text, err := exec.Command(pdftotext, "-layout", filepath.Join(dist, qms.EvidenceDir, qms.PDFName), "-").Output()
	if err != nil {
		t.Fatalf("pdftotext: %v", err)
	}
	for _, want := range []string{"Traceability matrix (IEC 62304", "REQ-QMS-001", "Audit events are well formed", "HIPAA §164.312 technical safeguards",
		"Release checklist", "RISK-001", "github.com/jackc/pgx/v5"} {
		if !bytes.Contains(text, []byte(want)) {
			t.Errorf("the evidence PDF's text lacks %q", want)
		}
	}

	// sigstore-go (cosign verify-blob's verifier) verifies each signed artefact, and rejects it
	// with one byte changed.
	pub := filepath.Join(dist, qms.PublicKeyName)
	for _, name := range []string{qms.BinaryName, qms.SBOMName, qms.ManifestName} {
		bundle := filepath.Join(dist, name+qms.BundleSuffix)
		if err := sigstorecheck.VerifyBlob(pub, bundle, filepath.Join(dist, name)); err != nil {
			t.Errorf("sigstore-go verify %s = %v", name, err)
		}
		changed := copyTree(t, dist)
		flipByte(t, filepath.Join(changed, name))
		if err := sigstorecheck.VerifyBlob(pub, bundle, filepath.Join(changed, name)); err == nil {
			t.Errorf("sigstore-go verified %s with one byte changed", name)
		}
		if out, err := executeEnv(t, env, "release", "verify", changed); !errors.As(err, &ee) || ee.code != 1 {
			t.Errorf("vigil release verify with one byte of %s changed = %v\n%s\nwant exit 1", name, err, out)
		}
	}

	// Offline verification of the release as built, with the keys given as trusted.
	var proof qms.AuditEvidence
	raw, _ := os.ReadFile(filepath.Join(dist, qms.AuditProofName))
	if err := json.Unmarshal(raw, &proof); err != nil {
		t.Fatal(err)
	}
	out, err = executeEnv(t, env, "release", "verify", dist, "--key", pub, "--audit-key", proof.VerifierKey)
	if err != nil || !strings.Contains(out, "OK: the release verifies") || !strings.Contains(out, "release.signed") {
		t.Fatalf("vigil release verify = %v\n%s", err, out)
	}
	// A proof checked against another audit key fails.
	otherKey := strings.Replace(proof.VerifierKey, proof.VerifierKey[len(proof.VerifierKey)-6:], "AAAAAA", 1)
	if out, err := executeEnv(t, env, "release", "verify", dist, "--audit-key", otherKey); err == nil {
		t.Errorf("release verify with another audit key succeeded:\n%s", out)
	}
	// An audit proof for another manifest does not verify this one.
	if err := checkReleaseProof(proof, strings.Repeat("0", 64), proof.VerifierKey); err == nil {
		t.Error("checkReleaseProof(other manifest digest) = nil, want an error")
	}

	// The release is an event of Vigil's own audit trail, which verifies end to end.
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM audit_events WHERE action = 'release.signed' AND id::text = $1", proof.EventID).Scan(&n); err != nil || n != 1 {
		t.Errorf("release.signed events with id %s = %d, %v; want 1", proof.EventID, n, err)
	}
	if out, err := executeEnv(t, env, "audit", "verify", "--data-dir", dataDir); err != nil {
		t.Errorf("vigil audit verify after the release = %v\n%s", err, out)
		rows, qerr := pool.Query(context.Background(), "SELECT id::text, action, COALESCE(actor_id, ''), recorded_at FROM audit_events WHERE batch_id IS NULL ORDER BY recorded_at")
		if qerr == nil {
			for rows.Next() {
				var id, action, actor string
				var at time.Time
				if rows.Scan(&id, &action, &actor, &at) == nil {
					t.Logf("not shipped: %s %s by %s at %s", id, action, actor, at.Format(time.RFC3339Nano))
				}
			}
			rows.Close()
		}
	}
}

// audit export --report writes a readable report of a verified pack, and --patient one
// patient's access history with each event's proof checked.
// Verifies: REQ-QMS-011
func TestAuditExportReports(t *testing.T) {
	t.Parallel()
	pdftotext := releaseTool(t, "pdftotext")
	pool, url := testdb.NewWithURL(t)
	rec := audittest.Recorder(t, pool, nil)
	db := &database{pool: pool, rec: rec}
	dataDir := t.TempDir()
	env := map[string]string{"VIGIL_DATABASE_URL": url, "VIGIL_KEYRING_PASSPHRASE": "report-test-passphrase", "VIGIL_VAULT_ADDR": ""}
	ctx := withEnv(context.Background(), env)
	ring, closeRing, err := openKeyRing(ctx, dataDir, false, rec, true)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = closeRing(ctx) }()
	svc, closeSvc, err := openReleaseAudit(ctx, runConfig{DataDir: dataDir, DatabaseURL: url}, db, ring)
	if err != nil {
		t.Fatal(err)
	}
	events := []struct{ actor, action, patient string }{
		{"nurse-1", "patient.created", "P-1"}, {"nurse-1", "patient.moved", "P-1"}, {"doctor-2", "patient.moved", "P-2"},
		{"doctor-2", "care_team.member_added", "P-1"},
	}
	var last string
	for _, e := range events {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			id, err := rec.Record(ctx, tx, audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: e.actor, AuthMethod: "password+totp"},
				Action: e.action, Object: audit.Object{Type: "patient", ID: e.patient}, Outcome: audit.OutcomeSuccess})
			last = id.String()
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Ship and checkpoint through the release log's driver (it waits until an event is proven).
	if _, err := (auditReleaseLog{svc: svc, rec: rec}).RecordRelease(ctx, qms.ReleaseRecord{Product: "Vigil", Version: "v0", ManifestSHA256: strings.Repeat("a", 64)}); err != nil {
		t.Fatal(err)
	}
	if err := closeSvc(ctx); err != nil {
		t.Fatal(err)
	}
	from, to := time.Now().Add(-time.Hour).Format(time.RFC3339), time.Now().Add(time.Hour).Format(time.RFC3339)
	dir := t.TempDir()
	if out, err := executeEnv(t, env, "audit", "export", "--data-dir", dataDir, "--from", from, "--to", to, "--out", filepath.Join(dir, "p.pack"), "--report", dir); err != nil {
		t.Fatalf("audit export --report = %v\n%s", err, out)
	}
	text, err := exec.Command(pdftotext, "-layout", filepath.Join(dir, "audit-report.pdf"), "-").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Audit report", "verified: every event is proven", "patient.moved (success)", "Events by actor", "release.signed"} {
		if !bytes.Contains(text, []byte(want)) {
			t.Errorf("audit report PDF lacks %q:\n%s", want, text)
		}
	}
	html, _ := os.ReadFile(filepath.Join(dir, "audit-report.html"))
	if !bytes.Contains(html, []byte(`<td>patient.moved (success)</td><td>2</td>`)) {
		t.Errorf("audit report HTML does not count 2 patient.moved events")
	}

	pdir := t.TempDir()
	out, err := executeEnv(t, env, "audit", "export", "--data-dir", dataDir, "--from", from, "--to", to, "--patient", "P-1", "--report", pdir)
	if err != nil || !strings.Contains(out, "3 events of patient P-1") {
		t.Fatalf("audit export --patient = %v\n%s", err, out)
	}
	html, _ = os.ReadFile(filepath.Join(pdir, "patient-P-1.html"))
	for _, want := range []string{"Access history of patient P-1", "nurse-1", "doctor-2", last, "care_team.member_added"} {
		if !bytes.Contains(html, []byte(want)) {
			t.Errorf("patient report lacks %q", want)
		}
	}
	if bytes.Contains(html, []byte("FAILED")) || bytes.Count(html, []byte(">verified<")) != 3 {
		t.Errorf("patient report: want its 3 events verified")
	}
	if _, err := os.Stat(filepath.Join(pdir, "patient-P-1.pdf")); err != nil {
		t.Error(err)
	}
	if _, err := executeEnv(t, env, "audit", "export", "--data-dir", dataDir, "--from", from, "--to", to, "--patient", "P-1"); err == nil {
		t.Error("audit export --patient without --report succeeded")
	}
}
