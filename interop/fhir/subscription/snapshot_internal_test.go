package subscription

import "testing"

// A Subscription's creating snapshot is read from PostgreSQL's text form and answers as
// pg_visible_in_snapshot does for committed transactions: below xmin seen, from xmax on not
// seen, in between seen unless it was still running (xip).
// Verifies: REQ-INT-052
func TestSnapshotSees(t *testing.T) {
	s, err := parseSnapshot("100:105:101,103")
	if err != nil {
		t.Fatal(err)
	}
	for txid, want := range map[uint64]bool{99: true, 100: true, 101: false, 102: true, 103: false, 104: true, 105: false, 200: false} {
		if got := s.sees(txid); got != want {
			t.Errorf("snapshot 100:105:101,103 sees %d = %v, want %v", txid, got, want)
		}
	}
	if s, err := parseSnapshot("7:7:"); err != nil || !s.sees(6) || s.sees(7) {
		t.Errorf("snapshot 7:7: = %+v, %v; want seeing 6, not 7", s, err)
	}
	for _, bad := range []string{"", "1:2", "a:2:", "1:b:", "1:2:x", "1:2:3:4"} {
		if _, err := parseSnapshot(bad); err == nil {
			t.Errorf("parseSnapshot(%q) = nil error", bad)
		}
	}
}
