package auth

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/rowdigest"
	"github.com/vigilhealth/vigil/keys"
)

// sealedColumns are the envelope-encrypted columns of the auth area.
var sealedColumns = map[string][2]string{
	"auth_users.profile_sealed":      {"auth_users", "profile_sealed"},
	"auth_users.totp_sealed":         {"auth_users", "totp_sealed"},
	"auth_break_glass.reason_sealed": {"auth_break_glass", "reason_sealed"},
}

// SealedColumns lists the names RewrapStore accepts.
func SealedColumns() []string {
	return []string{"auth_users.profile_sealed", "auth_users.totp_sealed", "auth_break_glass.reason_sealed"}
}

// RewrapStore is the keys.RewrapStore over one sealed column of the auth area (one of
// SealedColumns), walked by `vigil keys rotate phi-encryption` after a rotation. Re-wrapping
// changes only the wrapped data key, so the associated data of each value is unaffected.
// Each batch is audited through rec as "auth.sealed_rewrapped" (table, column, count); a
// user's (or break-glass grant's) row re-wrapped is tied to that event with the digest of its new content
// (audit/rowdigest; one event per up to 100 users).
func RewrapStore(pool *pgxpool.Pool, rec audit.Recorder, column string) (keys.RewrapStore, error) {
	tc, ok := sealedColumns[column]
	if !ok {
		return nil, fmt.Errorf("%w: no sealed column %q", ErrInvalid, column)
	}
	if rec == nil {
		return nil, fmt.Errorf("%w: rewrap %s: no audit recorder", ErrInvalid, column)
	}
	return rewrapStore{pool: pool, rec: rec, table: tc[0], col: tc[1]}, nil
}

type rewrapStore struct {
	pool       *pgxpool.Pool
	rec        audit.Recorder
	table, col string
}

// rewrapSpecs are the tables of sealed columns whose rows carry their event.
var rewrapSpecs = map[string]rowdigest.Spec{rowdigest.Users.Table: rowdigest.Users, rowdigest.BreakGlass.Table: rowdigest.BreakGlass}

// rewrapStampsPerEvent bounds the users one "auth.sealed_rewrapped" event ties to itself.
const rewrapStampsPerEvent = 100

func (r rewrapStore) NextSealed(ctx context.Context, after string, limit int) ([]keys.StoredCiphertext, error) {
	from := uuid.Nil
	if after != "" {
		id, err := uuid.Parse(after)
		if err != nil {
			return nil, fmt.Errorf("%w: after %q", ErrInvalid, after)
		}
		from = id
	}
	rows, err := r.pool.Query(ctx, "SELECT id, "+r.col+" FROM "+r.table+" WHERE id > $1 AND "+r.col+" IS NOT NULL ORDER BY id LIMIT $2", from, limit)
	if err != nil {
		return nil, fmt.Errorf("sealed %s.%s: %w", r.table, r.col, err)
	}
	out := []keys.StoredCiphertext{}
	var id uuid.UUID
	var b []byte
	_, err = pgx.ForEachRow(rows, []any{&id, &b}, func() error {
		out = append(out, keys.StoredCiphertext{ID: id.String(), Old: append([]byte(nil), b...)})
		return nil
	})
	return out, err
}

func (r rewrapStore) ReplaceSealed(ctx context.Context, items []keys.StoredCiphertext) error {
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		var replaced []string
		for _, it := range items {
			tag, err := tx.Exec(ctx, "UPDATE "+r.table+" SET "+r.col+" = $3 WHERE id = $1 AND "+r.col+" = $2", it.ID, it.Old, it.New)
			if err != nil {
				return fmt.Errorf("rewrap %s.%s of %s: %w", r.table, r.col, it.ID, err)
			}
			if tag.RowsAffected() > 0 {
				replaced = append(replaced, it.ID)
			}
		}
		for first := true; first || len(replaced) > 0; first = false {
			chunk := replaced[:min(len(replaced), rewrapStampsPerEvent)]
			replaced = replaced[len(chunk):]
			ev := audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "auth", AuthMethod: "internal"}, Action: "auth.sealed_rewrapped",
				Object: audit.Object{Type: "sealed_column", ID: r.table + "." + r.col}, Outcome: audit.OutcomeSuccess,
				Payload: map[string]any{"offered": len(items), "replaced": len(chunk)}}
			if spec, ok := rewrapSpecs[r.table]; ok {
				if err := stampEvent(ctx, tx, &ev, func(ds rowdigest.Digests, id uuid.UUID) error {
					for _, u := range chunk {
						if err := ds.Stamp(ctx, tx, spec, u, id); err != nil {
							return err
						}
					}
					return nil
				}); err != nil {
					return err
				}
			}
			if _, err := r.rec.Record(ctx, tx, ev); err != nil {
				return err
			}
		}
		return nil
	})
}
