package chain

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit/obsdigest"
)

// Cross-checking domain rows against the trail (docs/audit.md "Domain rows against the
// trail"). The rows an audited action leaves behind must agree with what its authentic
// event says happened: an alarm's state, revision and acknowledger with its last transition;
// a device key with the enrollment or rotation that registered it; a rule version's
// definition with the event that created it; an upload row (whose id is its event's id) with
// its upload.accepted event, and, with Deep, the number of observations stored from it. A
// row with no authentic event is an unaudited change; a row that disagrees is a
// domain_mismatch. Only authentic events (valid tag) count: a forged event explains nothing.
const (
	FindingUnaudited      = "unaudited_change" // a domain row no authentic event accounts for (its event was deleted, or the row was made behind the system's back)
	FindingDomainMismatch = "domain_mismatch"  // a domain row disagrees with what its last authentic event says happened
)

// domainEvents is what verify keeps of the authentic events the cross-check needs.
type domainEvents struct {
	alarms  map[string]alarmEvent // alarm id → last transition
	acks    map[string]string     // alarm id → actor of the last alarm.acknowledged
	keys    map[string]string     // device id/version → public key hex
	rules   map[string]ruleEvent  // rule id/version → definition
	uploads map[uuid.UUID]upEvent // event id (= core_uploads.id) → upload
	seen    map[string]struct{}   // kinds with at least one event
	more    *moreEvents           // sites, wards, patients, care teams, webhooks
	rows    map[string]rowEvent   // "<table>/<key>" → the last event that wrote the row (domain_rows.go)
	// baselines: table → its first authentic audit.baseline event (domain_rows.go)
	baselines map[string]uuid.UUID
	dropped   [][2]time.Time // observation day ranges dropped by retention (domain_obs.go)
}

type alarmEvent struct {
	event    string
	action   string
	state    string
	revision int64
}

type ruleEvent struct {
	definition json.RawMessage
	enabled    bool
}

type upEvent struct {
	hash   string
	stored int64
	obs    *obsdigest.Commitment // nil for events from before the commitment (or synthetic ones)
}

func newDomainEvents() *domainEvents {
	return &domainEvents{alarms: map[string]alarmEvent{}, acks: map[string]string{}, keys: map[string]string{},
		rules: map[string]ruleEvent{}, uploads: map[uuid.UUID]upEvent{}, more: newMoreEvents()}
}

// note keeps what the cross-check needs of one authentic event (in seq order).
func (d *domainEvents) note(ev *StoredEvent) {
	if ev.Outcome != "success" {
		return
	}
	d.noteRows(ev)
	d.noteDropped(ev)
	if ev.ObjectID == nil {
		return
	}
	d.more.note(ev) // (some of these events have no payload)
	if ev.Payload == nil {
		return
	}
	var p map[string]any
	switch {
	case ev.ObjectType == "alarm" && strings.HasPrefix(ev.Action, "alarm."):
		if json.Unmarshal(ev.Payload, &p) != nil {
			return
		}
		st, _ := p["state"].(string)
		rev, _ := p["revision"].(float64)
		d.alarms[*ev.ObjectID] = alarmEvent{event: ev.ID.String(), action: ev.Action, state: st, revision: int64(rev)}
		if ev.Action == "alarm.acknowledged" && ev.ActorID != nil {
			d.acks[*ev.ObjectID] = *ev.ActorID
		}
	case ev.ObjectType == "device" && (ev.Action == "device.enrolled" || ev.Action == "device.key.rotated"):
		if json.Unmarshal(ev.Payload, &p) != nil {
			return
		}
		v, _ := p["key_version"].(float64)
		pk, _ := p["public_key"].(string)
		if pk == "" {
			pk, _ = p["new_public_key"].(string)
		}
		d.keys[fmt.Sprintf("%s/%d", *ev.ObjectID, int64(v))] = pk
	case ev.ObjectType == "rule" && ev.Action == "rule.version_created":
		var r struct {
			Version    int64           `json:"version"`
			Enabled    bool            `json:"enabled"`
			Definition json.RawMessage `json:"definition"`
		}
		if json.Unmarshal(ev.Payload, &r) != nil {
			return
		}
		d.rules[fmt.Sprintf("%s/%d", *ev.ObjectID, r.Version)] = ruleEvent{definition: r.Definition, enabled: r.Enabled}
	case ev.ObjectType == "upload" && ev.Action == "upload.accepted":
		var u struct {
			Stored int64 `json:"stored"`
			obsdigest.Commitment
		}
		if json.Unmarshal(ev.Payload, &u) != nil {
			return
		}
		up := upEvent{hash: *ev.ObjectID, stored: u.Stored}
		if u.Digest != "" {
			c := u.Commitment
			up.obs = &c
		}
		d.uploads[ev.ID] = up
	}
}

// crossCheck compares the domain tables that exist in this database with the events.
func (v *verifier) crossCheck(ctx context.Context) error {
	d := v.domain
	type check struct {
		table string
		run   func() error
	}
	for _, c := range []check{
		{"alarms", func() error { return v.checkAlarms(ctx, d) }},
		{"devices_keys", func() error { return v.checkDeviceKeys(ctx, d) }},
		{"rules_versions", func() error { return v.checkRules(ctx, d) }},
		{"core_uploads", func() error { return v.checkUploads(ctx, d) }},
		{"core_sites", func() error { return v.checkSites(ctx, d) }},
		{"core_wards", func() error { return v.checkWards(ctx, d) }},
		{"core_patients", func() error { return v.checkPatients(ctx, d) }},
		{"core_care_team", func() error { return v.checkCareTeams(ctx, d) }},
		{"core_webhooks", func() error { return v.checkWebhooks(ctx, d) }},
		{"rules_news2", func() error { return v.checkNEWS2(ctx, d) }},
	} {
		ok, err := v.tableExists(ctx, c.table)
		if err != nil {
			return fmt.Errorf("cross-check %s: %w", c.table, err)
		}
		if !ok {
			continue
		}
		if err := c.run(); err != nil {
			return fmt.Errorf("cross-check %s: %w", c.table, err)
		}
	}
	return v.checkRowSpecs(ctx, d)
}

func (v *verifier) tableExists(ctx context.Context, table string) (bool, error) {
	var ok bool
	err := v.q.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, table).Scan(&ok)
	return ok, err
}

func (v *verifier) checkAlarms(ctx context.Context, d *domainEvents) error {
	rows, err := v.q.Query(ctx, `SELECT id::text, state, revision, acked_by FROM alarms ORDER BY id`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id, state, ackedBy string
		var rev int64
		if err := rows.Scan(&id, &state, &rev, &ackedBy); err != nil {
			return err
		}
		v.rep.DomainRows++
		ev, ok := d.alarms[id]
		switch {
		case !ok:
			v.find(Finding{Kind: FindingUnaudited, Detail: fmt.Sprintf("alarm %s (state %s, revision %d) has no authentic alarm event", id, state, rev)})
		case ev.state != state || ev.revision != rev:
			v.find(Finding{Kind: FindingDomainMismatch, EventID: ev.event, Detail: fmt.Sprintf("alarm %s: state %s revision %d in the row, but its last event %s says state %s revision %d",
				id, state, rev, ev.action, ev.state, ev.revision)})
		case state == "acknowledged" && ackedBy != d.acks[id]:
			v.find(Finding{Kind: FindingDomainMismatch, EventID: ev.event, Detail: fmt.Sprintf("alarm %s: acknowledged by %q in the row, by %q in its alarm.acknowledged event",
				id, ackedBy, d.acks[id])})
		}
	}
	return rows.Err()
}

func (v *verifier) checkDeviceKeys(ctx context.Context, d *domainEvents) error {
	rows, err := v.q.Query(ctx, `SELECT device_id::text, version, public_key FROM devices_keys ORDER BY device_id, version`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var dev string
		var ver int64
		var pub []byte
		if err := rows.Scan(&dev, &ver, &pub); err != nil {
			return err
		}
		v.rep.DomainRows++
		want, ok := d.keys[fmt.Sprintf("%s/%d", dev, ver)]
		switch {
		case !ok:
			v.find(Finding{Kind: FindingUnaudited, Detail: fmt.Sprintf("device %s key version %d has no authentic device.enrolled or device.key.rotated event", dev, ver)})
		case want != hex.EncodeToString(pub):
			v.find(Finding{Kind: FindingDomainMismatch, Detail: fmt.Sprintf("device %s key version %d: the public key in devices_keys is not the one its event registered", dev, ver)})
		}
	}
	return rows.Err()
}

func (v *verifier) checkRules(ctx context.Context, d *domainEvents) error {
	// Versions written by a migration (the default rule set: created_by 'system', at the
	// time a migration was applied) have no event; they are not checked here.
	seeded := `false`
	if ok, err := v.tableExists(ctx, "goose_db_version"); err != nil {
		return err
	} else if ok {
		seeded = `(r.created_by = 'system' AND EXISTS (SELECT 1 FROM goose_db_version g WHERE g.is_applied
			AND abs(extract(epoch FROM g.tstamp::timestamptz - r.created_at)) < 60))`
	}
	rows, err := v.q.Query(ctx, `SELECT rule_id, version, enabled, definition::text FROM rules_versions r
		WHERE NOT `+seeded+` ORDER BY rule_id, version`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id, def string
		var ver int64
		var enabled bool
		if err := rows.Scan(&id, &ver, &enabled, &def); err != nil {
			return err
		}
		v.rep.DomainRows++
		ev, ok := d.rules[fmt.Sprintf("%s/%d", id, ver)]
		switch {
		case !ok:
			v.find(Finding{Kind: FindingUnaudited, Detail: fmt.Sprintf("rule %s version %d has no authentic rule.version_created event", id, ver)})
		case ev.enabled != enabled || !jsonEqual(ev.definition, []byte(def)):
			v.find(Finding{Kind: FindingDomainMismatch, Detail: fmt.Sprintf("rule %s version %d: the definition (thresholds) or enabled flag in rules_versions differs from its rule.version_created event", id, ver)})
		}
	}
	return rows.Err()
}

func (v *verifier) checkUploads(ctx context.Context, d *domainEvents) error {
	var counts map[uuid.UUID]int64
	var partial map[uuid.UUID]bool
	if v.cfg.Deep {
		var err error
		if counts, partial, err = v.checkObservations(ctx, d); err != nil {
			return err
		}
	}
	rows, err := v.q.Query(ctx, `SELECT id, upload_hash, stored FROM core_uploads ORDER BY id`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id uuid.UUID
		var hash []byte
		var stored int64
		if err := rows.Scan(&id, &hash, &stored); err != nil {
			return err
		}
		v.rep.DomainRows++
		ev, ok := d.uploads[id]
		switch {
		case !ok:
			v.find(Finding{Kind: FindingUnaudited, EventID: id.String(), Detail: fmt.Sprintf("upload %s has no authentic upload.accepted event", id)})
		case ev.hash != hex.EncodeToString(hash) || ev.stored != stored:
			v.find(Finding{Kind: FindingDomainMismatch, EventID: id.String(), Detail: fmt.Sprintf("upload %s: hash or stored count (%d) in core_uploads differs from its event (%d)", id, stored, ev.stored)})
		case v.cfg.Deep && counts[id] != 0 && counts[id] != stored && !partial[id]:
			// (A retention drop removes every observation of an upload: a count of 0 is not
			// a finding.)
			v.find(Finding{Kind: FindingDomainMismatch, EventID: id.String(), Detail: fmt.Sprintf("upload %s: %d observations stored from it, its event says %d", id, counts[id], stored)})
		}
	}
	return rows.Err()
}

// maxNamedObservations bounds how many changed observations of one upload a finding names.
const maxNamedObservations = 5

// checkObservations reads every stored observation, grouped by the upload that stored it,
// and returns the count per upload. For each upload whose event commits to its observations
// (audit/obsdigest) and whose count matches, it recomputes the digest; a difference is a
// domain_mismatch naming the changed observations (patient, code, time, stored value). An
// observation whose upload has no authentic upload.accepted event is an unaudited change. An
// upload some of whose observations retention dropped is checked by comparePartial; the
// uploads it judged are returned in partial.
func (v *verifier) checkObservations(ctx context.Context, d *domainEvents) (map[uuid.UUID]int64, map[uuid.UUID]bool, error) {
	rows, err := v.q.Query(ctx, `SELECT upload_id, patient_id, code, effective_at, value, flags
		FROM core_observations ORDER BY upload_id`)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	counts, partial := map[uuid.UUID]int64{}, map[uuid.UUID]bool{}
	var cur uuid.UUID
	var group []obsdigest.Row
	flush := func() {
		if len(group) == 0 {
			return
		}
		counts[cur] = int64(len(group))
		v.rep.ObservationsChecked += int64(len(group))
		ev, ok := d.uploads[cur]
		switch {
		case !ok:
			v.find(Finding{Kind: FindingUnaudited, EventID: cur.String(), Detail: fmt.Sprintf("%d observations (first: %s) point to upload %s, which has no authentic upload.accepted event",
				len(group), describeObs(group[0]), cur)})
		case ev.obs != nil && ev.stored == int64(len(group)):
			v.compareObservations(cur, group, *ev.obs)
		case ev.obs != nil && ev.stored > int64(len(group)):
			partial[cur] = v.comparePartial(d, cur, group, ev.stored, *ev.obs)
		}
		group = group[:0]
	}
	for rows.Next() {
		var up uuid.UUID
		var r obsdigest.Row
		if err := rows.Scan(&up, &r.PatientID, &r.Code, &r.EffectiveAt, &r.Value, &r.Flags); err != nil {
			return nil, nil, err
		}
		if up != cur {
			flush()
			cur = up
		}
		group = append(group, r)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	flush()
	return counts, partial, nil
}

func (v *verifier) compareObservations(id uuid.UUID, group []obsdigest.Row, want obsdigest.Commitment) {
	hs := obsdigest.Sort(group)
	if obsdigest.CommitSorted(hs).Digest == want.Digest {
		return
	}
	idx, ok, err := obsdigest.Changed(hs, want)
	var named []string
	for _, i := range idx {
		if len(named) == maxNamedObservations {
			named = append(named, fmt.Sprintf("and %d more", len(idx)-maxNamedObservations))
			break
		}
		named = append(named, describeObs(hs[i].Row))
	}
	detail := fmt.Sprintf("upload %s: the stored observations differ from the digest its event committed to", id)
	switch {
	case err != nil:
		detail += fmt.Sprintf(" (its fingerprints do not parse: %v)", err)
	case ok && len(named) > 0:
		detail += "; changed: " + strings.Join(named, "; ")
	default:
		detail += " (the fingerprints do not localize the change)"
	}
	v.find(Finding{Kind: FindingDomainMismatch, EventID: id.String(), Detail: detail})
}

func describeObs(r obsdigest.Row) string {
	fl := ""
	if r.Flags != 0 {
		fl = fmt.Sprintf(" flags %d", r.Flags)
	}
	return fmt.Sprintf("patient %s code %s at %s value %s%s", r.PatientID, r.Code,
		r.EffectiveAt.UTC().Format(time.RFC3339Nano), strconv.FormatFloat(r.Value, 'g', -1, 64), fl)
}

func jsonEqual(a, b []byte) bool {
	if bytes.Equal(a, b) {
		return true
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}
