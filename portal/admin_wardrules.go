package portal

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit/chain"
)

// Each ward's NEWS2 settings (which parameters the ward charts by hand and how old a charted
// value may be: rules.Engine.SetWardNEWS2) with every version, who set it and why. The rules
// engine keeps only the current settings; their versions are its audit events
// (rules.ward_news2_set, whose object is the ward), read here from the audit chain. Shown with
// the clinical rules (rule read); no patient data.

type wardSettingView struct {
	Ward, Version, At, Who, Charted, MaxAge, Reason string
}

func (p *Portal) wardSettingViews(ctx context.Context, wards map[uuid.UUID]string, names func(string, *string) (string, bool)) ([]wardSettingView, error) {
	if p.cfg.Audit == nil {
		return nil, nil
	}
	page, err := p.cfg.Audit.Events(ctx, chain.EventFilter{Action: "rules.ward_news2_set", ObjectType: "ward", Limit: 200})
	if err != nil {
		return nil, err
	}
	perWard := map[string]int{}
	for _, ev := range page.Events {
		if ev.Outcome == "success" && ev.ObjectID != nil {
			perWard[*ev.ObjectID]++
		}
	}
	var out []wardSettingView
	for _, ev := range page.Events { // newest first: versions count down
		if ev.Outcome != "success" || ev.ObjectID == nil {
			continue
		}
		full, err := p.cfg.Audit.Event(ctx, ev.ID) // the payload (Events leaves it out)
		if err != nil {
			return nil, err
		}
		var pl struct {
			Charted []string `json:"charted"`
			MaxAge  float64  `json:"charted_max_age_seconds"`
			Reason  string   `json:"reason"`
		}
		if len(full.Event.Payload) > 0 {
			if err := json.Unmarshal(full.Event.Payload, &pl); err != nil {
				return nil, fmt.Errorf("ward settings event %s: %w", ev.ID, err)
			}
		}
		ward := *ev.ObjectID
		if id, err := uuid.Parse(ward); err == nil && wards[id] != "" {
			ward = wards[id]
		}
		who, _ := names(ev.ActorKind, ev.ActorID)
		out = append(out, wardSettingView{Ward: ward, Version: fmt.Sprint(perWard[*ev.ObjectID]), At: ev.Time.UTC().Format("2006-01-02 15:04 UTC"),
			Who: who, Charted: strings.Join(pl.Charted, ", "), MaxAge: shortDuration(time.Duration(pl.MaxAge) * time.Second), Reason: pl.Reason})
		perWard[*ev.ObjectID]--
	}
	return out, nil
}

// shortDuration writes 4h rather than 4h0m0s, 90m as 1h30m.
func shortDuration(d time.Duration) string {
	s := d.String()
	switch {
	case strings.HasSuffix(s, "h0m0s"):
		return strings.TrimSuffix(s, "0m0s")
	case strings.HasSuffix(s, "m0s"):
		return strings.TrimSuffix(s, "0s")
	}
	return s
}
