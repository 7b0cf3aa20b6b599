package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/leader"
	"github.com/vigilhealth/vigil/internal/pglisten"
	"github.com/vigilhealth/vigil/internal/pgxuuid"
	"github.com/vigilhealth/vigil/internal/schema"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/portal"
	"github.com/vigilhealth/vigil/server"
)

// runConfig is what `serve` and `demo` share, read from flags and VIGIL_* variables.
type runConfig struct {
	Listen       string // --listen, VIGIL_LISTEN
	DataDir      string // --data-dir, VIGIL_DATA_DIR
	DatabaseURL  string // VIGIL_DATABASE_URL only (it may carry a password)
	TrillianAddr string // --trillian-addr, VIGIL_TRILLIAN_ADDR: external Trillian; empty = embedded
	Demo         bool   // started by `vigil demo`
	// WebhookAllowNets: --webhook-allow-net (repeatable), else VIGIL_WEBHOOK_ALLOW_NETS;
	// networks webhooks may reach although the destination policy refuses them by default.
	WebhookAllowNets allowNets
	// Limits: the server's resource limits and timeouts (limits.go).
	Limits serverLimits
	// Schema is the set of migrations the server runs with; nil is the embedded one. Tests of
	// rolling upgrades set it to simulate the next version (internal/schema/schematest).
	Schema *schema.Set
}

// system is the running set of services behind one server. Areas add their services here and
// in wire(), and their shutdown to closers (called in reverse order).
type system struct {
	pool    *pgxpool.Pool
	rec     *audit.Outbox // the one audit recorder of the process
	server  *server.Server
	keys    *keys.Ring      // Vault Transit, or the local key ring for demos (keys.go)
	auth    *auth.Service   // principals, sessions, the policy (access.go)
	core    *core.Service   // the clinical core (core.go)
	hl7Addr string          // the HL7 ADT listener's address, when on (interop.go)
	leader  *leader.Elector // leads the once-per-database background passes (ha.go)
	// listen is the process's one LISTEN connection, shared by every service that follows
	// notifications (device cache, policy, hub relay, rules inbox); wire runs it once they
	// are all built.
	listen  *pglisten.Listener
	closers []func(context.Context) error
}

// Close stops every service in reverse order of start and returns the first error.
func (s *system) Close(ctx context.Context) error {
	var errs []error
	for i := len(s.closers) - 1; i >= 0; i-- {
		if err := s.closers[i](ctx); err != nil {
			errs = append(errs, err)
		}
	}
	s.closers = nil
	return errors.Join(errs...)
}

// wire opens the database, checks its schema, and builds every service and the server.
// On error everything already started is stopped.
func wire(ctx context.Context, rc runConfig) (_ *system, err error) {
	sys := &system{}
	defer func() {
		if err != nil {
			_ = sys.Close(context.WithoutCancel(ctx))
		}
	}()
	if err := os.MkdirAll(rc.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	db, err := openDB(ctx, rc.DatabaseURL)
	if err != nil {
		return nil, err
	}
	pool := db.pool
	sys.pool, sys.rec = db.pool, db.rec
	sys.closers = append(sys.closers, func(context.Context) error { db.Close(); return nil })
	sys.listen = pglisten.New(pool, slog.Default())

	set := rc.Schema
	if set == nil {
		set = schema.Embedded()
	}
	st, err := set.Inspect(ctx, pool)
	if err != nil {
		return nil, err
	}
	if err := st.Check(); err != nil {
		if errors.Is(err, schema.ErrSchemaBehind) {
			return nil, fmt.Errorf("%w; run `vigil migrate --phase expand` (or `vigil migrate` with every replica stopped) first", err)
		}
		return nil, fmt.Errorf("%w; refusing to start", err)
	}
	if len(st.PendingContract) > 0 || len(st.Unknown) > 0 {
		slog.InfoContext(ctx, "schema within this binary's compatibility window, not exact", slog.String("schema", st.Summary()))
	}

	// One replica of several on the database leads the once-per-database passes (ha.go).
	if err := startLeader(ctx, sys); err != nil {
		return nil, err
	}

	srvCfg := server.Config{
		Pool:     pool,
		Recorder: sys.rec,
		Logger:   slog.Default(),
		Version:  version,
		Schema:   set,
	}

	// The key ring (keys.go): Vault Transit when VIGIL_VAULT_ADDR is set, else the local key
	// ring in the data directory (logged as not for production); key operations are audited.
	ring, closeRing, err := openKeyRing(ctx, rc.DataDir, rc.Demo, sys.rec, true)
	if err != nil {
		return nil, err
	}
	sys.keys = ring
	sys.closers = append(sys.closers, closeRing)
	srvCfg.ReadinessChecks = append(srvCfg.ReadinessChecks, server.ReadinessCheck{Name: "keys", Check: keysReady(ring)})

	// The audit chain: embedded (or external) Trillian, shipper, checkpointer (audit.go).
	auditSvc, closeAudit, err := openAudit(ctx, rc, db, ring, false)
	if err != nil {
		return nil, err
	}
	sys.closers = append(sys.closers, closeAudit)
	srvCfg.Audit = auditSvc
	srvCfg.ReadinessChecks = append(srvCfg.ReadinessChecks, server.ReadinessCheck{Name: "audit", Check: auditSvc.Ready})
	// Its own verification in the background, on the leader (ha.go).
	if err := startAuditVerification(ctx, sys, auditSvc); err != nil {
		return nil, err
	}

	// The clinical core with its rules engine and alarm service (core.go, rules.go); patient
	// identifying data is sealed with the key ring's PHI helper.
	coreSvc, err := wireCore(ctx, sys, rc, &srvCfg, ring.PHI())
	if err != nil {
		return nil, err
	}
	sys.core = coreSvc
	// Identity and access: every request but the devices' is authenticated and authorized
	// through the one policy (access.go).
	if err := wireAuth(ctx, sys, rc, &srvCfg, ring); err != nil {
		return nil, err
	}
	// Devices: registry, enrollment, signed uploads into core (device.go).
	devSvc, err := wireDevices(ctx, sys, &srvCfg, coreSvc, ring, auditSvc, rc.Limits.committers())
	if err != nil {
		return nil, err
	}
	// The web portal for people at "/" (package portal): it signs people in through the
	// same auth service and reads through the same services, so what the policy allows a
	// person over the API is what the pages show.
	portalSvc, err := portal.New(portal.Config{Auth: srvCfg.Auth, Core: srvCfg.Core, Recorder: sys.rec,
		Alarms: srvCfg.Alarms, Rules: srvCfg.Rules, Devices: srvCfg.Devices, Audit: auditSvc, OIDCName: oidcName(ctx, srvCfg)})
	if err != nil {
		return nil, err
	}
	srvCfg.Portal = portalSvc
	// MQTT ingestion when VIGIL_MQTT_URL is set (mqtt.go).
	if err := wireMQTT(ctx, sys, &srvCfg, devSvc); err != nil {
		return nil, err
	}
	// HL7 v2 over MLLP when VIGIL_HL7_* is set (interop.go).
	if err := wireInterop(ctx, sys, rc.Demo); err != nil {
		return nil, err
	}
	rc.Limits.apply(&srvCfg)
	srv, err := server.New(srvCfg)
	if err != nil {
		return nil, err
	}
	sys.server = srv
	startFHIRSubscriptions(sys, srv) // interop.go
	// Every service has its handlers on the shared listener: one connection LISTENs for all.
	lctx, stopListen := context.WithCancel(context.WithoutCancel(ctx))
	listened := make(chan struct{})
	go func() { defer close(listened); _ = sys.listen.Run(lctx) }()
	sys.closers = append(sys.closers, func(context.Context) error { stopListen(); <-listened; return nil })
	return sys, nil
}

// database is a command's database: its pool and the process's one audit recorder (every
// audit event of the process is prepared and written by it).
type database struct {
	pool *pgxpool.Pool
	rec  *audit.Outbox
}

// openDB opens the pool at url and the audit recorder on it.
func openDB(ctx context.Context, url string) (*database, error) {
	pool, err := openPool(ctx, url)
	if err != nil {
		return nil, err
	}
	rec, err := audit.NewOutbox(audit.Config{Pool: pool})
	if err != nil {
		pool.Close()
		return nil, err
	}
	return &database{pool: pool, rec: rec}, nil
}

// Close stops the recorder (after committing what it holds), then closes the pool.
func (d *database) Close() {
	d.rec.Close()
	d.pool.Close()
}

// DefaultPoolConns is the database connections a command opens at most unless
// VIGIL_DATABASE_URL sets pool_max_conns.
const DefaultPoolConns = 16

func openPool(ctx context.Context, url string) (*pgxpool.Pool, error) {
	if url == "" {
		return nil, errors.New("VIGIL_DATABASE_URL is not set (e.g. postgres://user@host:5432/vigil)")
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("VIGIL_DATABASE_URL: %w", err)
	}
	// uuid.UUID encoded as 16 bytes, not through its string Valuer (see internal/pgxuuid).
	cfg.AfterConnect = pgxuuid.AfterConnect
	// pgxpool's default (4 on a small machine) starves the audit commits that a read's answer
	// waits for as soon as a few hundred reads per second arrive (docs/access.md): the server
	// takes DefaultPoolConns unless the URL says otherwise.
	if !strings.Contains(url, "pool_max_conns") {
		cfg.MaxConns = DefaultPoolConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to database %s:%d: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, err)
	}
	return pool, nil
}
