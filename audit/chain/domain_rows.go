package chain

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit/rowdigest"
)

// Rows tied to their events (audit/rowdigest): device status and assignment, every device
// assignment, patients (sealed PHI as its ciphertext, MRN index, ward, discharge), users (login,
// profile, password hash, status, second factors) and the Casbin policy lines carry the id of
// the event that last wrote them and the digest of their audited content that event
// committed to. Both ways: each row must have an authentic event that names it as last written,
// with the digest recomputed from the row; each row an authentic event wrote (and no later
// event deleted) must still exist.

// rowEvent is the last authentic event that wrote one row.
type rowEvent struct {
	event  uuid.UUID
	action string
	digest string // hex; rowdigest.Deleted: the action deleted the row
}

var rowDigestsKey = []byte(`"` + rowdigest.PayloadKey + `"`)

// noteRows keeps the row digests an authentic, successful event commits to, and the first
// baseline of each table (rowdigest.Baseline).
func (d *domainEvents) noteRows(ev *StoredEvent) {
	if ev.Action == rowdigest.BaselineAction && ev.ObjectType == rowdigest.BaselineObject && ev.ObjectID != nil {
		if d.baselines == nil {
			d.baselines = map[string]uuid.UUID{}
		}
		if _, ok := d.baselines[*ev.ObjectID]; !ok {
			d.baselines[*ev.ObjectID] = ev.ID
		}
	}
	if ev.Payload == nil || !bytes.Contains(ev.Payload, rowDigestsKey) {
		return
	}
	var p map[string]json.RawMessage
	if json.Unmarshal(ev.Payload, &p) != nil {
		return
	}
	var ds map[string]string
	if json.Unmarshal(p[rowdigest.PayloadKey], &ds) != nil {
		return
	}
	if d.rows == nil {
		d.rows = map[string]rowEvent{}
	}
	for ref, dg := range ds {
		d.rows[ref] = rowEvent{event: ev.ID, action: ev.Action, digest: dg}
	}
}

// checkRowSpecs cross-checks every audited table of rowdigest that exists in this database.
func (v *verifier) checkRowSpecs(ctx context.Context, d *domainEvents) error {
	for _, s := range rowdigest.All {
		ok, err := v.columnExists(ctx, s.Table, "audit_event_id")
		if err != nil {
			return fmt.Errorf("cross-check %s: %w", s.Table, err)
		}
		if !ok {
			continue
		}
		if err := v.checkRowSpec(ctx, d, s); err != nil {
			return fmt.Errorf("cross-check %s: %w", s.Table, err)
		}
	}
	return nil
}

func (v *verifier) columnExists(ctx context.Context, table, column string) (bool, error) {
	var ok bool
	err := v.q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM information_schema.columns
		WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2)`, table, column).Scan(&ok)
	return ok, err
}

// maxNamedRows bounds how many rows of one table a check names one by one; beyond it, one
// finding counts the rest.
const maxNamedRows = 50

func (v *verifier) checkRowSpec(ctx context.Context, d *domainEvents, s rowdigest.Spec) error {
	seen := map[string]bool{}
	named, more := 0, map[string]int{}
	report := func(f Finding) {
		if named < maxNamedRows {
			named++
			v.find(f)
			return
		}
		more[f.Kind]++
	}
	err := s.Rows(ctx, v.q, func(r rowdigest.Row) error {
		v.rep.DomainRows++
		ref := s.Ref(r.Key)
		seen[ref] = true
		last, ok := d.rows[ref]
		sum := hex.EncodeToString(r.Digest[:])
		switch {
		case r.EventID == nil:
			why := "written behind the system's back, or before the rows carried their events: `vigil audit baseline` adopts those once"
			if b, ok := d.baselines[s.Table]; ok {
				why = fmt.Sprintf("written behind the system's back: the table was baselined by event %s", b)
			}
			report(Finding{Kind: FindingUnaudited, Detail: fmt.Sprintf("%s %s names no event (%s)", s.Table, r.Key, why)})
		case !ok:
			report(Finding{Kind: FindingUnaudited, EventID: r.EventID.String(), Detail: fmt.Sprintf("%s %s: no authentic event wrote it (it names event %s)", s.Table, r.Key, r.EventID)})
		case last.digest == rowdigest.Deleted:
			report(Finding{Kind: FindingDomainMismatch, EventID: last.event.String(), Detail: fmt.Sprintf("%s %s was deleted by its last event (%s %s) but the row is there", s.Table, r.Key, last.action, last.event)})
		case *r.EventID != last.event:
			report(Finding{Kind: FindingDomainMismatch, EventID: last.event.String(), Detail: fmt.Sprintf("%s %s names event %s, but the last authentic event that wrote it is %s %s (an older state put back?)",
				s.Table, r.Key, r.EventID, last.action, last.event)})
		case sum != last.digest:
			how := "its content"
			if !bytes.Equal(r.Stored, r.Digest[:]) && hex.EncodeToString(r.Stored) == last.digest {
				how = "its content (its stored digest still matches)"
			}
			report(Finding{Kind: FindingDomainMismatch, EventID: last.event.String(), Detail: fmt.Sprintf("%s %s: %s differs from what its event %s %s committed to (%s)",
				s.Table, r.Key, how, last.action, last.event, strings.Join(s.Names, ", "))})
		}
		return nil
	})
	if err != nil {
		return err
	}
	prefix := s.Table + "/"
	var gone []string
	for ref, e := range d.rows {
		if strings.HasPrefix(ref, prefix) && e.digest != rowdigest.Deleted && !seen[ref] {
			gone = append(gone, ref)
		}
	}
	sort.Strings(gone)
	for _, ref := range gone {
		e := d.rows[ref]
		report(Finding{Kind: FindingDomainMismatch, EventID: e.event.String(), Detail: fmt.Sprintf("%s %s was written by its last event %s %s, but the row is gone",
			s.Table, strings.TrimPrefix(ref, prefix), e.action, e.event)})
	}
	for _, k := range []string{FindingDomainMismatch, FindingUnaudited} {
		if n := more[k]; n > 0 {
			v.find(Finding{Kind: k, Detail: fmt.Sprintf("%s: %d more rows (%s) not named one by one", s.Table, n, k)})
		}
	}
	return nil
}
