package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/sdk"
	"github.com/vigilhealth/vigil/devices/sdk/mqtt"
	"github.com/vigilhealth/vigil/devices/sim"
)

// `vigil sim`: the fleet simulator, and the small fleet `vigil demo` runs.

func init() {
	subcommands = append(subcommands, newSimCmd)
	demoHooks = append(demoHooks, demoFleet)
}

type simFlags struct {
	patients int
	rate     float64
	duration time.Duration
	scenario string
	seed     uint64
	ramp     time.Duration
	offAfter time.Duration
	offFor   time.Duration
	url      string
	mqttURL  string
	prefix   string
	dataDir  string
	stateDir string
}

func newSimCmd() *cobra.Command {
	var f simFlags
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Run a fleet of simulated bedside monitors against a Vigil server",
		Long: `Run a fleet of simulated bedside monitors, one per synthetic patient, against a running
Vigil server. Each monitor is provisioned like a real one (a synthetic patient is created,
a device registered and assigned to it, an enrollment token issued, in the database at
VIGIL_DATABASE_URL, every change audited), enrolls through the device SDK (it makes its
own Ed25519 key), then measures heart rate, SpO2, respiratory rate, blood pressure,
temperature, consciousness (ACVPU) and oxygen flow at --rate per second and uploads each
set signed, over HTTP (--url) or MQTT (--mqtt), verifying every receipt.

Scenarios: stable, sepsis, hypoxia, bradycardia, artifact, offline, or mixed (out of every
ten patients five stable and one of each other). Scenarios develop over --ramp. The same
--seed gives the same readings.

Synthetic patients' identifying data is sealed with the installation's key ring: Vault
Transit when VIGIL_VAULT_ADDR is set, else the local key ring in --data-dir opened with
VIGIL_KEYRING_PASSPHRASE (the demo's own passphrase when unset).`,
		Example: `  vigil sim --patients 20 --rate 1 --duration 5m --scenario mixed
  vigil sim --patients 5 --scenario sepsis --ramp 1m --duration 3m
  vigil sim --patients 100 --rate 10 --duration 30s --mqtt mqtt://127.0.0.1:1883`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSim(cmd.Context(), f, cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.patients, "patients", 10, "number of synthetic patients (one monitor each)")
	fl.Float64Var(&f.rate, "rate", 1, "uploads per second per monitor")
	fl.DurationVar(&f.duration, "duration", time.Minute, "how long to run (0: until interrupted)")
	fl.StringVar(&f.scenario, "scenario", "mixed", "stable, sepsis, hypoxia, bradycardia, artifact, offline or mixed")
	fl.Uint64Var(&f.seed, "seed", 1, "seed of the synthetic readings")
	fl.DurationVar(&f.ramp, "ramp", 2*time.Minute, "how long a scenario takes to develop")
	fl.DurationVar(&f.offAfter, "offline-after", time.Minute, "offline scenario: network lost after")
	fl.DurationVar(&f.offFor, "offline-for", 12*time.Minute, "offline scenario: network lost for (the default no-data rule fires after 10 min of silence)")
	fl.StringVar(&f.url, "url", envOr("VIGIL_URL", "http://127.0.0.1:8080"), "Vigil server URL (env VIGIL_URL)")
	fl.StringVar(&f.mqttURL, "mqtt", "", "deliver uploads over MQTT through this broker, e.g. mqtt://127.0.0.1:1883 (tls://…: CA from VIGIL_MQTT_CACERT or the system's)")
	fl.StringVar(&f.prefix, "mqtt-prefix", mqtt.DefaultPrefix, "MQTT topic prefix")
	fl.StringVar(&f.dataDir, "data-dir", envOr("VIGIL_DATA_DIR", "./.vigil"), "data directory holding the key ring (env VIGIL_DATA_DIR)")
	fl.StringVar(&f.stateDir, "state-dir", "", "give each monitor an on-disk upload buffer under this directory")
	return cmd
}

func runSim(ctx context.Context, f simFlags, out interface{ Write([]byte) (int, error) }) error {
	sc, err := sim.ParseScenario(f.scenario)
	if err != nil {
		return err
	}
	db, err := openDB(ctx, envOrCtx(ctx, "VIGIL_DATABASE_URL", ""))
	if err != nil {
		return err
	}
	defer db.Close()
	// The installation's key ring (Vault or the local one in --data-dir; the demo's
	// passphrase when VIGIL_KEYRING_PASSPHRASE is unset), to seal the synthetic patients' data.
	demo := getenv(ctx, "VIGIL_KEYRING_PASSPHRASE") == "" && getenv(ctx, "VIGIL_VAULT_ADDR") == ""
	ring, closeRing, err := openKeyRing(ctx, f.dataDir, demo, db.rec, false)
	if err != nil {
		return err
	}
	defer func() { _ = closeRing(context.WithoutCancel(ctx)) }()
	prov, closeProv, err := simProvisioner(ctx, db.pool, db.rec, ring.PHI())
	if err != nil {
		return err
	}
	defer closeProv()
	cfg := sim.Config{
		Patients: f.patients, Rate: f.rate, Duration: f.duration, Scenario: sc, Seed: f.seed,
		Ramp: f.ramp, OfflineAfter: f.offAfter, OfflineFor: f.offFor, StateDir: f.stateDir,
		Provisioner: prov,
	}
	if err := simTransport(ctx, &cfg, f.url, f.mqttURL, f.prefix); err != nil {
		return err
	}
	res, err := sim.Run(ctx, cfg)
	fmt.Fprint(out, res.Summary())
	return err
}

// simProvisioner builds what provisioning needs: core's patient registry (sealing the
// synthetic patients' identifying data with phi, the installation's key ring) and the
// device registry.
func simProvisioner(ctx context.Context, pool *pgxpool.Pool, rec audit.Recorder, phi core.PHISealer) (*sim.LocalProvisioner, func(), error) {
	cs, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: phi})
	if err != nil {
		return nil, nil, err
	}
	// Provisioning only (uploads go to the server): no device is verified here, so there is
	// no cache to keep current and no listening connection to hold.
	ds, err := devices.New(devices.Config{Pool: pool, Recorder: rec, NoChangeListener: true})
	if err != nil {
		return nil, nil, err
	}
	closer := func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = ds.Close(cctx)
	}
	return &sim.LocalProvisioner{Core: cs, Devices: ds}, closer, nil
}

// simTransport sets enrollment over HTTP, uploads over HTTP or MQTT, and the receipt key
// (fetched from the server).
func simTransport(ctx context.Context, cfg *sim.Config, url, mqttURL, prefix string) error {
	ht := &sdk.HTTPTransport{BaseURL: url}
	kctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, key, err := ht.ReceiptKey(kctx)
	if err != nil {
		return fmt.Errorf("receipt key from %s: %w (is `vigil serve` running with the device API?)", url, err)
	}
	cfg.Enroller, cfg.ReceiptKey = ht, key
	if mqttURL == "" {
		cfg.Transport = func(context.Context, sdk.Identity) (sdk.Transport, error) { return ht, nil }
		return nil
	}
	// A broker with a private CA: the same VIGIL_MQTT_CACERT as the server's.
	tc, err := mqttTLS(getenv(ctx, "VIGIL_MQTT_CACERT"), "", "")
	if err != nil {
		return err
	}
	cfg.Transport = func(ctx context.Context, id sdk.Identity) (sdk.Transport, error) {
		dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		return mqtt.DialDevice(dctx, mqtt.DeviceConfig{Broker: mqttURL, TLS: tc, DeviceID: id.DeviceID, Prefix: prefix})
	}
	return nil
}

// demoFleet is the demo's small fleet: VIGIL_DEMO_PATIENTS monitors (default 10, 0 for
// none), mixed scenarios, one upload per second each, until the demo stops; over HTTP, and
// half of them over MQTT when VIGIL_MQTT_URL is set.
func demoFleet(ctx context.Context, url string, sys *system) error {
	n := 10
	if v := getenv(ctx, "VIGIL_DEMO_PATIENTS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			return fmt.Errorf("VIGIL_DEMO_PATIENTS=%q: want a number ≥ 0", v)
		}
	}
	if n == 0 {
		return nil
	}
	prov, closeProv, err := simProvisioner(ctx, sys.pool, sys.rec, sys.keys.PHI())
	if err != nil {
		return fmt.Errorf("demo fleet: %w", err)
	}
	fctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer closeProv()
		cfg := sim.Config{Patients: n, Rate: 1, Scenario: sim.Mixed, Seed: 1, Provisioner: prov}
		// The server starts answering once this hook returns: wait for it here.
		var err error
		for i := 0; i < 50; i++ {
			if err = simTransport(fctx, &cfg, url, "", ""); err == nil || fctx.Err() != nil {
				break
			}
			select {
			case <-fctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
		if err != nil {
			if fctx.Err() == nil {
				slog.WarnContext(ctx, "demo fleet not started", slog.String("error", err.Error()))
			}
			return
		}
		if broker := getenv(ctx, "VIGIL_MQTT_URL"); broker != "" {
			demoOverMQTT(&cfg, broker, envOrCtx(ctx, "VIGIL_MQTT_PREFIX", mqtt.DefaultPrefix))
		}
		slog.InfoContext(ctx, "demo fleet starting", slog.Int("patients", n), slog.String("scenarios", "mixed"))
		res, err := sim.Run(fctx, cfg)
		if err != nil && !errors.Is(err, context.Canceled) {
			slog.WarnContext(ctx, "demo fleet", slog.String("error", err.Error()))
		}
		slog.InfoContext(ctx, "demo fleet stopped", slog.Int("uploads", res.Uploads), slog.Int("accepted", res.Accepted))
	}()
	sys.closers = append(sys.closers, func(context.Context) error { cancel(); wg.Wait(); return nil })
	return nil
}

// demoOverMQTT has every other demo monitor deliver over MQTT (the demo's own broker, when
// MQTT ingestion is on), the others over HTTP; a monitor that cannot reach the broker falls
// back to HTTP.
func demoOverMQTT(cfg *sim.Config, broker, prefix string) {
	httpTransport := cfg.Transport
	var n atomic.Int64
	cfg.Transport = func(ctx context.Context, id sdk.Identity) (sdk.Transport, error) {
		if n.Add(1)%2 == 1 {
			return httpTransport(ctx, id)
		}
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		tc, _ := mqttTLS(getenv(ctx, "VIGIL_MQTT_CACERT"), "", "") // already checked by the server's wiring
		d, err := mqtt.DialDevice(dctx, mqtt.DeviceConfig{Broker: broker, TLS: tc, DeviceID: id.DeviceID, Prefix: prefix})
		if err != nil {
			slog.WarnContext(ctx, "demo monitor falls back to HTTP", slog.String("error", err.Error()))
			return httpTransport(ctx, id)
		}
		return d, nil
	}
}
