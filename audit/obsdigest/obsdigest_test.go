package obsdigest_test

import (
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit/obsdigest"
)

func rows(n int) []obsdigest.Row {
	p := uuid.MustParse("0190c0de-0000-7000-8000-000000000001")
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC)
	out := make([]obsdigest.Row, n)
	for i := range out {
		out[i] = obsdigest.Row{PatientID: p, Code: []string{"8867-4", "59408-5", "9279-1"}[i%3], EffectiveAt: t0.Add(time.Duration(i) * time.Second), Value: 60 + float64(i)/7}
	}
	return out
}

// The commitment does not depend on the order rows come in; a changed value, flag, time or
// code changes the digest, and the fingerprints name the changed row.
// Verifies: REQ-AUD-050
func TestCommitmentNamesTheChangedRow(t *testing.T) {
	rs := rows(50)
	c := obsdigest.Commit(rs)
	rev := make([]obsdigest.Row, len(rs))
	for i := range rs {
		rev[len(rs)-1-i] = rs[i]
	}
	if got := obsdigest.Commit(rev); got != c {
		t.Fatalf("Commit(reversed) = %+v, want %+v", got, c)
	}
	for name, change := range map[string]func(r *obsdigest.Row){
		"value": func(r *obsdigest.Row) { r.Value += 1e-9 },
		"flags": func(r *obsdigest.Row) { r.Flags = 1 },
		"time":  func(r *obsdigest.Row) { r.EffectiveAt = r.EffectiveAt.Add(time.Microsecond) },
		"code":  func(r *obsdigest.Row) { r.Code = "8310-5" },
	} {
		changed := append([]obsdigest.Row(nil), rs...)
		change(&changed[17])
		hs := obsdigest.Sort(changed)
		if obsdigest.CommitSorted(hs).Digest == c.Digest {
			t.Errorf("%s changed: digest unchanged", name)
			continue
		}
		idx, ok, err := obsdigest.Changed(hs, c)
		if err != nil || !ok || len(idx) == 0 {
			t.Errorf("%s changed: Changed() = %v, %v, %v", name, idx, ok, err)
			continue
		}
		if name == "value" || name == "flags" {
			if len(idx) != 1 || hs[idx[0]].Value != changed[17].Value || hs[idx[0]].Flags != changed[17].Flags {
				t.Errorf("%s changed: Changed() = %v, want only the changed row", name, idx)
			}
		}
	}
	// Microseconds are what the database stores: nanoseconds below do not count.
	ns := append([]obsdigest.Row(nil), rs...)
	ns[3].EffectiveAt = ns[3].EffectiveAt.Add(999)
	if obsdigest.Commit(ns) != c {
		t.Error("sub-microsecond difference changed the digest")
	}
	// A row missing: the fingerprints cannot be compared place by place.
	if _, ok, _ := obsdigest.Changed(obsdigest.Sort(rs[1:]), c); ok {
		t.Error("Changed() with a row missing: ok = true")
	}
}

// Large uploads keep the payload under the event's cap: 2 bytes of fingerprint per row above
// 2,048 rows (4,096 rows: 8 KiB, 10.9 KiB in base64).
// Verifies: REQ-AUD-050
func TestFingerprintSize(t *testing.T) {
	for n, want := range map[int]int{0: 4, 1: 4, 2048: 4, 2049: 2, 4096: 2} {
		if got := obsdigest.FingerprintSize(n); got != want {
			t.Errorf("FingerprintSize(%d) = %d, want %d", n, got, want)
		}
	}
	if c := obsdigest.Commit(rows(4096)); len(c.Fingerprints)+len(c.Digest) > 12<<10 {
		t.Errorf("commitment of 4,096 rows: %d bytes", len(c.Fingerprints)+len(c.Digest))
	}
}
