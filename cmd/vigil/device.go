package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/server"
)

// `vigil device …`: the administrators' commands of the device registry. They work on the
// database at VIGIL_DATABASE_URL directly (every change audited, the actor being the
// operating-system user running the command), so they work with the server down too.

func init() { subcommands = append(subcommands, newDeviceCmd) }

func newDeviceCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "device",
		Short: "Administer the device registry: register, enroll, suspend, assign devices",
		Long: `Administer the device registry in the database at VIGIL_DATABASE_URL.

Every change is recorded in the audit trail with the operating-system user as the actor,
its event authenticated with the installation's key ring (VIGIL_VAULT_ADDR, or the local key
ring in --data-dir with VIGIL_KEYRING_PASSPHRASE): without it the command refuses to run.
A device's life: register it, issue an enrollment token and give it to the device (the
device makes its key and enrolls with the token over POST /api/v1/devices/enroll; MQTT carries uploads only),
assign it to a patient; suspend it (takes effect at once), reactivate it, or decommission
it for good.`,
		Example: `  vigil device register --serial SN-0042 --model "VM-100" --firmware 2.1.0
  vigil device token 0192f5a0-7c1e-7b3a-9c44-1d2e3f405162
  vigil device assign 0192f5a0-7c1e-7b3a-9c44-1d2e3f405162 --patient 0192f5a1-…
  vigil device suspend 0192f5a0-7c1e-7b3a-9c44-1d2e3f405162 --reason "reported lost"
  vigil device list --status active`,
	}
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	var dataDir string
	cmd.PersistentFlags().StringVar(&dataDir, "data-dir", envOr("VIGIL_DATA_DIR", "./.vigil"), "directory of the local key ring (env VIGIL_DATA_DIR): the command's audit events are authenticated with it")
	withSvc := func(run func(ctx context.Context, svc *devices.Service, o devices.Origin, out io.Writer, args []string) error) func(*cobra.Command, []string) error {
		return func(c *cobra.Command, args []string) error {
			ctx := c.Context()
			db, err := openDB(ctx, envOrCtx(ctx, "VIGIL_DATABASE_URL", ""))
			if err != nil {
				return err
			}
			defer db.Close()
			closeRing, err := authenticateCommand(ctx, dataDir, db)
			if err != nil {
				return err
			}
			defer func() { _ = closeRing(ctx) }()
			svc, err := devices.New(devices.Config{Pool: db.pool, Recorder: db.rec, NoChangeListener: true})
			if err != nil {
				return err
			}
			defer func() {
				cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer cancel()
				_ = svc.Close(cctx)
			}()
			return run(ctx, svc, cliOrigin(), c.OutOrStdout(), args)
		}
	}
	printDev := func(out io.Writer, d any) error {
		if asJSON {
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(d)
		}
		return printDevices(out, d)
	}

	var nd devices.NewDevice
	register := &cobra.Command{
		Use:   "register",
		Short: "Register a device (active, not enrolled yet)",
		Args:  cobra.NoArgs,
		RunE: withSvc(func(ctx context.Context, svc *devices.Service, o devices.Origin, out io.Writer, _ []string) error {
			d, err := svc.Register(ctx, o, nd)
			if err != nil {
				return err
			}
			return printDev(out, d)
		}),
	}
	register.Flags().StringVar(&nd.Serial, "serial", "", "serial number (unique)")
	register.Flags().StringVar(&nd.Model, "model", "", "model")
	register.Flags().StringVar(&nd.Firmware, "firmware", "", "firmware version")
	for _, f := range []string{"serial", "model", "firmware"} {
		_ = register.MarkFlagRequired(f)
	}

	var status string
	list := &cobra.Command{
		Use:   "list",
		Short: "List devices",
		Args:  cobra.NoArgs,
		RunE: withSvc(func(ctx context.Context, svc *devices.Service, _ devices.Origin, out io.Writer, _ []string) error {
			var all []devices.Device
			after := uuid.Nil
			for {
				page, err := svc.List(ctx, status, after, 1000)
				if err != nil {
					return err
				}
				all = append(all, page...)
				if len(page) < 1000 {
					break
				}
				after = page[len(page)-1].ID
			}
			return printDev(out, all)
		}),
	}
	list.Flags().StringVar(&status, "status", "", "only devices with this status (active, suspended, decommissioned)")

	show := &cobra.Command{
		Use:   "show DEVICE-ID",
		Short: "Show a device with its keys and patient assignments",
		Args:  cobra.ExactArgs(1),
		RunE: withSvc(func(ctx context.Context, svc *devices.Service, _ devices.Origin, out io.Writer, args []string) error {
			id, err := parseDeviceID(args[0])
			if err != nil {
				return err
			}
			d, err := svc.Get(ctx, id)
			if err != nil {
				return err
			}
			ks, err := svc.Keys(ctx, id)
			if err != nil {
				return err
			}
			as, err := svc.Assignments(ctx, id)
			if err != nil {
				return err
			}
			if asJSON {
				return printDev(out, map[string]any{"device": d, "keys": ks, "assignments": as})
			}
			if err := printDevices(out, d); err != nil {
				return err
			}
			fmt.Fprintln(out, "\nkeys:")
			for _, k := range ks {
				state := "current"
				if k.RetiredAt != nil {
					state = "retired " + k.RetiredAt.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(out, "  v%d  %x  created %s  %s\n", k.Version, k.PublicKey, k.CreatedAt.UTC().Format(time.RFC3339), state)
			}
			fmt.Fprintln(out, "\npatient assignments:")
			for _, a := range as {
				p, end := "(none)", "now"
				if a.PatientID != nil {
					p = a.PatientID.String()
				}
				if a.EndedAt != nil {
					end = a.EndedAt.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(out, "  %s  %s .. %s  by %s\n", p, a.StartedAt.UTC().Format(time.RFC3339), end, a.ActorID)
			}
			return nil
		}),
	}

	token := &cobra.Command{
		Use:   "token DEVICE-ID",
		Short: "Issue a one-time enrollment token for a device (printed once; keep it secret)",
		Args:  cobra.ExactArgs(1),
		RunE: withSvc(func(ctx context.Context, svc *devices.Service, o devices.Origin, out io.Writer, args []string) error {
			id, err := parseDeviceID(args[0])
			if err != nil {
				return err
			}
			tok, exp, err := svc.IssueEnrollmentToken(ctx, o, id)
			if err != nil {
				return err
			}
			if asJSON {
				return printDev(out, map[string]any{"device_id": id, "token": tok, "expires_at": exp})
			}
			fmt.Fprintf(out, "%s\n(valid until %s, usable once)\n", tok, exp.UTC().Format(time.RFC3339))
			return nil
		}),
	}

	statusCmd := func(use, short, to string) *cobra.Command {
		var reason string
		c := &cobra.Command{
			Use:   use + " DEVICE-ID",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: withSvc(func(ctx context.Context, svc *devices.Service, o devices.Origin, out io.Writer, args []string) error {
				id, err := parseDeviceID(args[0])
				if err != nil {
					return err
				}
				d, err := svc.SetStatus(ctx, o, id, to, reason)
				if err != nil {
					return err
				}
				return printDev(out, d)
			}),
		}
		c.Flags().StringVar(&reason, "reason", "", "why (recorded in the audit trail)")
		return c
	}

	var patient string
	var none bool
	assign := &cobra.Command{
		Use:   "assign DEVICE-ID (--patient PATIENT-ID | --none)",
		Short: "Assign a device to a patient, or unassign it",
		Args:  cobra.ExactArgs(1),
		RunE: withSvc(func(ctx context.Context, svc *devices.Service, o devices.Origin, out io.Writer, args []string) error {
			id, err := parseDeviceID(args[0])
			if err != nil {
				return err
			}
			var p *uuid.UUID
			switch {
			case none && patient == "":
			case !none && patient != "":
				pid, err := uuid.Parse(patient)
				if err != nil {
					return fmt.Errorf("--patient %q is not a UUID", patient)
				}
				p = &pid
			default:
				return fmt.Errorf("give exactly one of --patient or --none")
			}
			d, err := svc.AssignPatient(ctx, o, id, p)
			if err != nil {
				return err
			}
			return printDev(out, d)
		}),
	}
	assign.Flags().StringVar(&patient, "patient", "", "patient id")
	assign.Flags().BoolVar(&none, "none", false, "unassign the device")

	cmd.AddCommand(register, list, show, token, assign,
		statusCmd("suspend", "Suspend a device: its uploads are refused from now on", devices.StatusSuspended),
		statusCmd("reactivate", "Reactivate a suspended device", devices.StatusActive),
		statusCmd("decommission", "Decommission a device for good: its key is retired, its patient unassigned", devices.StatusDecommissioned))
	return cmd
}

func parseDeviceID(s string) (uuid.UUID, error) {
	id, err := uuid.Parse(s)
	if err != nil {
		return uuid.Nil, fmt.Errorf("device id %q is not a UUID", s)
	}
	return id, nil
}

// cliOrigin is the audit origin of a command run by an operator.
func cliOrigin() devices.Origin {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return devices.Origin{Actor: audit.Actor{Kind: audit.ActorUser, ID: "os:" + name, AuthMethod: "database-credentials"},
		RequestID: "cli-" + uuid.NewString(), SourceAddr: host}
}

func printDevices(out io.Writer, v any) error {
	var ds []devices.Device
	switch x := v.(type) {
	case *devices.Device:
		ds = []devices.Device{*x}
	case []devices.Device:
		ds = x
	default:
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSERIAL\tMODEL\tFIRMWARE\tSTATUS\tKEY\tLAST SEQ\tPATIENT")
	for _, d := range ds {
		p := "-"
		if d.PatientID != nil {
			p = d.PatientID.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\tv%d\t%d\t%s\n", d.ID, d.Serial, d.Model, d.Firmware, d.Status, d.KeyVersion, d.LastSeq, p)
	}
	return tw.Flush()
}

// wireDevices builds the device registry and upload ingestion for serve/demo: verified
// uploads go to core, receipts are signed with the key ring's receipt-signing key, proofs
// come from the audit chain, and the audit recorder — to which the chain's shipper reports the
// backlog — is the global back-pressure (audit.PushbackPolicy).
func wireDevices(ctx context.Context, sys *system, srvCfg *server.Config, cs *core.Service, ring *keys.Ring, au *chain.Service, committers int) (*devices.Service, error) {
	signer, err := ring.Signer(ctx, keys.ReceiptSigning)
	if err != nil {
		return nil, fmt.Errorf("devices: receipt signer: %w", err)
	}
	// Receipts are kept as long as core keeps upload provenance, waveforms as long as
	// observations (VIGIL_RETENTION_UPLOADS_DAYS, VIGIL_RETENTION_OBSERVATIONS_DAYS).
	ret := cs.Retention()
	cfg := devices.Config{Pool: sys.pool, Recorder: sys.rec, Ingester: cs, ReceiptSigner: signer, Logger: slog.Default(),
		Retention: devices.Retention{Receipts: ret.Uploads, Waveforms: ret.Observations}, Committers: committers, Listener: sys.listen}
	if au != nil {
		cfg.Proofs = auditProofs{au}
	}
	svc, err := devices.New(cfg)
	if err != nil {
		return nil, err
	}
	lctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { // once per database: on the replica leading the background passes (ha.go)
		defer close(done)
		onLeader(lctx, sys.leader, time.Hour, func(ctx context.Context) {
			p, err := svc.EnforceRetention(ctx)
			if err != nil && ctx.Err() == nil {
				slog.ErrorContext(ctx, "devices: retention", slog.String("error", err.Error()))
			}
			if p.Receipts+p.Waveforms > 0 {
				slog.InfoContext(ctx, "devices: retention", slog.Int64("receipts_purged", p.Receipts), slog.Int64("waveforms_purged", p.Waveforms))
			}
		})
	}()
	// Closers run in reverse: the retention loop stops before the service closes.
	sys.closers = append(sys.closers, svc.Close, func(context.Context) error { stop(); <-done; return nil })
	srvCfg.Devices = svc
	return svc, nil
}

// auditProofs answers upload proofs from the audit chain.
type auditProofs struct{ au *chain.Service }

func (a auditProofs) EventProof(ctx context.Context, id uuid.UUID) (any, error) {
	p, err := a.au.Event(ctx, id)
	if err != nil {
		return nil, err
	}
	// Only a complete proof is an answer: the event in its batch, the batch leaf in the log
	// and its inclusion under a signed checkpoint ("proven"). Before that (outbox, sealed, or
	// integrated but after the latest checkpoint) the proof is pending.
	if p.Status != "proven" || p.Batch == nil || p.Batch.LeafIndex == nil || p.Batch.Checkpoint == "" {
		return nil, fmt.Errorf("audit event %s is %s: %w", id, p.Status, devices.ErrProofPending)
	}
	return p, nil
}

func (a auditProofs) EventLeafIndex(ctx context.Context, id uuid.UUID) (int64, bool, error) {
	p, err := a.au.Event(ctx, id)
	if err != nil {
		return 0, false, err
	}
	if p.Batch == nil || p.Batch.LeafIndex == nil {
		return 0, false, nil
	}
	return *p.Batch.LeafIndex, true, nil
}
