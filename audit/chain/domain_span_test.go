package chain_test

import (
	"strings"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/devices"
)

// An upload whose observations span UTC midnight lies in two day partitions; retention
// drops the older day and keeps the rest. verify --deep reported that as a domain_mismatch
// ("N observations stored from it, its event says M") — a false finding: the drop is an
// authentic retention.partition_dropped event. Now the remaining observations are checked
// against the event's fingerprints, and the missing ones against the dropped range: clean
// after the drop, and a remaining observation changed or deleted afterwards is still found.
// (Fails on the old code at the first verify after the drop.)
// Verifies: REQ-AUD-065
func TestRetentionOfOneDayOfASpanningUpload(t *testing.T) {
	t.Parallel()
	r := newDomainRig(t)
	env := r.env
	// 40 samples one second apart ending 30.5 s after midnight: 9 on 10 March, 31 on 11 March.
	mid := time.Date(2026, 3, 11, 0, 0, 30, 500_000_000, time.UTC)
	env.Clock.Set(mid)
	rc, err := env.Devices.Accept(env.Ctx, r.dev.Upload(t, mid, 40), devices.Meta{Transport: "http", RequestID: "span"})
	if err != nil {
		t.Fatal(err)
	}
	var upload string
	if err := env.Pool.QueryRow(env.Ctx, `SELECT id::text FROM core_uploads WHERE upload_hash = $1`, rc.UploadHash[:]).Scan(&upload); err != nil {
		t.Fatal(err)
	}
	chaintest.ShipAll(t, r.svc)
	if rep := r.verify(t, true); !rep.OK {
		t.Fatalf("Verify(deep) before retention: findings %s", findings(rep))
	}
	// 90 days (the observations' retention) after the end of 10 March, and an hour: only
	// the 10 March partition is past its retention.
	env.Clock.Set(time.Date(2026, 3, 11, 1, 0, 0, 0, time.UTC).Add(90 * 24 * time.Hour))
	dropped, err := env.Core.EnforceRetention(env.Ctx)
	if err != nil || len(dropped) != 1 || dropped[0].Name != "core_observations_p20260310" {
		t.Fatalf("EnforceRetention() = %v, %v; want the 10 March observations partition", dropped, err)
	}
	if n := env.Count(t, `SELECT count(*) FROM core_observations WHERE upload_id = $1`, upload); n != 31 {
		t.Fatalf("%d observations of the upload remain, want 31", n)
	}
	chaintest.ShipAll(t, r.svc)
	if rep := r.verify(t, true); !rep.OK {
		t.Fatalf("Verify(deep) after retention dropped one day of the upload: findings %s (want none: this is retention, not tampering)", findings(rep))
	}

	// A remaining observation changed: named.
	r.exec(t, `UPDATE core_observations SET value = value + 1 WHERE upload_id = $1 AND code = '8867-4'
		AND effective_at = (SELECT max(effective_at) FROM core_observations WHERE upload_id = $1 AND code = '8867-4')`, upload)
	rep := r.verify(t, true)
	if !hasFinding(rep, chain.FindingDomainMismatch, upload) || !strings.Contains(findings(rep), "code 8867-4") {
		t.Fatalf("Verify(deep) after changing a remaining observation: findings %s, want a domain_mismatch naming it", findings(rep))
	}
	r.exec(t, `UPDATE core_observations SET value = value - 1 WHERE upload_id = $1 AND code = '8867-4'
		AND effective_at = (SELECT max(effective_at) FROM core_observations WHERE upload_id = $1 AND code = '8867-4')`, upload)
	if rep := r.verify(t, true); !rep.OK {
		t.Fatalf("Verify(deep) after undoing the change: findings %s", findings(rep))
	}

	// A remaining observation deleted (one between two others of its series, all on
	// 11 March): no retention drop explains it.
	r.exec(t, `DELETE FROM core_observations WHERE upload_id = $1 AND code = '59408-5' AND effective_at =
		(SELECT effective_at FROM core_observations WHERE upload_id = $1 AND code = '59408-5' ORDER BY effective_at OFFSET 2 LIMIT 1)`, upload)
	if rep := r.verify(t, true); !hasFinding(rep, chain.FindingDomainMismatch, upload) {
		t.Fatalf("Verify(deep) after deleting a remaining observation: findings %s, want a domain_mismatch on upload %s", findings(rep), upload)
	}
}
