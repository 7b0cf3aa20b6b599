package server

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// The alarm and rule endpoints: list/get/acknowledge/silence/resolve and rule versions, with
// domain errors mapped to stable codes.
// Verifies: REQ-CORE-118, REQ-CORE-112, REQ-CORE-108
func TestAlarmAndRuleAPI(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	now := time.Date(2026, 5, 6, 7, 0, 0, 0, time.UTC)
	clk := func() time.Time { return now }
	rec := audittest.Recorder(t, pool, nil)
	svc, err := alarms.New(alarms.Config{Pool: pool, Recorder: rec, Now: clk})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := rules.New(ctx, rules.Config{Pool: pool, Recorder: rec, Alarms: svc, Now: clk})
	if err != nil {
		t.Fatal(err)
	}
	authSvc, cl, user := SignedInUserOn(t, pool, rec)
	s, err := New(Config{Pool: pool, Recorder: rec, Alarms: svc, Rules: eng, Now: clk, Auth: authSvc})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()

	p := uuid.New()
	res, err := eng.Evaluate(ctx, p, []rules.Observation{{PatientID: p, Code: rules.CodeSpO2, Value: 84, Unit: "%", EffectiveAt: now.Add(-time.Minute)},
		{PatientID: p, Code: rules.CodeSpO2, Value: 84, Unit: "%", EffectiveAt: now}})
	var id string
	for _, tr := range res.Transitions { // and a partial NEWS2 (SpO2 84 alone scores 3)
		if tr.Alarm.RuleID == "spo2-low" {
			id = tr.Alarm.ID.String()
		}
	}
	if err != nil || id == "" {
		t.Fatalf("Evaluate() = %v, %v; want a spo2-low alarm", res.Transitions, err)
	}

	call := jsonCaller(t, cl, ts.URL)
	code := func(m map[string]any) string {
		if e, ok := m["error"].(map[string]any); ok {
			return e["code"].(string)
		}
		return ""
	}

	cases := []struct {
		method, path string
		body         any
		status       int
		code         string
	}{
		{"GET", "/api/v1/alarms?patient_id=" + p.String() + "&state=active", nil, 200, ""},
		{"GET", "/api/v1/alarms/" + id, nil, 200, ""},
		{"GET", "/api/v1/alarms/" + uuid.NewString(), nil, 404, "alarm_not_found"},
		{"GET", "/api/v1/alarms/not-a-uuid", nil, 400, "invalid_alarm_id"},
		{"GET", "/api/v1/alarms?state=bogus", nil, 400, "invalid_alarm_request"},
		{"POST", "/api/v1/alarms/" + id + "/silence", map[string]any{"reason": "", "duration": "5m"}, 400, "invalid_alarm_request"},
		{"POST", "/api/v1/alarms/" + id + "/silence", map[string]any{"reason": "suctioning", "duration": "5m"}, 200, ""},
		{"POST", "/api/v1/alarms/" + id + "/acknowledge", map[string]any{"note": "on it"}, 200, ""},
		{"POST", "/api/v1/alarms/" + id + "/acknowledge", nil, 409, "alarm_state_conflict"},
		{"POST", "/api/v1/alarms/" + id + "/resolve", map[string]any{"reason": ""}, 400, "invalid_alarm_request"},
		{"POST", "/api/v1/alarms/" + id + "/resolve", map[string]any{"reason": "probe repositioned"}, 200, ""},
		{"GET", "/api/v1/rules", nil, 200, ""},
		{"GET", "/api/v1/rules/news2/versions", nil, 200, ""},
		{"GET", "/api/v1/rules/nope/versions", nil, 404, "rule_not_found"},
		{"POST", "/api/v1/rules/nodata/versions", map[string]any{"version": 1, "name": "No data", "kind": "nodata", "enabled": true,
			"reason": "ICU: 5 minutes", "nodata": map[string]any{"silence": "5m", "severity": "high"}}, 201, ""},
		{"POST", "/api/v1/rules/nodata/versions", map[string]any{"version": 1, "name": "No data", "kind": "nodata", "enabled": true,
			"reason": "stale", "nodata": map[string]any{"silence": "5m", "severity": "high"}}, 409, "rule_version_conflict"},
		{"POST", "/api/v1/rules/nodata/versions", map[string]any{"version": 2, "name": "No data", "kind": "nodata", "enabled": true,
			"reason": "bad", "nodata": map[string]any{"silence": "5m", "severity": "extreme"}}, 400, "invalid_json"},
		{"POST", "/api/v1/rules/nodata/versions", map[string]any{"version": 2, "name": "No data", "kind": "nodata", "enabled": true,
			"reason": "bad", "nodata": map[string]any{"silence": "0s", "severity": "high"}}, 400, "invalid_rule"},
		{"PUT", "/api/v1/patients/" + p.String() + "/spo2-scale", map[string]any{"scale": 2, "reason": "COPD, target 88-92"}, 200, ""},
		{"PUT", "/api/v1/patients/" + p.String() + "/spo2-scale", map[string]any{"scale": 5, "reason": "x"}, 400, "invalid_rule"},
		{"GET", "/api/v1/patients/" + p.String() + "/news2?limit=10", nil, 200, ""},
		{"GET", "/api/v1/patients/" + p.String() + "/news2?from=yesterday", nil, 400, "invalid_time"},
	}
	for _, c := range cases {
		st, out := call(c.method, c.path, c.body)
		if st != c.status || code(out) != c.code {
			t.Errorf("%s %s = %d %q, want %d %q (%v)", c.method, c.path, st, code(out), c.status, c.code, out)
		}
	}
	_, out := call("GET", "/api/v1/alarms/"+id, nil)
	if out["state"] != "resolved" || out["acked_by"] != user.ID.String() || out["silence_reason"] != "suctioning" || out["severity"] != "critical" {
		t.Errorf("GET alarm after actions = %v, want resolved, acked by the signed-in user %s, silence reason kept, critical", out, user.ID)
	}
	_, out = call("GET", "/api/v1/rules/nodata/versions", nil)
	if vs, _ := out["versions"].([]any); len(vs) != 2 {
		t.Errorf("GET nodata versions = %v, want 2 versions", out)
	}
}
