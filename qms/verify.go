package qms

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
)

// ErrReleaseInvalid is returned by VerifyRelease when any check fails.
var ErrReleaseInvalid = errors.New("release does not verify")

// VerifyOptions configure VerifyRelease.
type VerifyOptions struct {
	// PublicKeyPEM is the release-signing key the verifier trusts (as the vendor publishes
	// it). Empty: the key inside the release (release-signing.pub) is used, and the report
	// says so.
	PublicKeyPEM []byte
	// AuditKey is the audit log's checkpoint verifier key the verifier trusts. Empty: the
	// key in audit-proof.json is used, and the report says so.
	AuditKey string
	// CheckProof checks the audit evidence (cmd/vigil gives the audit chain's checker).
	// Required.
	CheckProof ProofChecker
}

// Check is one verification step.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// VerifyReport is the result of VerifyRelease.
type VerifyReport struct {
	Dir      string   `json:"dir"`
	Version  string   `json:"version"`
	Commit   string   `json:"commit"`
	OK       bool     `json:"ok"`
	Checks   []Check  `json:"checks"`
	Manifest Manifest `json:"-"`
}

// WriteText writes one line per check and the verdict.
func (r *VerifyReport) WriteText(w io.Writer) error {
	for _, c := range r.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "%s %-28s %s\n", mark, c.Name, c.Detail)
	}
	verdict := "OK: the release verifies"
	if !r.OK {
		verdict = "FAILED: the release does not verify"
	}
	_, err := fmt.Fprintf(w, "%s (%s %s, commit %s)\n", verdict, "version", r.Version, r.Commit)
	return err
}

// VerifyRelease checks a release folder offline: the manifest's signature and that of the
// binary and the SBOM (with the trusted release-signing key), the SHA-256 of every artefact
// the manifest lists, that no file was added, and the audit evidence of the release.signed
// event (inclusion proof, checkpoint signature, manifest digest). It returns the report,
// and an error wrapping ErrReleaseInvalid when a check failed.
func VerifyRelease(dir string, opt VerifyOptions) (*VerifyReport, error) {
	if opt.CheckProof == nil {
		return nil, errors.New("qms: VerifyOptions.CheckProof is required")
	}
	rep := &VerifyReport{Dir: dir, OK: true}
	add := func(name string, err error, okDetail string) {
		c := Check{Name: name, OK: err == nil, Detail: okDetail}
		if err != nil {
			c.Detail = err.Error()
			rep.OK = false
		}
		rep.Checks = append(rep.Checks, c)
	}
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(name)))
		if err != nil {
			add("read "+name, err, "")
			return nil
		}
		return b
	}
	key := opt.PublicKeyPEM
	if len(key) == 0 {
		key = read(PublicKeyName)
		add("release-signing key", nil, "the key inside the release (pass --key with the published key to trust another)")
	} else {
		inside, err := os.ReadFile(filepath.Join(dir, PublicKeyName))
		if err == nil && !bytes.Equal(bytes.TrimSpace(inside), bytes.TrimSpace(key)) {
			add("release-signing key", errors.New("the release's release-signing.pub is not the trusted key"), "")
		} else {
			add("release-signing key", nil, "the trusted key given")
		}
	}
	manRaw := read(ManifestName)
	if manRaw == nil || key == nil {
		return rep, fmt.Errorf("%w: %s", ErrReleaseInvalid, dir)
	}
	add("signature "+ManifestName, VerifyBundle(read(ManifestName+BundleSuffix), manRaw, key), "valid Sigstore bundle")
	var man Manifest
	dec := json.NewDecoder(bytes.NewReader(manRaw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&man); err != nil || man.Format != ManifestFormat {
		add("manifest", fmt.Errorf("not a %s manifest: %v", ManifestFormat, err), "")
		return rep, fmt.Errorf("%w: %s", ErrReleaseInvalid, dir)
	}
	rep.Manifest, rep.Version, rep.Commit = man, man.Version, man.Commit
	listed := map[string]bool{}
	bad := 0
	for _, a := range man.Artefacts {
		listed[a.Path] = true
		if path.IsAbs(a.Path) || path.Clean(a.Path) != a.Path || a.Path == ".." || len(a.Path) > 2 && a.Path[:3] == "../" {
			add("artefact "+a.Path, errors.New("path outside the release"), "")
			bad++
			continue
		}
		sum, n, err := fileSHA256(filepath.Join(dir, filepath.FromSlash(a.Path)))
		switch {
		case err != nil:
			add("digest "+a.Path, err, "")
			bad++
		case sum != a.SHA256 || n != a.Size:
			add("digest "+a.Path, fmt.Errorf("SHA-256 %s (%d bytes), manifest says %s (%d bytes)", sum, n, a.SHA256, a.Size), "")
			bad++
		}
	}
	if bad == 0 {
		add("digests", nil, fmt.Sprintf("all %d artefacts match the manifest", len(man.Artefacts)))
	}
	present, err := listArtefacts(dir)
	if err != nil {
		add("files", err, "")
	} else {
		var extra []string
		for _, p := range present {
			if !listed[p.Path] {
				extra = append(extra, p.Path)
			}
		}
		if len(extra) > 0 {
			add("files", fmt.Errorf("not in the manifest: %v", extra), "")
		} else {
			add("files", nil, "no file outside the manifest")
		}
	}
	for _, name := range []string{BinaryName, SBOMName} {
		if !listed[name] || !listed[name+BundleSuffix] {
			add("signature "+name, errors.New("not listed in the manifest"), "")
			continue
		}
		add("signature "+name, VerifyBundle(read(name+BundleSuffix), read(name), key), "valid Sigstore bundle")
	}
	var ev AuditEvidence
	if raw := read(AuditProofName); raw != nil {
		if err := json.Unmarshal(raw, &ev); err != nil {
			add("audit proof", err, "")
		} else {
			sum, _, _ := fileSHA256(filepath.Join(dir, ManifestName))
			trusted := opt.AuditKey
			how := "the trusted audit key given"
			if trusted == "" {
				trusted, how = ev.VerifierKey, "the key inside audit-proof.json (pass --audit-key to trust the published one)"
			}
			add("audit proof", opt.CheckProof(ev, sum, trusted),
				fmt.Sprintf("event %s (%s) proven at leaf %d under the checkpoint of size %d of %s, signed by %s", ev.EventID, ev.Action, ev.LeafIndex, ev.TreeSize, ev.Origin, how))
		}
	}
	if !rep.OK {
		return rep, fmt.Errorf("%w: %s", ErrReleaseInvalid, dir)
	}
	return rep, nil
}
