package chain_test

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/leaf"
)

// Events are tagged with the 16-byte form v3; an event tagged before with the 32-byte form v2
// still authenticates, on its own; a v2 tag cut to 16 bytes (or any other length) does not,
// and only that event is named (the others of its transaction are unaffected).
// Verifies: REQ-AUD-075
func TestOldFormTagsStillVerify(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c, svc := newService(t)
	ids := c.record(t, 4)
	var n, short int
	if err := c.pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE length(auth_mac) = $1) FROM audit_events`,
		leaf.MACSize).Scan(&n, &short); err != nil || n == 0 || short != n {
		t.Fatalf("tags of %d events: %d of %d bytes (%v); want all of form v3", n, short, leaf.MACSize, err)
	}
	keys := audit.NewSessionKeys(c.rec.EventKeys())
	v2 := func(id string) []byte {
		t.Helper()
		p, err := svc.Event(ctx, uuid.MustParse(id))
		if err != nil {
			t.Fatal(err)
		}
		key, err := keys.Key(ctx, c.pool, p.Event.Session)
		if err != nil {
			t.Fatal(err)
		}
		m := leaf.EventMACV2(key, p.Encoding)
		return m[:]
	}
	// As the owner (the write-once trigger binds only the application role): an event as a
	// writer of the previous version tagged it, and a forger's attempt to pass off a cut v2 tag.
	old, cut := v2(ids[0]), v2(ids[1])
	mustExec(t, c, `UPDATE audit_events SET auth_mac = $2 WHERE id = $1`, ids[0], old)
	mustExec(t, c, `UPDATE audit_events SET auth_mac = $2 WHERE id = $1`, ids[1], cut[:leaf.MACSize])
	mustExec(t, c, `ALTER TABLE audit_events DROP CONSTRAINT audit_events_auth_mac_check`) // a length the schema refuses, to see verify refuse it too
	mustExec(t, c, `UPDATE audit_events SET auth_mac = $2 WHERE id = $1`, ids[2], cut[:24])
	c.shipAll(t)
	if _, err := svc.CheckpointNow(ctx); err != nil {
		t.Fatal(err)
	}
	r := verify(t, svc)
	if hasFinding(r, chain.FindingUnauthenticated, ids[0]) {
		t.Errorf("Verify() findings = %s: the v2-tagged event %s is reported", findings(r), ids[0])
	}
	for _, id := range ids[1:3] {
		if !hasFinding(r, chain.FindingUnauthenticated, id) {
			t.Errorf("Verify() findings = %s, want unauthenticated naming %s (a cut or odd-length tag)", findings(r), id)
		}
	}
	if hasFinding(r, chain.FindingUnauthenticated, ids[3]) {
		t.Errorf("Verify() findings = %s: the untouched event %s is reported", findings(r), ids[3])
	}
	p, err := svc.Event(ctx, uuid.MustParse(ids[0]))
	if err != nil || p.Status != "proven" {
		t.Errorf("Event(v2-tagged) = status %q, %v; want proven (the shipper accepted its tag)", p.Status, err)
	}
}
