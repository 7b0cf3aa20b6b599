package devices

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Registry changes are announced to every Vigil process on the database with a PostgreSQL
// notification on this channel (payload: the device id), sent in the change's own
// transaction, so that each process drops its cached view of the device as soon as the change
// commits. The commit-time check in the database stays the authority; the notification makes
// other servers refuse at verification instead of at commit.
const notifyChannel = "vigil_devices_changed"

// notifyChanged queues the change notification of device id in tx (delivered on commit).
func notifyChanged(ctx context.Context, tx pgx.Tx, id uuid.UUID) error {
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, notifyChannel, id.String()); err != nil {
		return fmt.Errorf("notify device change: %w", err)
	}
	return nil
}

// listen invalidates cached devices on notifications until ctx ends. It holds one
// connection of its own; after a lost connection it reconnects and drops the whole cache
// (notifications may have been missed meanwhile).
func (s *Service) listen(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		s.cache.invalidateAll()
		s.cfg.Logger.WarnContext(ctx, "devices: change listener lost its connection; retrying",
			slog.String("error", err.Error()), slog.Duration("backoff", backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

func (s *Service) listenOnce(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, s.cfg.Pool.Config().ConnConfig.Copy())
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return err
	}
	// Anything cached before LISTEN took effect may be stale.
	s.cache.invalidateAll()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if id, err := uuid.Parse(n.Payload); err == nil {
			s.cache.invalidate(id)
		}
	}
}
