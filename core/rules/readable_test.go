package rules_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
)

// Hazard 7 (issue #12): the alarm transitions the stream and webhooks carry say in words what
// the alarm is: the rule's name, the priority, the limit, the measured values with human units
// (a NEWS2 alarm each parameter with its value and points), with no UCUM code or enum name
// as text, member names in snake_case (the actor too), and no patient identity.
// Verifies: REQ-CORE-130, REQ-CORE-132
func TestNotifiedTransitionsAreReadable(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var mu sync.Mutex
	var got []alarms.Transition
	svc, err := alarms.New(alarms.Config{Pool: e.pool, Recorder: e.rec, Now: e.clk.Now,
		Notifier: alarms.NotifierFunc(func(_ context.Context, tr alarms.Transition) { mu.Lock(); got = append(got, tr); mu.Unlock() })})
	if err != nil {
		t.Fatal(err)
	}
	if e.eng, err = rules.New(context.Background(), rules.Config{Pool: e.pool, Recorder: e.rec, Alarms: svc, History: e.hist, Now: e.clk.Now}); err != nil {
		t.Fatal(err)
	}
	p := uuid.New()
	for s := 0; s <= 90; s += 30 {
		at := t0.Add(time.Duration(s) * time.Second)
		e.feed(t, p, obs(p, rules.CodeRespiratoryRate, 26, at), obs(p, rules.CodeSpO2, 95, at), obs(p, rules.CodeSystolicBP, 115, at),
			obs(p, rules.CodeHeartRate, 95, at), obs(p, rules.CodeBodyTemperature, 39.5, at), obs(p, rules.CodeConsciousness, 0, at),
			obs(p, rules.CodeInhaledO2Conc, 21, at))
	}
	mu.Lock()
	defer mu.Unlock()
	byRule := map[string][]byte{}
	for _, tr := range got {
		b, err := json.Marshal(tr)
		if err != nil {
			t.Fatal(err)
		}
		byRule[tr.Alarm.RuleID] = b
	}
	// RR 26 (3), SpO2 95 (1), air, 115 (0), 95 (1), alert, 39.5 °C (2): NEWS2 7, high.
	n2 := byRule["news2"]
	for _, want := range []string{`"rule":"NEWS`, `"priority":"critical priority"`, `"response":"high clinical response"`,
		`"parameter":"Respiration rate","value":26,"unit":"/min","text":"26/min","points":3`,
		`"parameter":"Temperature","value":39.5,"unit":"°C","text":"39.5 °C","points":2`,
		`"parameter":"Consciousness (ACVPU)","value":0,"unit":"","text":"alert","points":0`,
		`"actor":{"kind":"service","id":"vigil-rules"`} {
		if !strings.Contains(string(n2), want) {
			t.Errorf("news2 transition = %s\nwant it to contain %s", n2, want)
		}
	}
	th := byRule["temp-high"]
	var tr struct {
		Readable rules.Readable `json:"readable"`
	}
	if err := json.Unmarshal(th, &tr); err != nil || tr.Readable.Limit != "above 39 °C" || tr.Readable.Priority != "medium priority" ||
		len(tr.Readable.Measured) != 1 || tr.Readable.Measured[0].Text != "39.5 °C" || tr.Readable.Rule == "temp-high" {
		t.Errorf("temp-high transition readable = %+v (%v), want its name, 39.5 °C above 39 °C, medium priority", tr.Readable, err)
	}
	for rule, b := range byRule {
		var r struct {
			Readable json.RawMessage `json:"readable"`
		}
		_ = json.Unmarshal(b, &r)
		for _, code := range []string{`Cel"`, " Cel", "low_medium", "mm[Hg]", "{score}", `"Kind"`} {
			if strings.Contains(string(r.Readable), code) || code == `"Kind"` && strings.Contains(string(b), code) {
				t.Errorf("%s transition shows %s: %s", rule, code, b)
			}
		}
	}
}
