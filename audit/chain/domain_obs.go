package chain

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit/obsdigest"
)

// Observations of an upload that retention partly dropped. Observations are partitioned by
// their effective day and retention drops whole days, so an upload whose observations span
// two days (effective times around UTC midnight) can lose some of them and keep the others:
// that is retention, not tampering. Such an upload is checked against its event this way: each
// remaining observation must match, in canonical order, a fingerprint of the event's
// commitment (a changed one is named), and each observation that is gone must have fallen in
// a day an authentic retention.partition_dropped event dropped (judged from the remaining
// observations of the same patient and code on either side of it in canonical order).

// noteDropped keeps the range of an authentic retention drop of observations.
func (d *domainEvents) noteDropped(ev *StoredEvent) {
	if ev.Action != "retention.partition_dropped" || ev.Payload == nil {
		return
	}
	var p struct {
		Class string    `json:"class"`
		From  time.Time `json:"from"`
		To    time.Time `json:"to"`
	}
	if json.Unmarshal(ev.Payload, &p) != nil || p.Class != "observations" || !p.To.After(p.From) {
		return
	}
	d.dropped = append(d.dropped, [2]time.Time{p.From, p.To})
}

// droppedBetween reports whether a dropped range meets [lo, hi] (zero: unbounded).
func (d *domainEvents) droppedBetween(lo, hi time.Time) bool {
	for _, r := range d.dropped {
		if (hi.IsZero() || !r[0].After(hi)) && (lo.IsZero() || r[1].After(lo)) {
			return true
		}
	}
	return false
}

// comparePartial checks the remaining observations of upload id (fewer than its event
// stored) against its commitment, as described above. It reports whether retention explains
// the difference (findings are made for what it does not explain).
func (v *verifier) comparePartial(d *domainEvents, id uuid.UUID, group []obsdigest.Row, stored int64, want obsdigest.Commitment) bool {
	if len(d.dropped) == 0 {
		return false
	}
	fp, err := base64.StdEncoding.DecodeString(want.Fingerprints)
	k := obsdigest.FingerprintSize(int(stored))
	if err != nil || int64(len(fp)) != int64(k)*stored {
		v.find(Finding{Kind: FindingDomainMismatch, EventID: id.String(), Detail: fmt.Sprintf("upload %s: %d of its %d observations remain and its fingerprints do not parse", id, len(group), stored)})
		return true
	}
	hs := obsdigest.Sort(group)
	matched := make([]int, len(hs)) // committed position of each remaining row; -1: changed
	j := 0
	var changed []string
	for i := range hs {
		at := -1
		for p := j; p < int(stored); p++ {
			if bytes.Equal(hs[i].Hash[:k], fp[p*k:(p+1)*k]) {
				at = p
				break
			}
		}
		matched[i] = at
		if at < 0 {
			changed = append(changed, describeObs(hs[i].Row))
			continue
		}
		j = at + 1
	}
	// Each committed position no remaining row matched is an observation that is gone: it
	// lies, in canonical order, between the matched rows on either side of it; when both are
	// of the same patient and code, its time lies between theirs.
	var pos, rowAt []int
	for i, m := range matched {
		if m >= 0 {
			pos, rowAt = append(pos, m), append(rowAt, i)
		}
	}
	unexplained, c := 0, 0
	for p := 0; p < int(stored); p++ {
		for c < len(pos) && pos[c] < p {
			c++
		}
		if c < len(pos) && pos[c] == p {
			continue // present
		}
		var lo, hi time.Time
		if c > 0 && c < len(pos) {
			if a, b := &hs[rowAt[c-1]].Row, &hs[rowAt[c]].Row; sameSeries(a, b) {
				lo, hi = a.EffectiveAt, b.EffectiveAt
			}
		}
		if !d.droppedBetween(lo, hi) {
			unexplained++
		}
	}
	if len(changed) > maxNamedObservations {
		changed = append(changed[:maxNamedObservations], fmt.Sprintf("and %d more", len(changed)-maxNamedObservations))
	}
	switch {
	case len(changed) > 0:
		v.find(Finding{Kind: FindingDomainMismatch, EventID: id.String(), Detail: fmt.Sprintf("upload %s (%d of %d observations remain after retention): changed: %s",
			id, len(group), stored, strings.Join(changed, "; "))})
	case unexplained > 0:
		v.find(Finding{Kind: FindingDomainMismatch, EventID: id.String(), Detail: fmt.Sprintf("upload %s: %d of its %d observations are gone and no retention drop of observations explains them",
			id, unexplained, stored)})
	}
	return true
}

func sameSeries(a, b *obsdigest.Row) bool { return a.PatientID == b.PatientID && a.Code == b.Code }
