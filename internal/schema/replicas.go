package schema

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Replica is a running `vigil serve` as it registers itself in vigil_replicas: the contract
// phase refuses to remove what a live replica still needs.
type Replica struct {
	Host    string // the host name (os.Hostname when empty)
	Listen  string // its address
	Version string // the binary's version
	Latest  int64  // the latest migration the binary knows
}

// ReplicaHeartbeat and ReplicaStale: a replica refreshes its row every ReplicaHeartbeat; a
// row older than ReplicaStale is a crashed replica's and is ignored.
const (
	ReplicaHeartbeat = 10 * time.Second
	ReplicaStale     = 30 * time.Second
)

// Registration is a replica's row, kept fresh until Close.
type Registration struct {
	id     string
	pool   *pgxpool.Pool
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// RegisterReplica records r in vigil_replicas and refreshes it every ReplicaHeartbeat until
// Close, which removes it. On a database without the table (before migration 00810) it
// registers nothing.
func RegisterReplica(ctx context.Context, pool *pgxpool.Pool, r Replica) (*Registration, error) {
	if r.Host == "" {
		r.Host, _ = os.Hostname()
	}
	id := uuid.NewString()
	reg := &Registration{id: id, pool: pool, done: make(chan struct{})}
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass('vigil_replicas') IS NOT NULL").Scan(&exists); err != nil {
		return nil, fmt.Errorf("register replica: %w", err)
	}
	if !exists {
		close(reg.done)
		reg.cancel = func() {}
		reg.id = ""
		return reg, nil
	}
	if _, err := pool.Exec(ctx, `INSERT INTO vigil_replicas (id, host, listen, version, schema_latest) VALUES ($1, $2, $3, $4, $5)`,
		id, r.Host, r.Listen, r.Version, r.Latest); err != nil {
		return nil, fmt.Errorf("register replica: %w", err)
	}
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	reg.cancel = cancel
	go func() {
		defer close(reg.done)
		t := time.NewTicker(ReplicaHeartbeat)
		defer t.Stop()
		for {
			select {
			case <-hctx.Done():
				return
			case <-t.C:
				// Upsert: a row removed meanwhile (by an operator) comes back.
				if _, err := pool.Exec(hctx, `INSERT INTO vigil_replicas (id, host, listen, version, schema_latest) VALUES ($1, $2, $3, $4, $5)
					ON CONFLICT (id) DO UPDATE SET seen_at = now()`, id, r.Host, r.Listen, r.Version, r.Latest); err != nil && hctx.Err() == nil {
					slog.Warn("replica heartbeat failed", slog.String("error", err.Error()))
				}
			}
		}
	}()
	return reg, nil
}

// Close stops the heartbeat and removes the replica's row.
func (r *Registration) Close(ctx context.Context) error {
	var err error
	r.once.Do(func() {
		r.cancel()
		<-r.done
		if r.id != "" {
			_, err = r.pool.Exec(ctx, "DELETE FROM vigil_replicas WHERE id = $1", r.id)
		}
	})
	return err
}

// liveReplicasBelow lists the live replicas whose binary knows migrations below compat.
func liveReplicasBelow(ctx context.Context, pool *pgxpool.Pool, compat int64) ([]string, error) {
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass('vigil_replicas') IS NOT NULL").Scan(&exists); err != nil || !exists {
		return nil, err
	}
	rows, err := pool.Query(ctx, `SELECT host || ' ' || listen || ' (version ' || version || ', schema ' || lpad(schema_latest::text, 5, '0') || ')'
		FROM vigil_replicas WHERE schema_latest < $1 AND seen_at > now() - make_interval(secs => $2) ORDER BY host, listen`,
		compat, ReplicaStale.Seconds())
	if err != nil {
		return nil, fmt.Errorf("live replicas: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// checkNoReplicaRefused refuses (ErrPhaseOrder) to apply contract migrations that would refuse
// a live replica.
func checkNoReplicaRefused(ctx context.Context, pool *pgxpool.Pool, todo []Migration) error {
	var compat int64
	for _, m := range todo {
		if m.Phase == PhaseContract && m.Compat > compat {
			compat = m.Compat
		}
	}
	if compat == 0 {
		return nil
	}
	live, err := liveReplicasBelow(ctx, pool, compat)
	if err != nil || len(live) == 0 {
		return err
	}
	return fmt.Errorf("%w: %d replica(s) still run a binary the contract migration(s) would refuse (it needs %05d): %s; upgrade or stop them first (a crashed replica's registration expires after %v)",
		ErrPhaseOrder, len(live), compat, strings.Join(live, "; "), ReplicaStale)
}
