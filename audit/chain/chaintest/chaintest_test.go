package chaintest_test

import (
	"context"
	"testing"

	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// Both checkpoint signers pass the conformance suite: the in-memory one of tests and tools,
// and the key ring's audit checkpoint key on the local backend (keys.Vault yields the same
// keys.KeySigner type over Vault Transit).
// Verifies: REQ-AUD-006
func TestCheckpointSignerConformance(t *testing.T) {
	t.Run("in-memory", func(t *testing.T) { chaintest.TestCheckpointSigner(t, chaintest.Signer(t)) })
	t.Run("keys.Local", func(t *testing.T) {
		ring := keystest.LocalRing(t, nil)
		ctx := context.Background()
		s, err := ring.Signer(ctx, keys.AuditCheckpoint)
		if err != nil {
			t.Fatal(err)
		}
		chaintest.TestCheckpointSigner(t, s)
	})
}
