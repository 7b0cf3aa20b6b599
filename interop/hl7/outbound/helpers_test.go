package outbound_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/interop/hl7"
	"github.com/vigilhealth/vigil/interop/mllp"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// ackAll is the benchmarks' receiver: it parses each message and answers AA (AR when it
// does not parse).
func ackAll() mllp.Handler {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return mllp.HandlerFunc(func(_ context.Context, r mllp.Request) []byte {
		m, err := hl7.Parse(r.Message, hl7.Limits{})
		if err != nil {
			return hl7.Ack(nil, hl7.AR, nil, hl7.AckOptions{ControlID: "x", Now: now})
		}
		return hl7.Ack(m, hl7.AA, nil, hl7.AckOptions{ControlID: "x", Now: now})
	})
}

// auditedDB is the test's database with the audit recorder and the audit chain (Trillian
// embedded) every outcome goes through in vigil serve.
func auditedDB(t testing.TB) (*pgxpool.Pool, *audit.Outbox) {
	t.Helper()
	pool, url := testdb.NewWithURL(t)
	rec := audittest.Recorder(t, pool, nil)
	_ = chaintest.Start(t, pool, url, rec)
	return pool, rec
}

var setupBy = audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "setup", AuthMethod: "internal"}, RequestID: "setup"}

// coreWithPatients is the real core on pool with n patients (MRN prefix + index) admitted on
// one ward; it returns the core and the patients' ids.
func coreWithPatients(t testing.TB, pool *pgxpool.Pool, rec audit.Recorder, prefix string, n int) (*core.Service, []uuid.UUID) {
	t.Helper()
	ctx := context.Background()
	cs, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: keystest.LocalRing(t, nil).PHI()})
	if err != nil {
		t.Fatal(err)
	}
	site, err := cs.CreateSite(ctx, setupBy, "General")
	if err != nil {
		t.Fatal(err)
	}
	ward, err := cs.CreateWard(ctx, setupBy, site.ID, "ICU")
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]uuid.UUID, n)
	for i := range ids {
		p, err := cs.CreatePatient(ctx, setupBy, core.PatientPHI{MRN: prefix + strconv.Itoa(i), FamilyName: "Doe", GivenName: "Pat"}, &ward.ID)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = p.ID
	}
	return cs, ids
}
