package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/internal/pgcluster"
	"github.com/vigilhealth/vigil/internal/schema"
)

// demoHooks are run by `vigil demo` once the server is up (the device fleet simulator, say).
// Areas append to it from their own files. A hook MUST return promptly and stop its own work
// when ctx ends.
var demoHooks []func(ctx context.Context, url string, sys *system) error

func newDemoCmd() *cobra.Command {
	var rc runConfig
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole system on this machine with one command (not for production)",
		Long: `Run the whole Vigil system on this machine: the database, the server, the audit chain and
sample devices.

With VIGIL_DATABASE_URL set, demo uses that server. Without it, demo starts a private,
throwaway PostgreSQL cluster under <data-dir>/postgres with the system's own initdb and
pg_ctl (run as the 'postgres' user when demo runs as root), migrates it, starts the server
with the embedded Trillian audit log, and prints its URL.

Like a production installation, the demo uses the database roles of docs/operations.md:
on the private cluster it makes the owner vigil_owner (the database "vigil" and its tables;
it migrates and keeps the partitions made) and the server's login "vigil", a member of
vigil_app, which may read and append the audit trail but not rewrite or delete it. With
VIGIL_DATABASE_URL it migrates as that login and serves as it with the role vigil_app when
the login may take it (else it says so and serves with the login's privileges). It then enrolls a fleet of
simulated bedside monitors (VIGIL_DEMO_PATIENTS, default 10; scenarios stable, sepsis,
hypoxia, bradycardia, sensor artifact, device offline) that upload signed vitals, so NEWS2,
threshold and no-data alarms fire within a few minutes. With VIGIL_MQTT_URL set (e.g.
mqtt://127.0.0.1:1883) half of the fleet uploads over MQTT.

People sign in like in production: demo seeds the site "Demo Hospital" with wards A and B,
places the simulated patients on them alternately, and creates six users — a clinician on
each ward, a quality officer, an auditor, a device technician and an administrator — with the password vigil-demo-password
and a TOTP secret each, printed on the console with a curl line to sign in.

Ctrl-C (or SIGTERM) shuts everything down, the private cluster included.

The demo keeps its keys in a local key ring in the data directory: it is not for production.

FHIR R4 is at /fhir/R4 (docs/interop.md). The demo listens for HL7 ADT on 127.0.0.1:2575
unless VIGIL_HL7_LISTEN says otherwise; VIGIL_HL7_ORU_DEST sends the vitals as ORU^R01.` + interopHelp,
		Example: `  vigil demo
  vigil demo --listen 127.0.0.1:9090 --data-dir /var/tmp/vigil-demo`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rc.Demo = true
			return runDemo(cmd.Context(), rc)
		},
	}
	addRunFlags(cmd, &rc)
	// One process, no load balancer: Ctrl-C stops at once unless asked otherwise.
	rc.Limits.DrainDelay = 0
	cmd.Flags().Lookup("drain-delay").DefValue = "0s"
	return cmd
}

func runDemo(ctx context.Context, rc runConfig) (err error) {
	rc.DatabaseURL = envOrCtx(ctx, "VIGIL_DATABASE_URL", "")
	private := rc.DatabaseURL == ""
	var ownerURL string // the URL the demo migrates with; rc.DatabaseURL becomes the server's
	if private {
		dir := filepath.Join(rc.DataDir, "postgres")
		slog.InfoContext(ctx, "starting a private PostgreSQL cluster", slog.String("dir", dir))
		cl, err := pgcluster.Start(ctx, pgcluster.Config{Dir: dir})
		if err != nil {
			if errors.Is(err, pgcluster.ErrNotInstalled) {
				return fmt.Errorf("%w: install PostgreSQL (apt-get install postgresql) or set VIGIL_DATABASE_URL", err)
			}
			return err
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			if serr := cl.Stop(sctx); serr != nil {
				slog.Error("stop private PostgreSQL", slog.String("error", serr.Error()))
				err = errors.Join(err, serr)
				return
			}
			slog.Info("private PostgreSQL stopped")
		}()
		// The roles of docs/operations.md "Database roles": migrate as the owner, serve as
		// the login in vigil_app (demo_roles.go).
		if ownerURL, rc.DatabaseURL, err = demoClusterRoles(ctx, cl.URL()); err != nil {
			return err
		}
	} else {
		ownerURL = rc.DatabaseURL
	}
	pool, err := openPool(ctx, ownerURL)
	if err != nil {
		return err
	}
	applied, err := schema.Migrate(ctx, pool)
	pool.Close()
	if err != nil {
		return err
	}
	slog.InfoContext(ctx, "schema migrated", slog.Int("applied", len(applied)), slog.Int64("version", schema.LatestVersion()))
	if !private {
		rc.DatabaseURL = demoAppURL(ctx, ownerURL)
	}
	stopMaintenance, err := demoOwnerMaintenance(ctx, ownerURL)
	if err != nil {
		return err
	}
	defer stopMaintenance()
	slog.InfoContext(ctx, "demo: migrated as the owner; the server connects as vigil_app (docs/operations.md \"Database roles\")")
	slog.WarnContext(ctx, "demo mode: local key ring in the data directory, sample devices; NOT FOR PRODUCTION")
	return run(ctx, rc, func(ctx context.Context, url string, sys *system) error {
		fmt.Printf("\nVigil demo is up: %s  (health %s/healthz, readiness %s/readyz)\n", url, url, url)
		if private {
			// The private cluster trusts local connections and the demo key ring's passphrase
			// is a published constant: nothing secret is printed.
			fmt.Printf("Verify its audit trail from another shell:\n  VIGIL_DATABASE_URL='%s' VIGIL_KEYRING_PASSPHRASE='%s' vigil audit verify --data-dir '%s'\n",
				rc.DatabaseURL, demoPassphrase, rc.DataDir)
		}
		fmt.Printf("Press Ctrl-C to stop.\n\n")
		for _, h := range demoHooks {
			if err := h(ctx, url, sys); err != nil {
				return err
			}
		}
		return nil
	})
}
