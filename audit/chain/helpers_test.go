// Verifies: REQ-AUD-004
package chain_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/internal/testdb"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func testEvent() audit.Event {
	return audit.Event{
		Actor:   audit.Actor{Kind: audit.ActorService, ID: "test", AuthMethod: "internal"},
		Action:  "test.action",
		Object:  audit.Object{Type: "thing", ID: "1"},
		Outcome: audit.OutcomeSuccess,
		Payload: map[string]any{"k": "v"},
	}
}

// chain is a real audit chain on a private database: embedded Trillian, log, shipper.
type rig struct {
	pool    *pgxpool.Pool
	url     string
	rec     *audit.Outbox
	trill   *chain.Embedded
	log     *chain.Log
	shipper *chain.Shipper
}

func startTrillian(t testing.TB, url, listen string) *chain.Embedded {
	t.Helper()
	srv, err := chain.StartEmbedded(context.Background(), chain.EmbedConfig{
		DatabaseURL: url, Listen: listen, SequencerInterval: 20 * time.Millisecond, Logger: quiet,
	})
	if err != nil {
		t.Fatalf("chain.StartEmbedded() error = %v", err)
	}
	return srv
}

func newChain(t testing.TB) *rig {
	t.Helper()
	pool, url := testdb.NewWithURL(t)
	c := &rig{pool: pool, url: url, rec: audittest.Recorder(t, pool, nil)}
	c.trill = startTrillian(t, url, "")
	t.Cleanup(func() { _ = c.trill.Close(context.Background()) })
	cc, err := c.trill.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c.log, err = chain.OpenLog(ctx, pool, cc)
	if err != nil {
		t.Fatalf("OpenLog() error = %v", err)
	}
	c.shipper, err = chain.NewShipper(chain.ShipperConfig{Pool: pool, Log: c.log, BatchSize: 50, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// record commits n events, each in its own transaction, and returns their ids.
func (c *rig) record(t testing.TB, n int) []string {
	t.Helper()
	ctx := context.Background()
	var ids []string
	for i := 0; i < n; i++ {
		ev := testEvent()
		ev.Object.ID = fmt.Sprint("obj-", i)
		ev.SourceAddr = "192.0.2.7"
		ev.RequestID = fmt.Sprint("req-", i)
		var id string
		err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
			u, err := c.rec.Record(ctx, tx, ev)
			id = u.String()
			return err
		})
		if err != nil {
			t.Fatalf("Record() error = %v", err)
		}
		ids = append(ids, id)
	}
	return ids
}

// shipAll drives the shipper until no event is pending and every batch is integrated.
// Integration needs the sequencer's next pass, so this polls with a deadline.
func (c *rig) shipAll(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := c.shipper.Step(ctx)
		st := c.shipper.Stats()
		if err == nil && st.PendingEvents == 0 && st.UnintegratedBatches == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("shipper did not catch up: stats %+v, last error %v", st, err)
		}
		time.Sleep(10 * time.Millisecond) // waiting for Trillian's sequencer, not for logic
	}
}

func newSigner(t testing.TB) chain.CheckpointSigner {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return chain.NewEd25519Signer("test-key", priv)
}
