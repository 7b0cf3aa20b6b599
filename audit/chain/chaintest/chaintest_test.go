package chaintest_test

import (
	"context"
	"testing"

	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/keys"
)

// Both checkpoint signers pass the conformance suite: the in-memory one of tests and tools,
// and the key ring's audit checkpoint key on the local backend (keys.Vault yields the same
// keys.KeySigner type over Vault Transit).
// Verifies: REQ-AUD-006
func TestCheckpointSignerConformance(t *testing.T) {
	t.Run("in-memory", func(t *testing.T) { chaintest.TestCheckpointSigner(t, chaintest.Signer(t)) })
	t.Run("keys.Local", func(t *testing.T) {
		local, err := keys.NewLocal(keys.LocalConfig{Dir: t.TempDir(), Passphrase: []byte("conformance"), ScryptN: 1 << 10})
		if err != nil {
			t.Fatal(err)
		}
		ring, err := keys.NewRing(keys.Config{Backend: local})
		if err != nil {
			t.Fatal(err)
		}
		defer ring.Close()
		ctx := context.Background()
		if _, err := ring.EnsureKeys(ctx); err != nil {
			t.Fatal(err)
		}
		s, err := ring.Signer(ctx, keys.AuditCheckpoint)
		if err != nil {
			t.Fatal(err)
		}
		chaintest.TestCheckpointSigner(t, s)
	})
}
