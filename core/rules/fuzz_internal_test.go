package rules

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
)

// Rule definitions arrive from the network (POST /api/v1/rules/{id}/versions): any JSON either
// fails to decode, is refused by Validate with ErrInvalidRule, or is a rule that evaluates any
// observations without panicking and only raises valid severities.
// Verifies: REQ-CORE-108
func FuzzRuleDefinition(f *testing.F) {
	seeds := []string{
		`{"id":"hr-high","name":"x","kind":"threshold","enabled":true,"reason":"r","threshold":{"code":"8867-4","direction":"above","levels":[{"limit":120,"severity":"medium"},{"limit":140,"severity":"high"}],"hysteresis":5,"min_duration":"30s"}}`,
		`{"id":"f","name":"x","kind":"rate","enabled":true,"reason":"r","rate":{"code":"8480-6","direction":"below","max_change":30,"window":"15m","severity":"high"}}`,
		`{"id":"a","name":"x","kind":"anomaly","enabled":true,"reason":"r","anomaly":{"code":"8867-4","alpha":0.05,"z":4,"warmup":3,"clear_after":2,"min_stddev":1,"severity":"low"}}`,
		`{"id":"n","name":"x","kind":"news2","enabled":true,"reason":"r","news2":{"max_age":"1h","assume_air":true,"assume_alert":true}}`,
		`{"id":"d","name":"x","kind":"nodata","enabled":true,"reason":"r","nodata":{"silence":"10m","severity":"medium"}}`,
		`{"id":"BAD","kind":"threshold"}`,
	}
	for _, s := range seeds {
		f.Add(s, 100.0, 50.0, int64(30))
	}
	f.Add(seeds[2], 1e308, -1e308, int64(1))
	f.Fuzz(func(t *testing.T, def string, v1, v2 float64, step int64) {
		var r Rule
		if err := json.Unmarshal([]byte(def), &r); err != nil {
			return
		}
		r.Version = 1
		if err := r.Validate(); err != nil {
			if !errors.Is(err, ErrInvalidRule) {
				t.Fatalf("Validate() error %v, want ErrInvalidRule", err)
			}
			return
		}
		set := &ruleSet{byCode: map[string][]*Rule{}}
		set.list = []*Rule{&r}
		for _, c := range []string{CodeHeartRate, CodeSystolicBP, CodeSpO2} {
			set.byCode[c] = []*Rule{&r}
		}
		p := uuid.New()
		x := &runner{pid: p, ps: newPatientState()}
		at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		var obs []Observation
		for i := 0; i < 40; i++ {
			v := v1
			if i%3 == 0 {
				v = v2
			}
			at = at.Add(time.Duration(step%3600+1) * time.Second)
			for _, c := range []string{CodeHeartRate, CodeSystolicBP, CodeSpO2, CodeRespiratoryRate, CodeBodyTemperature, CodeConsciousness, CodeInhaledO2Flow} {
				obs = append(obs, Observation{PatientID: p, Code: c, Value: v, EffectiveAt: at})
			}
		}
		x.observe(set.list, set.byCode, obs)
		x.silent(set.list, at.Add(24*time.Hour))
		for _, s := range x.sigs {
			if s.Raise && !s.Severity.Valid() {
				t.Fatalf("signal %+v raises an invalid severity", s)
			}
			if _, err := json.Marshal(s.Detail); err != nil {
				t.Fatalf("signal detail not JSON: %v", err)
			}
		}
		if _, err := json.Marshal(x.ps); err != nil {
			t.Fatalf("state not JSON: %v", err)
		}
	})
}
