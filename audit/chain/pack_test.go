package chain_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/vigilhealth/vigil/audit/chain"
)

// An exported pack verifies offline (no database, no log); the same pack with any one byte
// changed fails.
// Verifies: REQ-AUD-008
func TestPackVerifiesOfflineAndDetectsAnyChange(t *testing.T) {
	t.Parallel()
	c, svc := newService(t)
	ids := c.record(t, 12)
	c.shipAll(t)
	ctx := context.Background()
	if _, err := svc.CheckpointNow(ctx); err != nil {
		t.Fatal(err)
	}
	c.record(t, 5) // a second checkpoint, so the pack carries a consistency proof
	c.shipAll(t)
	if _, err := svc.CheckpointNow(ctx); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	n, err := svc.Export(ctx, &buf, chain.ExportOptions{From: time.Now().Add(-time.Hour), To: time.Now().Add(time.Hour), RevealIDs: true})
	if err != nil {
		t.Fatalf("Export() error = %v", err)
	}
	if n != len(ids)+5 {
		t.Errorf("Export() events = %d, want %d", n, len(ids)+5)
	}
	pack := buf.Bytes()
	// Offline: the database and the log are gone.
	if err := svc.Close(ctx); err != nil {
		t.Fatal(err)
	}
	c.pool.Close()
	rep, err := chain.VerifyPack(pack, svc.VerifierKey())
	if err != nil {
		t.Fatalf("VerifyPack() error = %v", err)
	}
	if len(rep.Events) != n || rep.Checkpoints != 2 || rep.Events[0].ObjectID == "" {
		t.Errorf("VerifyPack() = %d events, %d checkpoints, first %+v; want %d events, 2 checkpoints, revealed ids",
			len(rep.Events), rep.Checkpoints, rep.Events[0], n)
	}
	if _, err := chain.VerifyPack(pack, ""); err != nil {
		t.Errorf("VerifyPack(key from pack) error = %v", err)
	}
	// Any single changed byte fails, wherever it is (sampled across the whole file).
	step := max(len(pack)/400, 1)
	for i := 0; i < len(pack); i += step {
		for _, delta := range []byte{1, 0x20} {
			bad := bytes.Clone(pack)
			bad[i] ^= delta
			if _, err := chain.VerifyPack(bad, svc.VerifierKey()); !errors.Is(err, chain.ErrPackInvalid) {
				t.Fatalf("VerifyPack(byte %d ^ %#x of %d: %q→%q) error = %v, want ErrPackInvalid", i, delta, len(pack), pack[i], bad[i], err)
			}
		}
	}
	// A pack signed by another key is refused when the auditor gives the published key.
	other := newSigner(t)
	otherKey, _ := chain.VerifierKey(svc.Origin(), other.Public())
	if _, err := chain.VerifyPack(pack, otherKey); !errors.Is(err, chain.ErrPackInvalid) {
		t.Errorf("VerifyPack(wrong trusted key) error = %v, want ErrPackInvalid", err)
	}
}

// VerifyPack faces files from outside: it never panics and accepts nothing malformed.
func FuzzVerifyPack(f *testing.F) {
	f.Add([]byte(`{"format":"vigil-audit-pack/v1"}` + "\n\n— x AAAA\n"))
	f.Add([]byte("\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := chain.VerifyPack(data, ""); err == nil {
			t.Fatalf("VerifyPack(%q) = nil error for an unsigned input", data)
		}
	})
}

// An event's two-step proof, as the API serves it, verifies with only the verifier key, and
// fails when the event or any proof hash is changed.
// Verifies: REQ-AUD-009
func TestEventProofVerifiesOffline(t *testing.T) {
	t.Parallel()
	c, svc := newService(t)
	ids := c.record(t, 9)
	c.shipAll(t)
	ctx := context.Background()
	id, _ := uuid.Parse(ids[4])
	p, err := svc.Event(ctx, id)
	if err != nil || p.Status != "integrated" {
		t.Fatalf("Event() before a checkpoint = %q, %v; want integrated", p.Status, err)
	}
	if _, err := chain.VerifyEventProof(p, svc.VerifierKey()); !errors.Is(err, chain.ErrProofInvalid) {
		t.Errorf("VerifyEventProof(no checkpoint yet) error = %v, want ErrProofInvalid", err)
	}
	if _, err := svc.CheckpointNow(ctx); err != nil {
		t.Fatal(err)
	}
	p, err = svc.Event(ctx, id)
	if err != nil || p.Status != "proven" {
		t.Fatalf("Event() = %q, %v; want proven", p.Status, err)
	}
	ev, err := chain.VerifyEventProof(p, svc.VerifierKey())
	if err != nil || uuid.UUID(ev.ID) != id {
		t.Fatalf("VerifyEventProof() = %x, %v; want event %s", ev.ID, err, id)
	}
	tamper := []func(p *chain.EventProof){
		func(p *chain.EventProof) { p.Encoding = bytes.Clone(p.Encoding); p.Encoding[30] ^= 1 },
		func(p *chain.EventProof) { b := *p.Batch; b.Proof = [][]byte{make([]byte, 32)}; p.Batch = &b },
		func(p *chain.EventProof) { b := *p.Batch; b.Root = make([]byte, 32); p.Batch = &b },
		func(p *chain.EventProof) {
			b := *p.Batch
			b.Inclusion = append([][]byte{make([]byte, 32)}, b.Inclusion...)
			p.Batch = &b
		},
		func(p *chain.EventProof) { b := *p.Batch; n := *b.LeafIndex + 1; b.LeafIndex = &n; p.Batch = &b },
	}
	for i, f := range tamper {
		q := p
		f(&q)
		if _, err := chain.VerifyEventProof(q, svc.VerifierKey()); !errors.Is(err, chain.ErrProofInvalid) {
			t.Errorf("VerifyEventProof(tampered #%d) error = %v, want ErrProofInvalid", i, err)
		}
	}
}

// Several events' proofs read together (the audit browser's page) are the proofs Event gives
// one by one, all under the same checkpoint; verified together, each verdict is the one
// VerifyEventProof gives, a changed proof among good ones included.
// Verifies: REQ-POR-031
func TestEventProofsTogether(t *testing.T) {
	t.Parallel()
	c, svc := newService(t)
	raw := c.record(t, 60) // two batches of at most 50
	c.shipAll(t)
	ctx := context.Background()
	if _, err := svc.CheckpointNow(ctx); err != nil {
		t.Fatal(err)
	}
	ids := make([]uuid.UUID, len(raw))
	for i, s := range raw {
		ids[i] = uuid.MustParse(s)
	}
	ps, err := svc.EventProofs(ctx, ids)
	if err != nil || len(ps) != len(ids) {
		t.Fatalf("EventProofs() = %d, %v", len(ps), err)
	}
	batches := map[uuid.UUID]bool{}
	for i, id := range ids {
		one, err := svc.Event(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := json.Marshal(one)
		b, _ := json.Marshal(ps[i])
		if !bytes.Equal(a, b) || ps[i].Status != "proven" {
			t.Errorf("EventProofs()[%d] differs from Event():\n%s\n%s", i, b, a)
		}
		batches[ps[i].Batch.ID] = true
	}
	if len(batches) < 2 {
		t.Errorf("the events are in %d batch, want several", len(batches))
	}
	bad := ps[7]
	bb := *bad.Batch
	bb.Root = make([]byte, 32)
	bad.Batch = &bb
	ps[7] = bad
	for i, err := range chain.VerifyEventProofs(ps, svc.VerifierKey()) {
		if (i == 7) != (err != nil) {
			t.Errorf("VerifyEventProofs()[%d] = %v", i, err)
		}
	}
	if _, err := svc.EventProofs(ctx, []uuid.UUID{uuid.New()}); !errors.Is(err, chain.ErrEventNotFound) {
		t.Errorf("EventProofs(unknown) error = %v, want ErrEventNotFound", err)
	}
}

// A pack narrowed to one object holds only that object's events, says so, and verifies.
// Verifies: REQ-POR-033
func TestPackOfOneObject(t *testing.T) {
	t.Parallel()
	c, svc := newService(t)
	c.record(t, 8)
	c.shipAll(t)
	ctx := context.Background()
	if _, err := svc.CheckpointNow(ctx); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	n, err := svc.Export(ctx, &buf, chain.ExportOptions{From: time.Now().Add(-time.Hour), To: time.Now().Add(time.Hour),
		ObjectType: "thing", ObjectID: "obj-3", RevealIDs: true})
	if err != nil || n != 1 {
		t.Fatalf("Export(one object) = %d, %v; want 1 event", n, err)
	}
	rep, err := chain.VerifyPack(buf.Bytes(), svc.VerifierKey())
	if err != nil || rep.Object != "thing obj-3" || len(rep.Events) != 1 || rep.Events[0].ObjectID != "obj-3" {
		t.Fatalf("VerifyPack() = %+v, %v", rep, err)
	}
}
