package audit_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit"
)

// An exported pack verifies offline (no database, no log); the same pack with any one byte
// changed fails.
// Verifies: REQ-AUD-008
func TestPackVerifiesOfflineAndDetectsAnyChange(t *testing.T) {
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
	n, err := svc.Export(ctx, &buf, audit.ExportOptions{From: time.Now().Add(-time.Hour), To: time.Now().Add(time.Hour), RevealIDs: true})
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
	rep, err := audit.VerifyPack(pack, svc.VerifierKey())
	if err != nil {
		t.Fatalf("VerifyPack() error = %v", err)
	}
	if len(rep.Events) != n || rep.Checkpoints != 2 || rep.Events[0].ObjectID == "" {
		t.Errorf("VerifyPack() = %d events, %d checkpoints, first %+v; want %d events, 2 checkpoints, revealed ids",
			len(rep.Events), rep.Checkpoints, rep.Events[0], n)
	}
	if _, err := audit.VerifyPack(pack, ""); err != nil {
		t.Errorf("VerifyPack(key from pack) error = %v", err)
	}
	// Any single changed byte fails, wherever it is (sampled across the whole file).
	step := max(len(pack)/400, 1)
	for i := 0; i < len(pack); i += step {
		for _, delta := range []byte{1, 0x20} {
			bad := bytes.Clone(pack)
			bad[i] ^= delta
			if _, err := audit.VerifyPack(bad, svc.VerifierKey()); !errors.Is(err, audit.ErrPackInvalid) {
				t.Fatalf("VerifyPack(byte %d ^ %#x of %d: %q→%q) error = %v, want ErrPackInvalid", i, delta, len(pack), pack[i], bad[i], err)
			}
		}
	}
	// A pack signed by another key is refused when the auditor gives the published key.
	other := newSigner(t)
	otherKey, _ := audit.VerifierKey(svc.Origin(), other.Public())
	if _, err := audit.VerifyPack(pack, otherKey); !errors.Is(err, audit.ErrPackInvalid) {
		t.Errorf("VerifyPack(wrong trusted key) error = %v, want ErrPackInvalid", err)
	}
}

// VerifyPack faces files from outside: it never panics and accepts nothing malformed.
func FuzzVerifyPack(f *testing.F) {
	f.Add([]byte(`{"format":"vigil-audit-pack/v1"}` + "\n\n— x AAAA\n"))
	f.Add([]byte("\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := audit.VerifyPack(data, ""); err == nil {
			t.Fatalf("VerifyPack(%q) = nil error for an unsigned input", data)
		}
	})
}
