package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/keys"
)

func init() { subcommands = append(subcommands, newAuditCmd) }

// demoPassphrase seals the demo's local key ring when VIGIL_KEYRING_PASSPHRASE is unset.
// It protects nothing: the demo is not for production (keys.LocalWarning). keys.go and
// sim.go use it too.
const demoPassphrase = "vigil-demo-keyring-not-secret"

// auditSigner opens the key ring (keys.go: Vault Transit, or the local key ring in the data
// directory) and returns the signer of the audit checkpoint key, the ring and a closer for it.
func auditSigner(ctx context.Context, dataDir string, demo bool, rec audit.Recorder) (chain.CheckpointSigner, *keys.Ring, func(context.Context) error, error) {
	ring, closeRing, err := openKeyRing(ctx, dataDir, demo, rec, true)
	if err != nil {
		return nil, nil, nil, err
	}
	s, err := ring.Signer(ctx, keys.AuditCheckpoint)
	if err != nil {
		_ = closeRing(ctx)
		return nil, nil, nil, fmt.Errorf("audit checkpoint key: %w", err)
	}
	return s, ring, closeRing, nil
}

// eventKeys is the key ring's encrypter that wraps the audit writer sessions' keys (the PHI
// key-encryption key, with its own associated data: docs/audit.md "Event authentication").
func eventKeys(ring *keys.Ring) (keys.Encrypter, error) {
	env, err := ring.Envelope(keys.PHIEncryption)
	if err != nil {
		return nil, fmt.Errorf("audit event keys: %w", err)
	}
	return env, nil
}

// authenticateEvents gives the process's audit recorder its session key, wrapped by ring, so
// that every event it records (and those it recorded while the ring opened) is authenticated
// (audit.Outbox.EnableAuthentication). It is called wherever the key ring is opened with a
// recorder; a ring that has no PHI key yet (before `vigil keys init`) is left alone: the
// events of such a command are then unauthenticated, and reported so.
func authenticateEvents(ctx context.Context, rec audit.Recorder, ring *keys.Ring) error {
	o, ok := rec.(*audit.Outbox)
	if !ok || o.Authenticated() {
		return nil
	}
	enc, err := eventKeys(ring)
	if err != nil {
		return err
	}
	err = o.EnableAuthentication(ctx, enc)
	if errors.Is(err, keys.ErrKeyNotFound) {
		slog.WarnContext(ctx, "audit events of this command are not authenticated: the key ring has no PHI key yet")
		return nil
	}
	return err
}

// authenticateCommand opens the key ring (no key is created) for a command that changes
// state through its own recorder (vigil device …, vigil core …), so that its audit events
// carry the tag the shipper requires: an unauthenticated event would be refused from the log
// and raise an incident on the running servers. Without the key ring (no VIGIL_VAULT_ADDR,
// no VIGIL_KEYRING_PASSPHRASE) the command refuses to run.
func authenticateCommand(ctx context.Context, dataDir string, db *database) (func(context.Context) error, error) {
	_, closeRing, err := openKeyRing(ctx, dataDir, false, db.rec, false)
	if err != nil {
		return nil, fmt.Errorf("the key ring (its audit events are authenticated with it): %w", err)
	}
	return closeRing, nil
}

// openAudit starts the audit chain for serve/demo (workers running) or for a command
// (readOnly: idle workers, embedded Trillian without its sequencer). It signs with ring's
// audit checkpoint key, or, when ring is nil, opens the key ring itself.
func openAudit(ctx context.Context, rc runConfig, db *database, ring *keys.Ring, readOnly bool) (*chain.Service, func(context.Context) error, error) {
	var signer chain.CheckpointSigner
	closeRing := func(context.Context) error { return nil }
	var err error
	if ring != nil {
		signer, err = ring.Signer(ctx, keys.AuditCheckpoint)
		if err != nil {
			return nil, nil, fmt.Errorf("audit checkpoint key: %w", err)
		}
	} else if signer, ring, closeRing, err = auditSigner(ctx, rc.DataDir, rc.Demo, db.rec); err != nil {
		return nil, nil, err
	}
	enc, err := eventKeys(ring)
	if err == nil {
		err = authenticateEvents(ctx, db.rec, ring)
	}
	if err != nil {
		_ = closeRing(ctx)
		return nil, nil, err
	}
	ws, err := witnessesFromEnv(ctx)
	if err != nil {
		_ = closeRing(ctx)
		return nil, nil, err
	}
	cfg := chain.Config{Pool: db.pool, Recorder: db.rec, Backlog: db.rec, DatabaseURL: rc.DatabaseURL, TrillianAddr: rc.TrillianAddr, Signer: signer,
		EventKeys: enc, Witnesses: ws, ReadOnly: readOnly, Logger: slog.Default()}
	var svc *chain.Service
	if readOnly {
		svc, err = chain.OpenIdle(ctx, cfg)
	} else {
		svc, err = chain.Open(ctx, cfg)
	}
	if err != nil {
		_ = closeRing(ctx)
		return nil, nil, err
	}
	return svc, func(ctx context.Context) error { return errors.Join(svc.Close(ctx), closeRing(ctx)) }, nil
}

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Verify and export the audit chain, resolve its incidents",
		Long: `Commands of the audit chain: every action Vigil takes is an event in the outbox, shipped in
batches to a Trillian log, under signed checkpoints (docs/audit.md).`,
	}
	cmd.AddCommand(newAuditVerifyCmd(), newAuditExportCmd(), newAuditIncidentsCmd(), newAuditWitnessCmd(), newAuditBaselineCmd())
	return cmd
}

// addAuditDBFlags adds the flags of commands that read the installation's audit chain.
func addAuditDBFlags(cmd *cobra.Command, rc *runConfig) {
	cmd.Flags().StringVar(&rc.DataDir, "data-dir", envOr("VIGIL_DATA_DIR", "./.vigil"), "directory of the local key ring (env VIGIL_DATA_DIR)")
	cmd.Flags().StringVar(&rc.TrillianAddr, "trillian-addr", envOr("VIGIL_TRILLIAN_ADDR", ""), "external Trillian log server host:port; empty runs it embedded (env VIGIL_TRILLIAN_ADDR)")
}

func newAuditVerifyCmd() *cobra.Command {
	var (
		rc       runConfig
		asJSON   bool
		packFile string
		key      string
		wspecs   []string
		deep     bool
		state    string
		full     bool
	)
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Verify the audit trail end to end (or an exported pack, offline)",
		Long: `Verify recomputes every event's leaf from its database row, checks each batch leaf's inclusion
under the latest signed checkpoint, checks consistency across all stored checkpoints and with
the live log, and reports events not yet in the log (with their age), rows modified, deleted
or added without a leaf, a truncated outbox and a forked log. With the key ring it checks each
event's authentication tag (forged or back-dated events: unauthenticated), each writer
session's numbering (a committed action whose event was deleted: sequence_gap) and erasures
before the retention age (erased_early); it cross-checks domain rows (alarms, device keys, rule
versions, uploads, sites, wards, patients' ward and discharge, care teams, webhooks, NEWS2
scores, and the rows that carry the event that last wrote them: devices, assignments,
patients, users, policy lines, service accounts, API tokens, break-glass grants, device
enrollment links, patients' SpO2 scale and oxygen, wards' NEWS2 settings; rows written before
they carried it are adopted once by 'vigil audit baseline') against what their events say
(unaudited_change, domain_mismatch; --deep
also reads every stored observation: counted against its upload's event and its values against
the digest the event committed to, naming a changed one). With --witness KEY@URL it requires the witness's
cosignature on the latest checkpoint and asks the witness whether it cosigned a larger one (a
truncated or rolled-back log: witness). docs/audit.md lists every finding.

With --state FILE it verifies incrementally: the file (kept by the auditor, outside the
database) remembers the last verified checkpoint, the log's leaves under it (a compact range),
the last event row and each writer's numbering; the next run checks only what came after
(new checkpoints consistent with the remembered one, new leaves, batches and events) and
skips the domain cross-check. A run without findings writes the new state; a missing file, or
--full, runs a full verification first. Run a full one regularly (e.g. weekly): an incremental
run does not re-read events it verified before.

With --pack it verifies an audit pack written by 'vigil audit export', offline: no database,
no log, no trust in the server. Give --key (the operator's published verifier key) to check
the pack's signer; without it the key inside the pack is used and shown.

Exit status: 0 when the trail verifies, 1 on any finding, 2 when verification could not run.`,
		Example: `  VIGIL_DATABASE_URL=… VIGIL_KEYRING_PASSPHRASE=… vigil audit verify --json
  vigil audit verify --state /srv/audit/verify-state.json   # incremental (full the first time)
  vigil audit verify --state /srv/audit/verify-state.json --full
  vigil audit verify --pack audit-2026-11.pack --key 'vigil.audit/…+1234abcd+AAAA…'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			if packFile != "" {
				data, err := os.ReadFile(packFile)
				if err != nil {
					return err
				}
				rep, err := chain.VerifyPack(data, key)
				if err != nil {
					if asJSON {
						_ = json.NewEncoder(out).Encode(map[string]any{"ok": false, "error": err.Error()})
					} else {
						fmt.Fprintf(out, "FAILED: %v\n", err)
					}
					return &exitError{code: 1, err: err}
				}
				if asJSON {
					return json.NewEncoder(out).Encode(map[string]any{"ok": true, "pack": rep})
				}
				fmt.Fprintf(out, "pack of %s, signed by %s\n", rep.Origin, rep.VerifierKey)
				fmt.Fprintf(out, "range %s – %s; %d checkpoints (tree size %d); %d batches; %d events (%d pending, not in the pack)\n",
					rep.From.Format(time.RFC3339), rep.To.Format(time.RFC3339), rep.Checkpoints, rep.TreeSize, rep.Batches, len(rep.Events), rep.Pending)
				for _, e := range rep.Events {
					fmt.Fprintf(out, "  %s %s %-28s %s/%s %s leaf %d\n", e.Time.Format(time.RFC3339Nano), e.ID, e.Action, e.ActorKind, e.ObjectType, e.Outcome, e.LeafIndex)
				}
				fmt.Fprintln(out, "OK: every event is proven under the signed checkpoints")
				return nil
			}
			rc.DatabaseURL = envOrCtx(ctx, "VIGIL_DATABASE_URL", "")
			db, err := openDB(ctx, rc.DatabaseURL)
			if err != nil {
				return err
			}
			defer db.Close()
			svc, closeSvc, err := openAudit(ctx, rc, db, nil, true)
			if err != nil {
				return err
			}
			defer func() { _ = closeSvc(context.WithoutCancel(ctx)) }()
			vcfg := svc.VerifyConfig()
			vcfg.Deep = deep
			if state != "" && !full {
				if vcfg.Since, err = chain.ReadVerifyState(state); err != nil {
					return err
				}
			}
			if len(wspecs) > 0 {
				if vcfg.Witnesses, err = parseWitnesses(wspecs); err != nil {
					return err
				}
			}
			rep, err := chain.Verify(ctx, vcfg)
			if err != nil {
				return err
			}
			if asJSON {
				err = json.NewEncoder(out).Encode(rep)
			} else {
				err = rep.WriteText(out)
			}
			if err != nil {
				return err
			}
			if !rep.OK {
				return &exitError{code: 1, err: fmt.Errorf("audit verify: %d finding(s)", len(rep.Findings))}
			}
			if state != "" && rep.State != nil {
				return chain.WriteVerifyState(state, rep.State)
			}
			return nil
		},
	}
	addAuditDBFlags(cmd, &rc)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.Flags().StringVar(&packFile, "pack", "", "verify this audit pack offline instead of the database")
	cmd.Flags().StringVar(&key, "key", "", "with --pack: the verifier key to trust (default: the pack's own, shown)")
	cmd.Flags().StringArrayVar(&wspecs, "witness", nil, "require this witness: KEY or KEY@URL (repeatable; default VIGIL_AUDIT_WITNESSES)")
	cmd.Flags().BoolVar(&deep, "deep", false, "also check every stored observation against its upload's event (count and values)")
	cmd.Flags().StringVar(&state, "state", "", "verify incrementally from this state file, and write the new state to it when the trail verifies")
	cmd.Flags().BoolVar(&full, "full", false, "with --state: verify in full (ignore the remembered state), then write a new one")
	return cmd
}

func newAuditExportCmd() *cobra.Command {
	var (
		rc        runConfig
		from, to  string
		outFile   string
		revealIDs bool
		reportDir string // audit_report.go
		patient   string
	)
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Write a signed, self-contained audit pack of a time range",
		Long: `Export writes the events of [--from, --to) that are proven under the latest checkpoint, with
their batch sub-proofs, the batch leaves' inclusion proofs, every signed checkpoint with its
consistency proof, and the public key, as one signed file. 'vigil audit verify --pack FILE'
verifies it offline. Payloads are never exported; --reveal-ids adds the plaintext actor,
object and request ids and source addresses (with their salts) so they can be checked too.

With --report DIR it also writes a report a person can read, DIR/audit-report.html and .pdf:
the period, the checkpoint, event counts by type and by actor, every event, and the result of
verifying the pack. With --patient ID it writes, instead of a pack, that patient's access
history (every event whose object is the patient, each with its proof checked) as
DIR/patient-ID.html and .pdf, and the proofs as DIR/patient-ID-proofs.json (HIPAA accounting
of disclosures); --report is then required.`,
		Example: `  vigil audit export --from 2026-11-01T00:00:00Z --to 2026-12-01T00:00:00Z --out audit-2026-11.pack --report audit-2026-11
  vigil audit export --from 2026-01-01T00:00:00Z --to 2027-01-01T00:00:00Z --patient 0190… --report disclosures`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var opt chain.ExportOptions
			var err error
			if opt.From, err = time.Parse(time.RFC3339Nano, from); err != nil {
				return fmt.Errorf("--from: %w", err)
			}
			if opt.To, err = time.Parse(time.RFC3339Nano, to); err != nil {
				return fmt.Errorf("--to: %w", err)
			}
			opt.RevealIDs = revealIDs
			rc.DatabaseURL = envOrCtx(ctx, "VIGIL_DATABASE_URL", "")
			db, err := openDB(ctx, rc.DatabaseURL)
			if err != nil {
				return err
			}
			defer db.Close()
			svc, closeSvc, err := openAudit(ctx, rc, db, nil, true)
			if err != nil {
				return err
			}
			defer func() { _ = closeSvc(context.WithoutCancel(ctx)) }()
			if patient != "" {
				if reportDir == "" {
					return errors.New("--patient needs --report DIR")
				}
				h, p, n, err := writePatientReport(ctx, svc, reportDir, patient, opt.From, opt.To, time.Now())
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%d events of patient %s: %s, %s\n", n, patient, h, p)
				return nil
			}
			var pack bytes.Buffer
			var w io.Writer = cmd.OutOrStdout()
			if reportDir != "" {
				w = io.MultiWriter(w, &pack)
			}
			var f *os.File
			if outFile != "" && outFile != "-" {
				if f, err = os.OpenFile(outFile, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err != nil {
					return err
				}
				w = f
				if reportDir != "" {
					w = io.MultiWriter(f, &pack)
				}
			}
			n, err := svc.Export(ctx, w, opt)
			if f != nil {
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					_ = os.Remove(outFile)
				}
			}
			if err != nil {
				return err
			}
			slog.InfoContext(ctx, "audit pack written", slog.Int("events", n), slog.String("file", outFile))
			if reportDir != "" {
				h, p, err := writePackReport(reportDir, pack.Bytes(), time.Now())
				if err != nil {
					return err
				}
				slog.InfoContext(ctx, "audit report written", slog.String("html", h), slog.String("pdf", p))
			}
			return nil
		},
	}
	addAuditDBFlags(cmd, &rc)
	cmd.Flags().StringVar(&from, "from", "", "start of the range (RFC 3339, inclusive)")
	cmd.Flags().StringVar(&to, "to", "", "end of the range (RFC 3339, exclusive)")
	cmd.Flags().StringVar(&outFile, "out", "-", "file to write (must not exist); - for stdout")
	cmd.Flags().BoolVar(&revealIDs, "reveal-ids", false, "include plaintext identifiers with their salts (never payloads)")
	cmd.Flags().StringVar(&reportDir, "report", "", "also write a human-readable report (HTML and PDF) into this folder")
	cmd.Flags().StringVar(&patient, "patient", "", "with --report: the access history of this patient id instead of a pack")
	_ = cmd.MarkFlagRequired("from")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

func newAuditIncidentsCmd() *cobra.Command {
	var (
		rc      runConfig
		resolve int64
		note    string
	)
	cmd := &cobra.Command{
		Use:   "incidents",
		Short: "List the audit chain's incidents, or resolve one after investigating it",
		Long: `An incident is a loud failure of the audit chain: the log no longer extends the last signed
checkpoint (a fork or a rewrite). While one is unresolved /readyz fails and verify reports it.
Resolve it only after investigating (and, say, restoring the log from a backup): resolving is
recorded in the audit trail with who did it and the note, and does not hide the fork from
verify.`,
		Example: `  vigil audit incidents
  vigil audit incidents --resolve 3 --note "log restored from the 02:00 backup; see ticket 123"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			rc.DatabaseURL = envOrCtx(ctx, "VIGIL_DATABASE_URL", "")
			db, err := openDB(ctx, rc.DatabaseURL)
			if err != nil {
				return err
			}
			defer db.Close()
			svc, closeSvc, err := openAudit(ctx, rc, db, nil, true)
			if err != nil {
				return err
			}
			defer func() { _ = closeSvc(context.WithoutCancel(ctx)) }()
			out := cmd.OutOrStdout()
			if resolve != 0 {
				if note == "" {
					return errors.New("--note is required with --resolve: say what was found and done")
				}
				if err := svc.ResolveIncident(ctx, resolve, cliActor(), note); err != nil {
					return err
				}
				fmt.Fprintf(out, "incident %d resolved\n", resolve)
				return nil
			}
			list, err := svc.Incidents(ctx)
			if err != nil {
				return err
			}
			if len(list) == 0 {
				fmt.Fprintln(out, "no incidents")
			}
			for _, i := range list {
				state := "UNRESOLVED"
				if i.ResolvedAt != nil {
					state = "resolved " + i.ResolvedAt.Format(time.RFC3339)
				}
				fmt.Fprintf(out, "%d  %s  %s  %s\n    %s\n", i.ID, i.At.Format(time.RFC3339), i.Kind, state, i.Detail)
			}
			return nil
		},
	}
	addAuditDBFlags(cmd, &rc)
	cmd.Flags().Int64Var(&resolve, "resolve", 0, "resolve the incident with this id")
	cmd.Flags().StringVar(&note, "note", "", "with --resolve: what was found and done (recorded in the audit trail)")
	return cmd
}
