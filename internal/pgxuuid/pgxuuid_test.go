package pgxuuid_test

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/vigilhealth/vigil/internal/pgxuuid"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// Verifies: REQ-DEV-042
// TestRoundTrip stores uuid.UUID values (scalar, pointer, nil pointer, array, COPY) through a
// connection with the fast path and reads them back.
func TestRoundTrip(t *testing.T) {
	pool := testdb.New(t)
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	pgxuuid.Register(conn.Conn().TypeMap())
	a, b := uuid.New(), uuid.New()
	var nilPtr *uuid.UUID
	var got1, got2 uuid.UUID
	var got3 *uuid.UUID
	var got4 []uuid.UUID
	err = conn.QueryRow(ctx, `SELECT $1::uuid, $2::uuid, $3::uuid, $4::uuid[]`, a, &b, nilPtr, []uuid.UUID{a, b}).Scan(&got1, &got2, &got3, &got4)
	if err != nil {
		t.Fatal(err)
	}
	if got1 != a || got2 != b || got3 != nil || len(got4) != 2 || got4[1] != b {
		t.Errorf("round trip = %v %v %v %v, want %v %v nil [%v %v]", got1, got2, got3, got4, a, b, a, b)
	}
	if _, err := conn.Exec(ctx, `CREATE TEMP TABLE u (id uuid)`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Conn().CopyFrom(ctx, []string{"u"}, []string{"id"}, pgx.CopyFromRows([][]any{{a}, {b}})); err != nil {
		t.Fatalf("CopyFrom = %v", err)
	}
	var n int
	_ = conn.QueryRow(ctx, `SELECT count(*) FROM u WHERE id IN ($1, $2)`, a, b).Scan(&n)
	if n != 2 {
		t.Errorf("copied rows found = %d, want 2", n)
	}
}

func BenchmarkEncode(b *testing.B) {
	for _, fast := range []bool{false, true} {
		m := pgtype.NewMap()
		if fast {
			pgxuuid.Register(m)
		}
		id := uuid.New()
		b.Run(map[bool]string{false: "valuer", true: "fast"}[fast], func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := m.Encode(pgtype.UUIDOID, pgtype.BinaryFormatCode, id, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
