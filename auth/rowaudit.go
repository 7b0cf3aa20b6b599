package auth

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/rowdigest"
)

// recordUserEvent records ev in tx after tying the user's row to it (audit/rowdigest): the
// row gets ev's id and the digest of its audited content (login indexes, sealed profile,
// password hash, status, sealed TOTP secret, recovery-code hashes, passkeys), and ev's payload
// carries the digest, so that `vigil audit verify` finds a user, a password or a second
// factor changed behind the system's back. Call it after the action's last change of them.
func (s *Service) recordUserEvent(ctx context.Context, tx pgx.Tx, ev audit.Event, user uuid.UUID) error {
	if err := stampEvent(ctx, tx, &ev, func(ds rowdigest.Digests, id uuid.UUID) error {
		return ds.Stamp(ctx, tx, rowdigest.Users, user.String(), id)
	}); err != nil {
		return err
	}
	_, err := s.cfg.Audit.Record(ctx, tx, ev)
	return err
}

// stampEvent gives ev an id, lets stamp tie rows to it, and adds their digests to ev's
// payload (a map, or nil).
func stampEvent(ctx context.Context, tx pgx.Tx, ev *audit.Event, stamp func(rowdigest.Digests, uuid.UUID) error) error {
	if ev.ID == uuid.Nil {
		id, err := uuid.NewV7()
		if err != nil {
			return fmt.Errorf("event id: %w", err)
		}
		ev.ID = id
	}
	p := map[string]any{}
	switch x := ev.Payload.(type) {
	case nil:
	case map[string]any:
		for k, v := range x {
			p[k] = v
		}
	default:
		return fmt.Errorf("stamp %s: payload %T is not a map", ev.Action, ev.Payload)
	}
	ds := rowdigest.Digests{}
	if err := stamp(ds, ev.ID); err != nil {
		return err
	}
	p[rowdigest.PayloadKey] = ds
	ev.Payload = p
	return nil
}
