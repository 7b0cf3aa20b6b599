package auth

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

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
func RewrapStore(pool *pgxpool.Pool, column string) (keys.RewrapStore, error) {
	tc, ok := sealedColumns[column]
	if !ok {
		return nil, fmt.Errorf("%w: no sealed column %q", ErrInvalid, column)
	}
	return rewrapStore{pool: pool, table: tc[0], col: tc[1]}, nil
}

type rewrapStore struct {
	pool       *pgxpool.Pool
	table, col string
}

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
		for _, it := range items {
			if _, err := tx.Exec(ctx, "UPDATE "+r.table+" SET "+r.col+" = $3 WHERE id = $1 AND "+r.col+" = $2", it.ID, it.Old, it.New); err != nil {
				return fmt.Errorf("rewrap %s.%s of %s: %w", r.table, r.col, it.ID, err)
			}
		}
		return nil
	})
}
