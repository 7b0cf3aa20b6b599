package rowdigest_test

import (
	"encoding/hex"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit/rowdigest"
)

// The row digest is the one docs/audit.md ("Rows that carry their event") defines, so that
// an auditor can recompute it without Vigil's code: the expected value was computed by an
// independent implementation (Python's hashlib, from the text) over every kind of value.
// Verifies: REQ-AUD-060
func TestDigestVector(t *testing.T) {
	var u [16]byte
	for i := range u {
		u[i] = byte(i)
	}
	names := []string{"n", "s", "b", "u", "t", "o", "i", "a"}
	vals := []any{nil, "é!", []byte{1, 2}, u, time.UnixMicro(1741608000000001), true, int64(-7), []any{[]byte{3}, nil}}
	got, err := rowdigest.Digest("core_patients", names, vals)
	if err != nil {
		t.Fatal(err)
	}
	const want = "ca7ea70548ff982d2372c99a26c6196d56b708b08dc243c645d1c15b126774fd"
	if hex.EncodeToString(got[:]) != want {
		t.Fatalf("Digest() = %x, want %s", got, want)
	}
	// Every column counts: a changed value, name or table changes the digest.
	for i := range vals {
		v2 := append([]any(nil), vals...)
		v2[i] = "other"
		if d, _ := rowdigest.Digest("core_patients", names, v2); d == got {
			t.Errorf("Digest() unchanged when column %s changes", names[i])
		}
	}
	if d, _ := rowdigest.Digest("auth_users", names, vals); d == got {
		t.Error("Digest() unchanged for another table")
	}
	if _, err := rowdigest.Digest("t", []string{"x"}, []any{struct{}{}}); err == nil {
		t.Error("Digest() of an unsupported value = nil error")
	}
}
