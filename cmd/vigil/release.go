package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/keys/sigstorekeys"
	"github.com/vigilhealth/vigil/qms"
)

func init() { subcommands = append(subcommands, newReleaseCmd) }

func newReleaseCmd() *cobra.Command {
	var (
		cfg qms.ReleaseConfig
		rc  runConfig
	)
	cmd := &cobra.Command{
		Use:   "release",
		Short: "Make a signed, regulated release with its IEC 62304 and HIPAA evidence",
		Long: `Release builds the vigil binary reproducibly (trimmed paths, empty build id, no cgo, the
toolchain recorded in build.json), runs every validation gate on it (see 'vigil validate') and
refuses to release when one fails. It then writes into --out:

  vigil, sbom.cdx.json          the binary and its CycloneDX 1.6 SBOM
  evidence/                     the evidence pack: IEC 62304 documents and the HIPAA §164.312
                                table as HTML pages and one PDF (evidence/evidence.pdf)
  validation/                   every gate's evidence, report.json, junit.xml
  build.json, manifest.json     how it was built; the SHA-256 of every artefact
  *.sigstore.json               Sigstore bundles of the binary, the SBOM and the manifest,
                                signed with the release-signing key (Vault Transit or the
                                local key ring) through each file's SHA-256 digest, so only
                                32 bytes go to Vault whatever the size; stock cosign
                                verifies them
  release-signing.pub           the public key
  audit-proof.json              the release.signed event in Vigil's own audit log (carrying the
                                manifest's SHA-256), its inclusion proof and signed checkpoint
  index.html                    the page that links everything

It needs the installation's database (VIGIL_DATABASE_URL) for the audit log, and its keys
(VIGIL_VAULT_ADDR, or the local key ring in --data-dir with VIGIL_KEYRING_PASSPHRASE).
'vigil release verify DIR' checks a release offline. See docs/quality.md.`,
		Example: `  make unit fuzz
  VIGIL_DATABASE_URL=… VIGIL_KEYRING_PASSPHRASE=… bin/vigil release --out dist/ --vulndb path/to/osv
  bin/vigil release verify dist/ --key published-release-signing.pub`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg.Root, cfg.QMS = cfg.Validation.Root, cfg.Validation.QMS
			cfg.Validation.DatabaseAdminURL = envOrCtx(ctx, "VIGIL_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable")
			rc.DatabaseURL = envOrCtx(ctx, "VIGIL_DATABASE_URL", "")
			db, err := openDB(ctx, rc.DatabaseURL)
			if err != nil {
				return err
			}
			defer db.Close()
			ring, closeRing, err := openKeyRing(ctx, rc.DataDir, false, db.rec, true)
			if err != nil {
				return err
			}
			defer func() { _ = closeRing(context.WithoutCancel(ctx)) }()
			sv, err := sigstorekeys.New(ctx, ring, keys.ReleaseSigning)
			if err != nil {
				return fmt.Errorf("release-signing key: %w", err)
			}
			cfg.Signer, cfg.KeyID = sv, sv.KeyID()
			svc, closeSvc, err := openReleaseAudit(ctx, rc, db, ring)
			if err != nil {
				return err
			}
			defer func() { _ = closeSvc(context.WithoutCancel(ctx)) }()
			cfg.Log = auditReleaseLog{svc: svc, rec: db.rec}
			res, err := qms.Release(ctx, cfg)
			w := cmd.OutOrStdout()
			if res != nil && res.Validation != nil {
				_ = res.Validation.WriteTable(w)
			}
			if err != nil {
				if errors.Is(err, qms.ErrReleaseRefused) {
					return &exitError{code: 1, err: err}
				}
				return err
			}
			fmt.Fprintf(w, "released %s %s (commit %s) into %s\nmanifest SHA-256 %s, recorded as audit event %s (leaf %d, checkpoint of size %d)\nopen %s\n",
				res.Manifest.Product, res.Manifest.Version, res.Manifest.Commit, res.Dir, res.ManifestSHA256, res.Audit.EventID,
				res.Audit.LeafIndex, res.Audit.TreeSize, filepath.Join(res.Dir, qms.IndexName))
			return nil
		},
	}
	addValidationFlags(cmd, &cfg.Validation)
	cmd.Flags().StringVar(&cfg.Out, "out", "dist", "folder to write the release into (must not exist or be empty)")
	cmd.Flags().StringVar(&cfg.Version, "version", version, "version of the release (default: this binary's version)")
	addAuditDBFlags(cmd, &rc)
	cmd.AddCommand(newReleaseVerifyCmd())
	return cmd
}

func newReleaseVerifyCmd() *cobra.Command {
	var (
		keyFile, auditKey string
		asJSON            bool
	)
	cmd := &cobra.Command{
		Use:   "verify DIR",
		Short: "Verify a release offline: signatures, digests, audit proof and checkpoint",
		Long: `Verify checks a release folder made by 'vigil release' with no network, no database and no
trust in the folder: the Sigstore bundles of the manifest, the binary and the SBOM against the
release-signing key (--key, the key the vendor publishes; without it the release's own key is
used and said so), the SHA-256 of every artefact against the manifest, that nothing was added,
and the audit proof: the release.signed event's inclusion under the signed checkpoint (--audit-key,
the audit log's published verifier key), and that the event records this manifest's digest.

Exit status: 0 when the release verifies, 1 when a check fails, 2 when it could not run.`,
		Example: `  vigil release verify dist/ --key release-signing.pub --audit-key 'vigil.audit/…+1234abcd+AAAA…'`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opt := qms.VerifyOptions{AuditKey: auditKey, CheckProof: checkReleaseProof}
			if keyFile != "" {
				b, err := os.ReadFile(keyFile)
				if err != nil {
					return err
				}
				opt.PublicKeyPEM = b
			}
			rep, verr := qms.VerifyRelease(args[0], opt)
			if rep == nil {
				return verr
			}
			w := cmd.OutOrStdout()
			if asJSON {
				if err := json.NewEncoder(w).Encode(rep); err != nil {
					return err
				}
			} else if err := rep.WriteText(w); err != nil {
				return err
			}
			if verr != nil {
				return &exitError{code: 1, err: verr}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "PEM file of the trusted release-signing public key")
	cmd.Flags().StringVar(&auditKey, "audit-key", "", "the trusted verifier key of the audit log's checkpoints")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}
