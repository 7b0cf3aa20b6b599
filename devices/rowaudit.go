package devices

import (
	"context"
	"encoding/hex"
	"fmt"
	"strconv"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/rowdigest"
)

// stampRows ties the device's row, and the assignment rows the action wrote, to ev
// (audit/rowdigest): each row gets ev's id and the digest of its audited content, and ev's
// payload (payload, which becomes ev.Payload) carries the digests, so that `vigil audit
// verify` finds a row changed behind the system's back. Call it in tx after the last change
// of those rows and before recording ev.
func stampRows(ctx context.Context, tx pgx.Tx, ev *audit.Event, payload map[string]any, device uuid.UUID, assignments ...int64) error {
	if ev.ID == uuid.Nil {
		id, err := uuid.NewV7()
		if err != nil {
			return fmt.Errorf("event id: %w", err)
		}
		ev.ID = id
	}
	ds := rowdigest.Digests{}
	if err := ds.Stamp(ctx, tx, rowdigest.Devices, device.String(), ev.ID); err != nil {
		return err
	}
	for _, a := range assignments {
		if err := ds.Stamp(ctx, tx, rowdigest.DeviceAssignments, strconv.FormatInt(a, 10), ev.ID); err != nil {
			return err
		}
	}
	payload[rowdigest.PayloadKey] = ds
	ev.Payload = payload
	return nil
}

// stampToken ties the enrollment link (token) whose SHA-256 is hash to ev, adding its digest
// to ev's payload (a map; the device's digests stampRows put there are kept): verify finds a
// link re-opened (used_at cleared), extended or inserted behind the system's back. Call it
// in tx after the last change of the token's row and before recording ev.
func stampToken(ctx context.Context, tx pgx.Tx, ev *audit.Event, hash []byte) error {
	if ev.ID == uuid.Nil {
		id, err := uuid.NewV7()
		if err != nil {
			return fmt.Errorf("event id: %w", err)
		}
		ev.ID = id
	}
	p, ok := ev.Payload.(map[string]any)
	if !ok {
		return fmt.Errorf("stamp %s: payload %T is not a map", ev.Action, ev.Payload)
	}
	ds, _ := p[rowdigest.PayloadKey].(rowdigest.Digests)
	if ds == nil {
		ds = rowdigest.Digests{}
	}
	if err := ds.Stamp(ctx, tx, rowdigest.EnrollmentTokens, hex.EncodeToString(hash), ev.ID); err != nil {
		return err
	}
	p[rowdigest.PayloadKey] = ds
	return nil
}
