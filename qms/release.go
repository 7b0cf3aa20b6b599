package qms

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/vigilhealth/vigil/traceability"
	"github.com/vigilhealth/vigil/validation"
)

// Files of a release folder.
const (
	BinaryName     = "vigil"
	SBOMName       = "sbom.cdx.json"
	ManifestName   = "manifest.json"
	BuildName      = "build.json"
	PublicKeyName  = "release-signing.pub"
	AuditProofName = "audit-proof.json"
	IndexName      = "index.html"
	BundleSuffix   = ".sigstore.json"
	EvidenceDir    = "evidence"
	ValidationDir  = "validation"
	ManifestFormat = "vigil-release-manifest/v1"
	ReleaseAction  = "release.signed"
)

// ErrReleaseRefused is returned when a release is refused (a failed gate, a non-empty output
// folder); its message says why.
var ErrReleaseRefused = errors.New("release refused")

// BuildInfo records how the binary was built, so that it can be built again byte for byte.
type BuildInfo struct {
	GoVersion string   `json:"go_version"`
	GOOS      string   `json:"goos"`
	GOARCH    string   `json:"goarch"`
	Env       []string `json:"env"`
	Flags     []string `json:"flags"`
	Package   string   `json:"package"`
	Commit    string   `json:"commit"`
	SHA256    string   `json:"sha256"`
}

// BuildReproducible builds pkg (in root) into out with a fixed set of flags that make the
// binary depend only on the source, the toolchain and the version string: trimmed paths, an
// empty build id, no cgo, VCS stamping from the commit.
func BuildReproducible(ctx context.Context, root, pkg, version, out string) (BuildInfo, error) {
	bi := BuildInfo{Package: pkg, GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, Env: []string{"CGO_ENABLED=0"},
		Flags: []string{"-trimpath", "-buildvcs=true", "-ldflags=-buildid= -X main.version=" + version}}
	if v, err := exec.CommandContext(ctx, "go", "env", "GOVERSION", "GOOS", "GOARCH").Output(); err == nil {
		f := strings.Fields(string(v))
		if len(f) == 3 {
			bi.GoVersion, bi.GOOS, bi.GOARCH = f[0], f[1], f[2]
		}
	}
	args := append([]string{"build", "-o", out}, bi.Flags...)
	args = append(args, pkg)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), bi.Env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return bi, fmt.Errorf("go build: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	bi.Commit = traceability.GitCommit(ctx, root)
	sum, _, err := fileSHA256(out)
	if err != nil {
		return bi, err
	}
	bi.SHA256 = sum
	return bi, nil
}

func fileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// ManifestEntry is one artefact of a release.
type ManifestEntry struct {
	Path   string `json:"path"` // slash-separated, relative to the release folder
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Manifest lists every artefact of a release with its SHA-256. It is signed, and its own
// digest is recorded in the transparency log (release.signed).
type Manifest struct {
	Format    string          `json:"format"`
	Product   string          `json:"product"`
	Version   string          `json:"version"`
	Commit    string          `json:"commit"`
	Created   time.Time       `json:"created"`
	KeyID     string          `json:"key_id"`
	Artefacts []ManifestEntry `json:"artefacts"`
}

// outsideManifest are the files a release folder holds that the manifest cannot list: the
// manifest and its signature, and what is made after it (the audit proof, the index page).
var outsideManifest = map[string]bool{ManifestName: true, ManifestName + BundleSuffix: true, AuditProofName: true, IndexName: true}

func listArtefacts(dir string) ([]ManifestEntry, error) {
	var out []ManifestEntry
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if outsideManifest[rel] {
			return nil
		}
		sum, n, err := fileSHA256(p)
		if err != nil {
			return err
		}
		out = append(out, ManifestEntry{Path: rel, SHA256: sum, Size: n})
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, err
}

// ReleaseRecord is what a release's audit event says.
type ReleaseRecord struct {
	Product        string
	Version        string
	Commit         string
	KeyID          string
	ManifestSHA256 string
}

// AuditEvidence is the proof that a release was recorded in the transparency log: the
// event, its inclusion proof and the signed checkpoint it is proven under.
type AuditEvidence struct {
	EventID     string          `json:"event_id"`
	Action      string          `json:"action"`
	Origin      string          `json:"origin"`
	VerifierKey string          `json:"verifier_key"` // the checkpoint key (C2SP note verifier key)
	LeafIndex   uint64          `json:"leaf_index"`
	TreeSize    uint64          `json:"tree_size"`
	Checkpoint  string          `json:"checkpoint"`
	Proof       json.RawMessage `json:"proof"` // the log's own proof document, checked by a ProofChecker
}

// ReleaseLog records releases in the transparency log. cmd/vigil implements it with the
// audit chain.
type ReleaseLog interface {
	// RecordRelease MUST record a release.signed audit event carrying r (the manifest's
	// SHA-256 among it) and return only once the event is proven under a signed checkpoint,
	// with that proof.
	RecordRelease(ctx context.Context, r ReleaseRecord) (AuditEvidence, error)
}

// ProofChecker checks audit evidence offline: the event's inclusion under the checkpoint, the
// checkpoint's signature by trustedKey (the evidence's own key when empty), and that the
// event is a release.signed of the manifest with digest manifestSHA256.
type ProofChecker func(ev AuditEvidence, manifestSHA256, trustedKey string) error

// ReleaseConfig configures Release.
type ReleaseConfig struct {
	Root        string // the repository; required
	QMS         string // default Root/qms
	Out         string // the release folder: must not exist or be empty; required
	Product     string // default "Vigil"
	Version     string // required
	MainPackage string // default "./cmd/vigil"
	// Validation configures the gates (TestJSON, FuzzJSON, VulnDB, …); Root, QMS, Out,
	// Binary and Version are set by Release.
	Validation validation.Config
	// Signer signs with the release-signing key (keys/sigstorekeys); KeyID names it.
	Signer signature.SignerVerifier
	KeyID  string
	// Log records the release in the transparency log. Required.
	Log ReleaseLog
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// ReleaseResult describes a release made.
type ReleaseResult struct {
	Dir            string
	Manifest       Manifest
	ManifestSHA256 string
	Validation     *validation.Report
	Audit          AuditEvidence
}

func emptyOrMissing(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(entries) > 0 {
		return fmt.Errorf("%w: %s is not empty", ErrReleaseRefused, dir)
	}
	return nil
}

// Release makes a regulated release into cfg.Out: a reproducible build, every validation
// gate (refusing on a failure), the SBOM, the IEC 62304 and HIPAA evidence pack (HTML and
// PDF), build.json, the manifest, Sigstore bundles of the binary, the SBOM and the manifest,
// the release.signed event in the transparency log with its proof, and index.html.
func Release(ctx context.Context, cfg ReleaseConfig) (*ReleaseResult, error) {
	if cfg.Root == "" || cfg.Out == "" || cfg.Version == "" || cfg.Signer == nil || cfg.Log == nil {
		return nil, errors.New("qms: ReleaseConfig needs Root, Out, Version, Signer and Log")
	}
	if cfg.QMS == "" {
		cfg.QMS = filepath.Join(cfg.Root, "qms")
	}
	if cfg.Product == "" {
		cfg.Product = "Vigil"
	}
	if cfg.MainPackage == "" {
		cfg.MainPackage = "./cmd/vigil"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := emptyOrMissing(cfg.Out); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return nil, err
	}
	created := cfg.Now().UTC()
	// 1. The build, kept aside until the gates pass.
	stage := filepath.Join(cfg.Out, ".build")
	if err := os.MkdirAll(stage, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage)
	staged := filepath.Join(stage, BinaryName)
	build, err := BuildReproducible(ctx, cfg.Root, cfg.MainPackage, cfg.Version, staged)
	if err != nil {
		return nil, fmt.Errorf("release: %w", err)
	}
	// 2. The gates, on the built binary.
	vc := cfg.Validation
	vc.Root, vc.QMS, vc.Out, vc.Binary, vc.Version, vc.Commit = cfg.Root, cfg.QMS, filepath.Join(cfg.Out, ValidationDir), staged, cfg.Version, build.Commit
	if vc.Now == nil {
		vc.Now = cfg.Now
	}
	rep, err := validation.Run(ctx, vc)
	if err != nil {
		return nil, fmt.Errorf("release: %w", err)
	}
	if !rep.Passed {
		return &ReleaseResult{Dir: cfg.Out, Validation: rep}, fmt.Errorf("%w: %w: %s", ErrReleaseRefused, validation.ErrGatesFailed, strings.Join(rep.Failed(), ", "))
	}
	if err := os.Rename(staged, filepath.Join(cfg.Out, BinaryName)); err != nil {
		return nil, err
	}
	bin := filepath.Join(cfg.Out, BinaryName)
	vc.Binary = bin
	// 3. SBOM and SOUP of the binary, and the evidence pack.
	inv, err := validation.BuildInventory(ctx, vc)
	if err != nil {
		return nil, fmt.Errorf("release: %w", err)
	}
	annotateVulns(inv, filepath.Join(vc.Out, validation.GateVulns, "vulns.json"))
	var sbom bytes.Buffer
	if err := validation.WriteSBOM(&sbom, inv, validation.SBOMOptions{Name: strings.ToLower(cfg.Product), Version: cfg.Version, Time: created}); err != nil {
		return nil, fmt.Errorf("release: sbom: %w", err)
	}
	if err := validation.ValidateSBOM(sbom.Bytes()); err != nil {
		return nil, fmt.Errorf("release: %w", err)
	}
	if err := os.WriteFile(filepath.Join(cfg.Out, SBOMName), sbom.Bytes(), 0o644); err != nil {
		return nil, err
	}
	ev, err := LoadEvidence(ctx, cfg.Root, cfg.QMS, vc.TestJSON, build.Commit)
	if err != nil {
		return nil, fmt.Errorf("release: %w", err)
	}
	ev.Product, ev.Version, ev.Created, ev.KeyID, ev.Build, ev.Validation, ev.Inventory = cfg.Product, cfg.Version, created, cfg.KeyID, build, rep, inv
	var modules []string
	for _, c := range inv.Components {
		if c.Ecosystem == "go" {
			modules = append(modules, c.Name)
		}
	}
	if ev.Architecture, err = BuildArchitecture(ctx, cfg.Root, ev.Items, modules); err != nil {
		return nil, fmt.Errorf("release: architecture: %w", err)
	}
	if _, err := WriteEvidence(filepath.Join(cfg.Out, EvidenceDir), &ev.Evidence); err != nil {
		return nil, fmt.Errorf("release: evidence pack: %w", err)
	}
	// 4. Build record and public key.
	if err := writeJSON(filepath.Join(cfg.Out, BuildName), build); err != nil {
		return nil, err
	}
	pub, err := cfg.Signer.PublicKey()
	if err != nil {
		return nil, err
	}
	pemKey, err := PublicKeyPEM(pub)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cfg.Out, PublicKeyName), pemKey, 0o644); err != nil {
		return nil, err
	}
	// 5. Signatures of the binary and the SBOM, then the manifest and its signature.
	for _, name := range []string{BinaryName, SBOMName} {
		if err := signFile(ctx, cfg, filepath.Join(cfg.Out, name)); err != nil {
			return nil, err
		}
	}
	arts, err := listArtefacts(cfg.Out)
	if err != nil {
		return nil, err
	}
	man := Manifest{Format: ManifestFormat, Product: cfg.Product, Version: cfg.Version, Commit: build.Commit, Created: created, KeyID: cfg.KeyID, Artefacts: arts}
	manPath := filepath.Join(cfg.Out, ManifestName)
	if err := writeJSON(manPath, man); err != nil {
		return nil, err
	}
	if err := signFile(ctx, cfg, manPath); err != nil {
		return nil, err
	}
	manSum, _, err := fileSHA256(manPath)
	if err != nil {
		return nil, err
	}
	// 6. The release in the transparency log.
	audit, err := cfg.Log.RecordRelease(ctx, ReleaseRecord{Product: cfg.Product, Version: cfg.Version, Commit: build.Commit, KeyID: cfg.KeyID, ManifestSHA256: manSum})
	if err != nil {
		return nil, fmt.Errorf("release: record in the audit log: %w", err)
	}
	if err := writeJSON(filepath.Join(cfg.Out, AuditProofName), audit); err != nil {
		return nil, err
	}
	res := &ReleaseResult{Dir: cfg.Out, Manifest: man, ManifestSHA256: manSum, Validation: rep, Audit: audit}
	if err := writeIndex(filepath.Join(cfg.Out, IndexName), res, ev.Matrix); err != nil {
		return nil, err
	}
	return res, nil
}

func annotateVulns(inv *validation.Inventory, vulnsFile string) {
	raw, err := os.ReadFile(vulnsFile)
	if err != nil {
		return
	}
	var s validation.VulnScan
	if json.Unmarshal(raw, &s) != nil {
		return
	}
	for i := range inv.Components {
		for _, v := range s.Vulns {
			if v.Module == inv.Components[i].Name {
				inv.Components[i].Vulns = append(inv.Components[i].Vulns, v.ID+" ("+v.Level+")")
			}
		}
	}
}

func signFile(ctx context.Context, cfg ReleaseConfig, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	b, err := SignBundle(ctx, cfg.Signer, cfg.KeyID, data)
	if err != nil {
		return fmt.Errorf("release: sign %s: %w", filepath.Base(path), err)
	}
	return os.WriteFile(path+BundleSuffix, b, 0o644)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// LoadedEvidence is an Evidence with the records it was loaded from.
type LoadedEvidence struct {
	Evidence
	Items *traceability.Items
}

// LoadEvidence reads the quality records and the test run into an Evidence (matrix, policy,
// anomalies, safeguards); the caller adds the release's own facts.
func LoadEvidence(ctx context.Context, root, qmsDir, testJSON, commit string) (*LoadedEvidence, error) {
	in, err := traceability.Load(ctx, traceability.Config{Root: root, QMS: qmsDir, TestJSON: testJSON, Commit: commit})
	if err != nil {
		return nil, err
	}
	le := &LoadedEvidence{Items: in.Items}
	le.Matrix = traceability.Build(in)
	le.Policy = in.Policy
	le.Commit = in.Commit
	if le.Anomalies, err = LoadAnomalies(filepath.Join(qmsDir, "anomalies.yaml")); err != nil {
		return nil, err
	}
	if le.Safeguards, err = LoadSafeguards(filepath.Join(qmsDir, "hipaa-safeguards.yaml")); err != nil {
		return nil, err
	}
	return le, nil
}

var indexTmpl = template.Must(template.New("index").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.R.Manifest.Product}} {{.R.Manifest.Version}} — release</title>
<style>body{font:14px/1.45 system-ui,sans-serif;margin:1.5rem;color:#111;max-width:70rem} table{border-collapse:collapse}
th,td{border:1px solid #bbb;padding:3px 8px;text-align:left;vertical-align:top} th{background:#eee} code{font-size:12px}</style></head><body>
<h1>{{.R.Manifest.Product}} {{.R.Manifest.Version}}</h1>
<p>Commit <code>{{.R.Manifest.Commit}}</code>, released {{.R.Manifest.Created.Format "2006-01-02 15:04 MST"}}, signed with <code>{{.R.Manifest.KeyID}}</code>.
{{.M.Summary.Verified}}/{{.M.Summary.Requirements}} requirements verified; every validation gate passed.</p>
<h2>Evidence (IEC 62304, HIPAA)</h2>
<ul>
<li><a href="evidence/overview.html">Evidence pack</a> — overview and contents; the same as one PDF: <a href="evidence/evidence.pdf">evidence.pdf</a></li>
<li><a href="evidence/requirements.html">Requirements</a>, <a href="evidence/architecture.html">architecture</a>, <a href="evidence/soup.html">SOUP</a>, <a href="evidence/risks.html">risks</a></li>
<li><a href="evidence/traceability.html">Traceability matrix</a> (<a href="evidence/traceability.csv">CSV</a>, <a href="evidence/traceability.json">JSON</a>), <a href="evidence/verification.html">verification report</a>, <a href="evidence/anomalies.html">known anomalies</a></li>
<li><a href="evidence/checklist.html">Release checklist (§5.8)</a>, <a href="evidence/hipaa.html">HIPAA §164.312 safeguards</a></li>
<li>Validation gates: <a href="validation/report.json">report.json</a>, <a href="validation/junit.xml">junit.xml</a></li>
</ul>
<h2>Artefacts</h2>
<table><thead><tr><th>file</th><th>SHA-256</th><th>signature</th></tr></thead><tbody>
<tr><td><a href="vigil">vigil</a></td><td><code>{{.Bin}}</code></td><td><a href="vigil.sigstore.json">vigil.sigstore.json</a></td></tr>
<tr><td><a href="sbom.cdx.json">sbom.cdx.json</a> (CycloneDX 1.6)</td><td><code>{{.SBOM}}</code></td><td><a href="sbom.cdx.json.sigstore.json">sbom.cdx.json.sigstore.json</a></td></tr>
<tr><td><a href="manifest.json">manifest.json</a> ({{len .R.Manifest.Artefacts}} artefacts)</td><td><code>{{.R.ManifestSHA256}}</code></td><td><a href="manifest.json.sigstore.json">manifest.json.sigstore.json</a></td></tr>
<tr><td><a href="build.json">build.json</a> (how to rebuild it)</td><td colspan="2"></td></tr>
<tr><td><a href="release-signing.pub">release-signing.pub</a></td><td colspan="2">the release-signing public key (compare it with the one the vendor publishes)</td></tr>
</tbody></table>
<h2>Transparency log</h2>
<p>The release is recorded as event <code>{{.R.Audit.EventID}}</code> ({{.R.Audit.Action}}, carrying the manifest's SHA-256) in the audit log <code>{{.R.Audit.Origin}}</code>,
batch leaf {{.R.Audit.LeafIndex}}, proven under the signed checkpoint of tree size {{.R.Audit.TreeSize}}: <a href="audit-proof.json">audit-proof.json</a>.</p>
<pre>{{.R.Audit.Checkpoint}}</pre>
<h2>Verify it</h2>
<pre>cosign verify-blob --key release-signing.pub --bundle vigil.sigstore.json --insecure-ignore-tlog vigil
cosign verify-blob --key release-signing.pub --bundle sbom.cdx.json.sigstore.json --insecure-ignore-tlog sbom.cdx.json
cosign verify-blob --key release-signing.pub --bundle manifest.json.sigstore.json --insecure-ignore-tlog manifest.json
vigil release verify . --key published-release-signing.pub --audit-key '{{.R.Audit.VerifierKey}}'</pre>
</body></html>
`))

func writeIndex(path string, r *ReleaseResult, m *traceability.Matrix) error {
	sum := map[string]string{}
	for _, a := range r.Manifest.Artefacts {
		sum[a.Path] = a.SHA256
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	err = indexTmpl.Execute(f, map[string]any{"R": r, "M": m, "Bin": sum[BinaryName], "SBOM": sum[SBOMName]})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
