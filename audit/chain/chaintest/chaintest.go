// Package chaintest gives tests of any package a real audit chain: Trillian embedded on the
// test's own database, a shipper and a checkpointer that the test drives, and a throwaway
// checkpoint key. No mocks: what a test proves with it holds for the real chain.
package chaintest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain"
)

// Signer returns a checkpoint signer over a fresh Ed25519 key held in memory.
func Signer(t testing.TB) chain.CheckpointSigner {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return chain.NewEd25519Signer("chaintest", priv)
}

// Start opens the audit chain on the test database (pool and its URL, from
// testdb.NewWithURL) with idle workers: call ShipAll to ship and checkpoint. rec is the
// test's recorder (audittest.Recorder): the chain records its own events with it, reports
// its backlog to it, and checks event authentication with the key ring the recorder was
// given. It is closed when the test ends.
func Start(t testing.TB, pool *pgxpool.Pool, dbURL string, rec *audit.Outbox) *chain.Service {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc, err := chain.OpenIdle(ctx, chain.Config{Pool: pool, Recorder: rec, Backlog: rec, DatabaseURL: dbURL, Signer: Signer(t),
		EventKeys:         rec.EventKeys(),
		SequencerInterval: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatalf("chaintest: open audit chain: %v", err)
	}
	t.Cleanup(func() { _ = svc.Close(context.Background()) })
	return svc
}

// ShipAll drives the shipper until every committed event is integrated in the log, then
// issues a checkpoint and returns it: afterwards every event recorded before the call has a
// complete proof (Service.Event reports status "proven").
func ShipAll(t testing.TB, svc *chain.Service) chain.Checkpoint {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := svc.Shipper().Step(ctx)
		st := svc.Shipper().Stats()
		if err == nil && st.PendingEvents == 0 && st.UnintegratedBatches == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("chaintest: shipper did not catch up: %+v (last error %v)", st, err)
		}
		time.Sleep(10 * time.Millisecond) // waiting for Trillian's sequencer, not for logic
	}
	cp, err := svc.CheckpointNow(ctx)
	if err != nil {
		t.Fatalf("chaintest: checkpoint: %v", err)
	}
	return cp
}

// TestCheckpointSigner is the conformance suite of chain.CheckpointSigner: every
// implementation (the key ring's signer, NewEd25519Signer) MUST pass it. It checks that the
// key id is stable and non-empty, that Public is an Ed25519 key, that Sign's signatures
// verify under it and are accepted in a checkpoint note, and that Sign leaves msg unchanged.
func TestCheckpointSigner(t *testing.T, s chain.CheckpointSigner) {
	t.Helper()
	ctx := context.Background()
	id := s.KeyID()
	if id == "" || s.KeyID() != id {
		t.Errorf("KeyID() = %q then %q, want a stable non-empty id", id, s.KeyID())
	}
	pub, ok := s.Public().(ed25519.PublicKey)
	if !ok || len(pub) != ed25519.PublicKeySize {
		t.Fatalf("Public() = %T, want ed25519.PublicKey", s.Public())
	}
	msg := []byte("vigil.audit/conformance\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
	orig := append([]byte(nil), msg...)
	sig, err := s.Sign(ctx, msg)
	if err != nil {
		t.Fatalf("Sign() error = %v", err)
	}
	if string(msg) != string(orig) {
		t.Error("Sign() altered msg")
	}
	if !ed25519.Verify(pub, msg, sig) {
		t.Error("Sign() signature does not verify under Public()")
	}
	other := append([]byte(nil), msg...)
	other[len(other)-2] ^= 1
	if ed25519.Verify(pub, other, sig) {
		t.Error("Sign() signature verifies for a different message")
	}
	if _, err := chain.VerifierKey("vigil.audit/conformance", s.Public()); err != nil {
		t.Errorf("VerifierKey(Public()) error = %v", err)
	}
}
