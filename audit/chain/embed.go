// This file runs Trillian's own log server (the TrillianLog and TrillianAdmin gRPC
// services) and its sequencer inside the Vigil process, on Vigil's PostgreSQL database
// (Trillian v1.8 storage/postgresql, tables in the schema `trillian` installed by Vigil's
// migrations), listening on a Unix socket that only the process's user can open (the
// TrillianAdmin service can create and delete trees and has no authentication of its own, so
// it is never on a network port). Vigil then talks to it over gRPC with Trillian's own client,
// exactly as it talks to an external Trillian (--trillian-addr): the embedded server is an
// implementation detail of deployment, never a second code path.
package chain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/trillian"
	"github.com/google/trillian/extension"
	"github.com/google/trillian/log"
	"github.com/google/trillian/monitoring"
	"github.com/google/trillian/quota"
	"github.com/google/trillian/server"
	"github.com/google/trillian/server/admin"
	"github.com/google/trillian/server/interceptor"
	"github.com/google/trillian/storage/postgresql"
	"github.com/google/trillian/util/clock"
	"github.com/google/trillian/util/election"
	"github.com/google/trillian/util/election2"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// TrillianSchema is the PostgreSQL schema that holds Trillian's tables (see migration 00101).
const TrillianSchema = "trillian"

// EmbedConfig configures the embedded Trillian. Zero values take the documented defaults.
type EmbedConfig struct {
	// DatabaseURL is the PostgreSQL connection URL of the installation. Required. The
	// embedded Trillian opens its own pool on it, with search_path set to TrillianSchema.
	DatabaseURL string
	// Listen is where the gRPC server listens: "unix:<path>", a Unix socket at path (its
	// directory is created, mode 0700, when missing; the socket gets mode 0600). Default: a
	// socket in a new private temporary directory, removed at Close. Network addresses are
	// refused: the admin service has no credentials.
	Listen string
	// MaxConns is the size of Trillian's own connection pool. Default 8.
	MaxConns int32
	// SequencerInterval is the time between sequencing passes. Default 100ms.
	SequencerInterval time.Duration
	// SequencerBatchSize is the most leaves one sequencing pass integrates. Default 1000.
	SequencerBatchSize int
	// LeaderRetry is how often a process that is not the database's sequencer tries to
	// become it (one process per database sequences). Default 5s.
	LeaderRetry time.Duration
	// NoSequencer runs the log server only: for commands that read the log (verify, export)
	// while a `vigil serve` on the same database sequences it.
	NoSequencer bool
	// Logger is accepted for symmetry with the other workers; Trillian itself logs through
	// klog to stderr (its own choice, outside Vigil's control). Default slog.Default().
	Logger *slog.Logger
}

// Embedded is a running embedded Trillian. Close stops it and waits for all its goroutines.
type Embedded struct {
	addr   string
	tmpDir string // the private directory of the default socket, removed at Close
	pool   *pgxpool.Pool
	grpc   *grpc.Server
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	serveErr error
	closed   bool

	sequencing atomic.Bool
}

// StartEmbedded starts the log server and the sequencer. The caller MUST call Close.
func StartEmbedded(ctx context.Context, cfg EmbedConfig) (*Embedded, error) {
	if cfg.DatabaseURL == "" {
		return nil, errors.New("audit chain: EmbedConfig.DatabaseURL is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 8
	}
	if cfg.SequencerInterval == 0 {
		cfg.SequencerInterval = 100 * time.Millisecond
	}
	if cfg.LeaderRetry <= 0 {
		cfg.LeaderRetry = 5 * time.Second
	}
	if cfg.SequencerBatchSize == 0 {
		cfg.SequencerBatchSize = 1000
	}
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("embedded Trillian: parse database URL: %w", err)
	}
	pcfg.ConnConfig.RuntimeParams["search_path"] = TrillianSchema
	pcfg.MaxConns = cfg.MaxConns
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("embedded Trillian: connect: %w", err)
	}
	mf := monitoring.InertMetricFactory{}
	registry := extension.Registry{
		AdminStorage:    postgresql.NewAdminStorage(pool),
		LogStorage:      postgresql.NewLogStorage(pool, mf),
		QuotaManager:    quota.Noop(),
		MetricFactory:   mf,
		ElectionFactory: election2.NoopFactory{}, // one sequencer per database: this process
	}
	if err := registry.AdminStorage.CheckDatabaseAccessible(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("embedded Trillian: database: %w (is migration 00101 applied?)", err)
	}
	ln, tmpDir, err := listen(cfg.Listen)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("embedded Trillian: listen: %w", err)
	}

	ti := interceptor.New(registry.AdminStorage, registry.QuotaManager, false, mf)
	gs := grpc.NewServer(grpc.ChainUnaryInterceptor(interceptor.ErrorWrapper, ti.UnaryInterceptor))
	logServer := server.NewTrillianLogRPCServer(registry, clock.System)
	trillian.RegisterTrillianLogServer(gs, logServer)
	trillian.RegisterTrillianAdminServer(gs, admin.New(registry, []trillian.TreeType{trillian.TreeType_LOG}))

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Embedded{addr: "unix:" + ln.Addr().String(), tmpDir: tmpDir, pool: pool, grpc: gs, cancel: cancel}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := gs.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.mu.Lock()
			s.serveErr = err
			s.mu.Unlock()
		}
	}()
	info := log.OperationInfo{
		Registry:    registry,
		BatchSize:   cfg.SequencerBatchSize,
		NumWorkers:  1,
		RunInterval: cfg.SequencerInterval,
		TimeSource:  clock.System,
		ElectionConfig: election.RunnerConfig{
			PreElectionPause:   time.Millisecond,
			MasterHoldInterval: time.Minute,
			MasterHoldJitter:   time.Second,
			TimeSource:         clock.System,
		},
	}
	if cfg.NoSequencer {
		return s, nil
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.sequenceWhenLeader(runCtx, info, registry, cfg.LeaderRetry)
	}()
	return s, nil
}

// sequencerLock is the PostgreSQL advisory lock that makes one process per database the
// sequencer: several `vigil serve` replicas on one database each serve the log API, but only
// the lock holder sequences; another takes over when it goes away.
const sequencerLock = 7466101

func (s *Embedded) sequenceWhenLeader(ctx context.Context, info log.OperationInfo, registry extension.Registry, retry time.Duration) {
	for {
		conn, err := s.pool.Acquire(ctx)
		if err == nil {
			var got bool
			if err = conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", sequencerLock).Scan(&got); err == nil && got {
				s.sequencing.Store(true)
				om := log.NewOperationManager(info, log.NewSequencerManager(registry, 0))
				om.OperationLoop(ctx) // until Close
				s.sequencing.Store(false)
				_, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", sequencerLock)
				conn.Release()
				return
			}
			conn.Release()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}

// Sequencing reports whether this process is the database's sequencer right now.
func (s *Embedded) Sequencing() bool { return s.sequencing.Load() }

// Addr is the gRPC target of the server: "unix:<path of its socket>" (also a valid Listen).
func (s *Embedded) Addr() string { return s.addr }

// Dial returns a gRPC client connection to the server (plaintext, over its Unix socket). The
// caller closes it.
func (s *Embedded) Dial() (*grpc.ClientConn, error) {
	cc, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("embedded Trillian: dial %s: %w", s.addr, err)
	}
	return cc, nil
}

// Err reports a failure of the gRPC server loop, if any.
func (s *Embedded) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.serveErr
}

// Close stops the gRPC server (letting calls in flight finish) and the sequencer, waits for
// their goroutines, and closes Trillian's pool. It is safe to call more than once. When ctx
// ends first, calls in flight are cut off.
func (s *Embedded) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-ctx.Done():
		s.grpc.Stop()
		<-stopped
	}
	s.wg.Wait()
	s.pool.Close()
	if s.tmpDir != "" {
		_ = os.RemoveAll(s.tmpDir)
	}
	return s.Err()
}

// listen opens the Unix socket of Listen (see Config.Listen); tmpDir is the private
// directory made for the default socket, to be removed at Close.
func listen(spec string) (ln net.Listener, tmpDir string, err error) {
	var path string
	switch {
	case spec == "":
		if tmpDir, err = os.MkdirTemp("", "vigil-trillian-"); err != nil { // mode 0700
			return nil, "", err
		}
		path = filepath.Join(tmpDir, "trillian.sock")
	case strings.HasPrefix(spec, "unix:"):
		path = strings.TrimPrefix(strings.TrimPrefix(spec, "unix:"), "//")
		if path == "" {
			return nil, "", fmt.Errorf("%q names no socket path", spec)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, "", err
		}
	default:
		return nil, "", fmt.Errorf("%q: the embedded Trillian listens on a Unix socket only (unix:<path>); its admin service has no credentials", spec)
	}
	ln, err = net.Listen("unix", path)
	if err == nil {
		err = os.Chmod(path, 0o600)
	}
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		if tmpDir != "" {
			_ = os.RemoveAll(tmpDir)
		}
		return nil, "", err
	}
	return ln, tmpDir, nil
}
