package keystest

import (
	"context"
	"testing"

	"github.com/vigilhealth/vigil/keys"
)

// LocalRing is the one key-ring fixture of Vigil's tests: a real keys.Ring over a local
// backend in the test's temporary directory (a fast scrypt setting: the passphrase guards
// nothing here), with every key created and onOp (may be nil) as its operation hook. It is
// closed when the test ends.
func LocalRing(t testing.TB, onOp keys.OnOperation) *keys.Ring {
	t.Helper()
	local, err := keys.NewLocal(keys.LocalConfig{Dir: t.TempDir(), Passphrase: []byte("vigil test key ring"), ScryptN: 1 << 10})
	if err != nil {
		t.Fatalf("keystest: keys.NewLocal = %v", err)
	}
	ring, err := keys.NewRing(keys.Config{Backend: local, OnOperation: onOp})
	if err != nil {
		t.Fatalf("keystest: keys.NewRing = %v", err)
	}
	t.Cleanup(func() { _ = ring.Close() })
	if _, err := ring.EnsureKeys(context.Background()); err != nil {
		t.Fatalf("keystest: EnsureKeys = %v", err)
	}
	return ring
}
