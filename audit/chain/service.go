package chain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/keys"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Config configures the audit chain service. Zero values take the documented defaults.
type Config struct {
	// Pool is the installation's database. Required.
	Pool *pgxpool.Pool
	// Recorder records the chain's own events (incidents and their resolution). Required:
	// the process's one audit.Outbox.
	Recorder audit.Recorder
	// Backlog receives the shipper's view of the backlog after every pass: the Outbox, which
	// decides from it when callers must push back (audit.ErrPushback). Optional.
	Backlog BacklogSink
	// DatabaseURL is the database's URL, used by the embedded Trillian for its own pool.
	// Required unless TrillianAddr is set.
	DatabaseURL string
	// TrillianAddr is the gRPC address of an external Trillian log server (host:port). Empty
	// (the default) runs Trillian embedded in this process on the same database.
	TrillianAddr string
	// ReadOnly runs the embedded Trillian without its sequencer: for commands (verify,
	// export) that run beside a `vigil serve` on the same database. Default false.
	ReadOnly bool
	// Signer signs checkpoints. Required.
	Signer CheckpointSigner
	// Origin is the checkpoint origin and note key name. Default
	// "vigil.audit/<installation id>".
	Origin string
	// BatchSize is the most events sealed into one batch (one Trillian leaf). Default 5000.
	BatchSize int
	// Window is the batching window: how often pending events are sealed. Default 200ms.
	Window time.Duration
	// CheckpointInterval is how often a checkpoint is issued while the log grows. Default 5s.
	CheckpointInterval time.Duration
	// SequencerInterval is the embedded sequencer's pass interval. Default 100ms.
	SequencerInterval time.Duration
	// SequencerBatchSize is the most leaves the embedded sequencer integrates per pass.
	// Default 1000.
	SequencerBatchSize int
	// MaxLag is the lag (age of the oldest event not yet in the log) above which readiness
	// fails. Default 2 minutes.
	MaxLag time.Duration
	// PendingGrace is how long verify lets an event wait before reporting it. Default 1 minute.
	PendingGrace time.Duration
	// EventKeys is the key ring's encrypter that unwraps the writer sessions' keys (see
	// audit.Outbox.EnableAuthentication): the shipper refuses, and verify reports, any event
	// without a valid authentication tag. Nil turns both checks off (load tools only; verify
	// then reports authentication_unchecked).
	EventKeys keys.Encrypter
	// RetentionMinAge is the retention age of events (verify's erased_early). Default
	// DefaultRetentionMinAge.
	RetentionMinAge time.Duration
	// FinalFlush bounds the last shipping pass and checkpoint Close makes after Open (an
	// orderly stop). Default 10s.
	FinalFlush time.Duration
	// Witnesses receive every new checkpoint with its consistency proof (C2SP tlog-witness)
	// and their cosignatures are stored; at Open they are asked whether they hold a newer
	// checkpoint than the database (a rollback: an incident). Default none.
	Witnesses []WitnessEndpoint
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Logger receives the workers' failures and incidents. Default slog.Default().
	Logger *slog.Logger
}

// Service is the running audit chain: the (embedded or external) Trillian log, the shipper
// and the checkpointer. Open starts it; Close stops every goroutine it started.
type Service struct {
	cfg      Config
	embedded *Embedded
	conn     *grpc.ClientConn
	log      *Log
	shipper  *Shipper
	cps      *Checkpointer
	vkey     string
	skeys    *audit.SessionKeys
	started  bool       // Open (not OpenIdle): Close makes a final checkpoint
	runs     verifyRuns // the server's verification runs (verifyruns.go)
}

// Open connects to (or starts) Trillian, opens or creates the log tree, and starts the
// shipper and the checkpointer.
func Open(ctx context.Context, cfg Config) (*Service, error) {
	s, err := open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s.shipper.Start()
	s.cps.Start()
	s.started = true
	return s, nil
}

// OpenIdle is Open without starting the background workers: for commands (verify, export)
// and tests that drive the shipper and checkpointer themselves.
func OpenIdle(ctx context.Context, cfg Config) (*Service, error) { return open(ctx, cfg) }

func open(ctx context.Context, cfg Config) (_ *Service, err error) {
	if cfg.Pool == nil || cfg.Signer == nil || cfg.Recorder == nil {
		return nil, errors.New("audit chain: Config.Pool, Config.Signer and Config.Recorder are required")
	}
	if cfg.TrillianAddr == "" && cfg.DatabaseURL == "" {
		return nil, errors.New("audit chain: Config.DatabaseURL is required for the embedded Trillian")
	}
	if cfg.MaxLag <= 0 {
		cfg.MaxLag = 2 * time.Minute
	}
	if cfg.FinalFlush <= 0 {
		cfg.FinalFlush = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Service{cfg: cfg}
	s.runs.ctx, s.runs.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if cfg.EventKeys != nil {
		s.skeys = audit.NewSessionKeys(cfg.EventKeys)
	}
	defer func() {
		if err != nil {
			_ = s.Close(context.WithoutCancel(ctx))
		}
	}()
	addr := cfg.TrillianAddr
	if addr == "" {
		s.embedded, err = StartEmbedded(ctx, EmbedConfig{
			DatabaseURL: cfg.DatabaseURL, SequencerInterval: cfg.SequencerInterval,
			SequencerBatchSize: cfg.SequencerBatchSize, Logger: cfg.Logger, NoSequencer: cfg.ReadOnly,
		})
		if err != nil {
			return nil, fmt.Errorf("audit chain: start embedded Trillian: %w", err)
		}
		addr = s.embedded.Addr()
	}
	s.conn, err = grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("audit chain: dial Trillian at %s: %w", addr, err)
	}
	s.log, err = OpenLog(ctx, cfg.Pool, s.conn)
	if err != nil {
		return nil, err
	}
	s.shipper, err = NewShipper(ShipperConfig{Pool: cfg.Pool, Log: s.log, BatchSize: cfg.BatchSize,
		Window: cfg.Window, Now: cfg.Now, Logger: cfg.Logger, Backlog: cfg.Backlog, Keys: s.skeys})
	if err != nil {
		return nil, err
	}
	ccfg := CheckpointerConfig{Pool: cfg.Pool, Log: s.log, Signer: cfg.Signer, Recorder: cfg.Recorder,
		Origin: cfg.Origin, Interval: cfg.CheckpointInterval, Now: cfg.Now, Logger: cfg.Logger}
	if len(cfg.Witnesses) > 0 {
		ccfg.After = func(ctx context.Context, _ Checkpoint) {
			if _, err := s.Witness(ctx); err != nil && ctx.Err() == nil {
				cfg.Logger.WarnContext(ctx, "audit witnessing failed", slog.String("error", err.Error()))
			}
		}
	}
	s.cps, err = NewCheckpointer(ctx, ccfg)
	if err != nil {
		return nil, err
	}
	s.cfg.Origin = s.cps.Origin()
	s.vkey, err = s.cps.VerifierKey()
	if err != nil {
		return nil, err
	}
	if len(cfg.Witnesses) > 0 && !cfg.ReadOnly {
		// A restart on a log whose tail was cut off: the witnesses remember the newer
		// checkpoint. (A witness that cannot be reached does not stop the start.)
		if _, err := s.Witness(ctx); err != nil && !errors.Is(err, ErrNoCheckpoint) {
			cfg.Logger.WarnContext(ctx, "audit witnessing at start", slog.String("error", err.Error()))
		}
	}
	return s, nil
}

// Close stops the shipper, the checkpointer and the embedded Trillian, and waits for them.
// Events not yet shipped stay in the outbox for the next start.
func (s *Service) Close(ctx context.Context) error {
	var errs []error
	if s.runs.cancel != nil {
		s.runs.cancel() // a full verification still running stops (its result says so)
		s.runs.wg.Wait()
	}
	if s.shipper != nil {
		errs = append(errs, s.shipper.Close(ctx))
	}
	if s.cps != nil {
		errs = append(errs, s.cps.Close(ctx))
	}
	if s.started && !s.cfg.ReadOnly {
		s.started = false
		if err := s.finalCheckpoint(ctx); err != nil {
			s.cfg.Logger.WarnContext(ctx, "audit chain: no final checkpoint at shutdown", slog.String("error", err.Error()))
		}
	}
	if s.conn != nil {
		errs = append(errs, s.conn.Close())
	}
	if s.embedded != nil {
		errs = append(errs, s.embedded.Close(ctx))
	}
	return errors.Join(errs...)
}

// finalCheckpoint ships what is pending, waits for its integration (at most
// Config.FinalFlush) and issues a last checkpoint (and submits it to the witnesses), so that
// an orderly stop leaves no event outside a checkpoint but the writer's own final
// attestation (verify reports those as stopped, not as pending).
func (s *Service) finalCheckpoint(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.FinalFlush)
	defer cancel()
	for {
		_, err := s.shipper.Step(ctx)
		st := s.shipper.Stats()
		if err == nil && st.PendingEvents == 0 && st.UnintegratedBatches == 0 {
			break
		}
		t := time.NewTimer(20 * time.Millisecond) // the sequencer integrates on its own schedule
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("final flush: %w (last error %v)", ctx.Err(), err)
		case <-t.C:
		}
	}
	if _, err := s.cps.Checkpoint(ctx); err != nil {
		return err
	}
	if len(s.cfg.Witnesses) > 0 {
		if _, err := s.Witness(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Log is the Trillian log handle.
func (s *Service) Log() *Log { return s.log }

// Shipper is the shipper (tests and the load command drive it).
func (s *Service) Shipper() *Shipper { return s.shipper }

// Origin is the checkpoint origin.
func (s *Service) Origin() string { return s.cfg.Origin }

// VerifierKey is the note verifier key of the checkpoint key.
func (s *Service) VerifierKey() string { return s.vkey }

// TrillianAddr is the address of the Trillian log server in use.
func (s *Service) TrillianAddr() string {
	if s.embedded != nil {
		return s.embedded.Addr()
	}
	return s.cfg.TrillianAddr
}

// CheckpointNow issues a checkpoint of the log's current root at once (if it grew).
func (s *Service) CheckpointNow(ctx context.Context) (Checkpoint, error) {
	return s.cps.Checkpoint(ctx)
}

// LatestCheckpoint returns the latest stored checkpoint, or ErrNoCheckpoint.
func (s *Service) LatestCheckpoint(ctx context.Context) (Checkpoint, error) {
	return LatestCheckpoint(ctx, s.cfg.Pool)
}

// Verify verifies the whole trail against the live log (see the package function Verify).
func (s *Service) Verify(ctx context.Context) (*Report, error) { return Verify(ctx, s.VerifyConfig()) }

// VerifyConfig is the configuration Verify uses: this service's database, log, keys and
// witnesses (a command adjusts it, e.g. Deep, and calls the package function Verify).
func (s *Service) VerifyConfig() VerifyConfig {
	return VerifyConfig{Pool: s.cfg.Pool, Log: s.log, VerifierKey: s.vkey, Origin: s.cfg.Origin,
		PendingGrace: s.cfg.PendingGrace, Now: s.cfg.Now, Keys: s.skeys, RetentionMinAge: s.cfg.RetentionMinAge, Witnesses: s.cfg.Witnesses}
}

// Stats is the audit chain's health: the shipper's backlog and the checkpoint state.
type Stats struct {
	ShipperStats
	LagSeconds          float64   `json:"lag_seconds"`
	CheckpointSize      uint64    `json:"checkpoint_size"`
	CheckpointAt        time.Time `json:"checkpoint_at,omitzero"`
	UnresolvedIncidents int64     `json:"unresolved_incidents"`
	// TrillianAddr is the log server in use. It is not published (Stats is the detail of the
	// readiness check, which anyone may read): the address of a log's admin API is no one
	// else's business.
	TrillianAddr string `json:"-"`
	Embedded     bool   `json:"embedded"`
	// Sequencing: this process runs the embedded sequencer (one process per database does;
	// the others serve the log API and take over when it goes away).
	Sequencing bool `json:"sequencing"`
}

// Stats returns the current health figures (the shipper's as of its last pass).
func (s *Service) Stats(ctx context.Context) (Stats, error) {
	st := Stats{ShipperStats: s.shipper.Stats(), TrillianAddr: s.TrillianAddr(), Embedded: s.embedded != nil}
	st.Sequencing = s.embedded != nil && s.embedded.Sequencing()
	st.LagSeconds = st.Lag().Seconds()
	cp, err := LatestCheckpoint(ctx, s.cfg.Pool)
	switch {
	case err == nil:
		st.CheckpointSize, st.CheckpointAt = cp.Size, cp.CreatedAt
	case !errors.Is(err, ErrNoCheckpoint):
		return st, err
	}
	st.UnresolvedIncidents, err = UnresolvedIncidents(ctx, s.cfg.Pool)
	return st, err
}

// ErrNotReady is returned by Ready when the audit chain cannot vouch for the trail.
var ErrNotReady = errors.New("audit chain not ready")

// Ready is the readiness check of the audit chain: it fails on any unresolved incident (an
// inconsistent log) and when the lag exceeds MaxLag. The detail is the Stats.
func (s *Service) Ready(ctx context.Context) (any, error) {
	st, err := s.Stats(ctx)
	if err != nil {
		return st, err
	}
	switch {
	case st.UnresolvedIncidents > 0:
		return st, fmt.Errorf("%w: %d unresolved incident(s): the log is inconsistent with a checkpoint", ErrNotReady, st.UnresolvedIncidents)
	case st.Lag() > s.cfg.MaxLag:
		return st, fmt.Errorf("%w: lag %s exceeds %s (%s)", ErrNotReady, st.Lag().Round(time.Second), s.cfg.MaxLag, st.LastError)
	}
	return st, nil
}
