package server

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/vigilhealth/vigil/keys"
)

// Key backend failures reach HTTP as 503 with a stable code and no internal detail.
// Verifies: REQ-KEY-008
func TestKeysErrorsMapped(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		kind error
		code string
	}{
		{keys.ErrSealed, "keys_sealed"},
		{keys.ErrUnavailable, "keys_unavailable"},
		{keys.ErrPermissionDenied, "keys_unavailable"},
		{keys.ErrKeyNotFound, "keys_missing"},
	} {
		err := fmt.Errorf("seal patient: %w", &keys.BackendError{Backend: "vault", Op: "datakey", Key: "phi-encryption", Status: 503, Err: fmt.Errorf("%w: secret detail", c.kind)})
		status, code, msg := classify(err)
		if status != http.StatusServiceUnavailable || code != c.code || strings.Contains(msg, "secret detail") {
			t.Errorf("classify(%v) = %d, %q, %q, want 503, %q, no detail", c.kind, status, code, msg, c.code)
		}
	}
}
