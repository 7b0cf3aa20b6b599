package subscription

import (
	"fmt"
	"strconv"
	"strings"
)

// snapshot is a PostgreSQL pg_snapshot (its text form "xmin:xmax:xip,…"): which transactions
// had committed when it was taken. A Subscription keeps the one of the transaction that
// created it (migration 00714), so that the durable dispatcher notifies it only of the rows
// committed after its creation, however late it reads them.
type snapshot struct {
	xmin, xmax uint64
	xip        map[uint64]bool
}

func parseSnapshot(text string) (*snapshot, error) {
	parts := strings.Split(text, ":")
	if len(parts) != 3 {
		return nil, fmt.Errorf("snapshot %q: want xmin:xmax:xip", text)
	}
	var s snapshot
	var err error
	if s.xmin, err = strconv.ParseUint(parts[0], 10, 64); err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", text, err)
	}
	if s.xmax, err = strconv.ParseUint(parts[1], 10, 64); err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", text, err)
	}
	if parts[2] != "" {
		s.xip = map[uint64]bool{}
		for _, v := range strings.Split(parts[2], ",") {
			x, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("snapshot %q: %w", text, err)
			}
			s.xip[x] = true
		}
	}
	return &s, nil
}

// sees reports whether the transaction txid had committed when the snapshot was taken
// (PostgreSQL's pg_visible_in_snapshot, for a transaction known to have committed).
func (s *snapshot) sees(txid uint64) bool {
	switch {
	case txid < s.xmin:
		return true
	case txid >= s.xmax:
		return false
	default:
		return !s.xip[txid]
	}
}
