package chain

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
)

// More domain tables against the trail: sites, wards, patients (ward, discharge), care teams
// and webhooks (docs/audit.md "Domain rows against the trail"). As for the others, only
// authentic events count, the last one for an object wins, a row no event accounts for is an
// unaudited_change and a row that disagrees is a domain_mismatch. Patients' PHI is sealed
// and not in any event: what is compared is what the events carry (ward, discharge).

type patientEvent struct {
	ward       string
	discharged bool
	action     string
}

type careEvent struct {
	present bool
	role    string
}

type webhookEvent struct {
	deleted bool
	urlSHA  string
	types   []string
}

type news2Event struct {
	patient    string
	components json.RawMessage
}

type moreEvents struct {
	news2    map[string]news2Event // rules_news2 id → its observation.derived
	sites    map[string]string     // site id → name
	wards    map[string][2]string  // ward id → site id, name
	patients map[string]patientEvent
	care     map[string]careEvent // patient id + "/" + clinician id
	webhooks map[string]webhookEvent
}

func newMoreEvents() *moreEvents {
	return &moreEvents{news2: map[string]news2Event{}, sites: map[string]string{}, wards: map[string][2]string{}, patients: map[string]patientEvent{},
		care: map[string]careEvent{}, webhooks: map[string]webhookEvent{}}
}

const nilUUID = "00000000-0000-0000-0000-000000000000"

func payloadString(p map[string]any, k string) string {
	s, _ := p[k].(string)
	if s == nilUUID {
		return ""
	}
	return s
}

// note keeps what the cross-check needs of one authentic, successful event with an object.
func (m *moreEvents) note(ev *StoredEvent) {
	var p map[string]any
	if ev.Payload != nil {
		_ = json.Unmarshal(ev.Payload, &p)
	}
	id := *ev.ObjectID
	switch ev.Action {
	case "observation.derived":
		if ev.ObjectType == "news2" {
			var d struct {
				Patient    string          `json:"patient_id"`
				Components json.RawMessage `json:"components"`
			}
			if ev.Payload != nil && json.Unmarshal(ev.Payload, &d) == nil {
				m.news2[id] = news2Event{patient: d.Patient, components: d.Components}
			}
		}
	case "site.created":
		m.sites[id] = payloadString(p, "name")
	case "ward.created":
		m.wards[id] = [2]string{payloadString(p, "site_id"), payloadString(p, "name")}
	case "patient.created":
		m.patients[id] = patientEvent{ward: payloadString(p, "ward_id"), action: ev.Action}
	case "patient.moved":
		pe := m.patients[id]
		pe.ward, pe.action = payloadString(p, "ward_id"), ev.Action
		m.patients[id] = pe
	case "patient.discharged", "patient.admission_cancelled":
		pe := m.patients[id]
		pe.discharged, pe.action = true, ev.Action
		m.patients[id] = pe
	case "patient.readmitted":
		pe := m.patients[id]
		pe.ward, pe.discharged, pe.action = payloadString(p, "ward_id"), false, ev.Action
		m.patients[id] = pe
	case "patient.discharge_cancelled":
		pe := m.patients[id]
		pe.discharged, pe.action = false, ev.Action
		m.patients[id] = pe
	case "care_team.member_added":
		m.care[id+"/"+payloadString(p, "clinician_id")] = careEvent{present: true, role: payloadString(p, "role")}
	case "care_team.member_removed":
		m.care[id+"/"+payloadString(p, "clinician_id")] = careEvent{}
	case "webhook.created":
		var types []string
		if ts, ok := p["event_types"].([]any); ok {
			for _, t := range ts {
				if s, ok := t.(string); ok {
					types = append(types, s)
				}
			}
		}
		sort.Strings(types)
		m.webhooks[id] = webhookEvent{urlSHA: payloadString(p, "url_sha256"), types: types}
	case "webhook.deleted":
		w := m.webhooks[id]
		w.deleted = true
		m.webhooks[id] = w
	}
}

func (v *verifier) checkSites(ctx context.Context, d *domainEvents) error {
	return v.eachRow(ctx, `SELECT id::text, name FROM core_sites ORDER BY id`, func(scan func(...any) error) error {
		var id, name string
		if err := scan(&id, &name); err != nil {
			return err
		}
		want, ok := d.more.sites[id]
		switch {
		case !ok:
			v.find(Finding{Kind: FindingUnaudited, Detail: fmt.Sprintf("site %s (%q) has no authentic site.created event", id, name)})
		case want != name:
			v.find(Finding{Kind: FindingDomainMismatch, Detail: fmt.Sprintf("site %s: named %q in the row, %q in its site.created event", id, name, want)})
		}
		return nil
	})
}

func (v *verifier) checkWards(ctx context.Context, d *domainEvents) error {
	return v.eachRow(ctx, `SELECT id::text, site_id::text, name FROM core_wards ORDER BY id`, func(scan func(...any) error) error {
		var id, site, name string
		if err := scan(&id, &site, &name); err != nil {
			return err
		}
		want, ok := d.more.wards[id]
		switch {
		case !ok:
			v.find(Finding{Kind: FindingUnaudited, Detail: fmt.Sprintf("ward %s (%q) has no authentic ward.created event", id, name)})
		case want != [2]string{site, name}:
			v.find(Finding{Kind: FindingDomainMismatch, Detail: fmt.Sprintf("ward %s: site %s, name %q in the row; site %s, name %q in its ward.created event", id, site, name, want[0], want[1])})
		}
		return nil
	})
}

func (v *verifier) checkPatients(ctx context.Context, d *domainEvents) error {
	return v.eachRow(ctx, `SELECT id::text, coalesce(ward_id::text, ''), discharged_at IS NOT NULL FROM core_patients ORDER BY id`, func(scan func(...any) error) error {
		var id, ward string
		var discharged bool
		if err := scan(&id, &ward, &discharged); err != nil {
			return err
		}
		want, ok := d.more.patients[id]
		switch {
		case !ok:
			v.find(Finding{Kind: FindingUnaudited, Detail: fmt.Sprintf("patient %s has no authentic patient.created event", id)})
		case want.ward != ward || want.discharged != discharged:
			v.find(Finding{Kind: FindingDomainMismatch, Detail: fmt.Sprintf("patient %s: ward %q, discharged %v in the row; its events (last %s) say ward %q, discharged %v",
				id, ward, discharged, want.action, want.ward, want.discharged)})
		}
		return nil
	})
}

func (v *verifier) checkCareTeams(ctx context.Context, d *domainEvents) error {
	seen := map[string]bool{}
	err := v.eachRow(ctx, `SELECT patient_id::text, clinician_id, role FROM core_care_team ORDER BY patient_id, clinician_id`, func(scan func(...any) error) error {
		var pid, clin, role string
		if err := scan(&pid, &clin, &role); err != nil {
			return err
		}
		k := pid + "/" + clin
		seen[k] = true
		want, ok := d.more.care[k]
		switch {
		case !ok || !want.present:
			v.find(Finding{Kind: FindingUnaudited, Detail: fmt.Sprintf("care team of patient %s: %s (%s) has no authentic care_team.member_added event (or was removed)", pid, clin, role)})
		case want.role != role:
			v.find(Finding{Kind: FindingDomainMismatch, Detail: fmt.Sprintf("care team of patient %s: %s is %q in the row, %q in its event", pid, clin, role, want.role)})
		}
		return nil
	})
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(d.more.care))
	for k, e := range d.more.care {
		if e.present && !seen[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		// (A patient's row going takes its care team with it: that shows at the patient.)
		v.find(Finding{Kind: FindingDomainMismatch, Detail: fmt.Sprintf("care team member %s was added (authentic event) and never removed, but the row is gone", k)})
	}
	return nil
}

func (v *verifier) checkWebhooks(ctx context.Context, d *domainEvents) error {
	return v.eachRow(ctx, `SELECT id::text, url, event_types FROM core_webhooks ORDER BY id`, func(scan func(...any) error) error {
		var id, url string
		var types []string
		if err := scan(&id, &url, &types); err != nil {
			return err
		}
		want, ok := d.more.webhooks[id]
		sum := sha256.Sum256([]byte(url))
		sort.Strings(types)
		switch {
		case !ok:
			v.find(Finding{Kind: FindingUnaudited, Detail: fmt.Sprintf("webhook %s has no authentic webhook.created event", id)})
		case want.deleted:
			v.find(Finding{Kind: FindingDomainMismatch, Detail: fmt.Sprintf("webhook %s was deleted (authentic webhook.deleted event) but its row is back", id)})
		case want.urlSHA != hex.EncodeToString(sum[:]) || !slices.Equal(want.types, types):
			v.find(Finding{Kind: FindingDomainMismatch, Detail: fmt.Sprintf("webhook %s: the destination URL or event types in the row differ from its webhook.created event", id)})
		}
		return nil
	})
}

// checkNEWS2 compares each derived NEWS2 score (total, band, components, patient) with the
// observation.derived event that recorded it.
func (v *verifier) checkNEWS2(ctx context.Context, d *domainEvents) error {
	return v.eachRow(ctx, `SELECT id::text, patient_id::text, total, band, components::text FROM rules_news2 ORDER BY id`, func(scan func(...any) error) error {
		var id, pid, band, comp string
		var total int
		if err := scan(&id, &pid, &total, &band, &comp); err != nil {
			return err
		}
		want, ok := d.more.news2[id]
		var c struct {
			Total int    `json:"total"`
			Band  string `json:"band"`
		}
		switch {
		case !ok:
			v.find(Finding{Kind: FindingUnaudited, Detail: fmt.Sprintf("NEWS2 score %s (patient %s, total %d) has no authentic observation.derived event", id, pid, total)})
		case json.Unmarshal(want.components, &c) != nil || want.patient != pid || c.Total != total || c.Band != band || !jsonEqual(want.components, []byte(comp)):
			v.find(Finding{Kind: FindingDomainMismatch, Detail: fmt.Sprintf("NEWS2 score %s of patient %s: total %d, band %s in the row; its observation.derived event says total %d, band %s (or other components differ)",
				id, pid, total, band, c.Total, c.Band)})
		}
		return nil
	})
}

// eachRow runs q and calls fn with each row's Scan, counting the rows as domain rows.
func (v *verifier) eachRow(ctx context.Context, q string, fn func(scan func(...any) error) error) error {
	rows, err := v.q.Query(ctx, q)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		v.rep.DomainRows++
		if err := fn(rows.Scan); err != nil {
			return err
		}
	}
	return rows.Err()
}
