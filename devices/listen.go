package devices

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/internal/pglisten"
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

// listenOn follows the registry changes on l (the process's shared listener, or one of the
// Service's own): a notified device is dropped from the cache, and the whole cache each time
// LISTEN (re)takes effect (notifications may have been missed before, or while the connection
// was lost). Both only touch memory, on the listener's goroutine.
func (s *Service) listenOn(l *pglisten.Listener) {
	l.Handle(notifyChannel, pglisten.Handler{
		Notify: func(payload string) {
			if id, err := uuid.Parse(payload); err == nil {
				s.cache.invalidate(id)
			}
		},
		Listening: s.cache.invalidateAll,
	})
}
