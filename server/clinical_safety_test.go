package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/obs"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/devicestest"
	"github.com/vigilhealth/vigil/devices/envelope"
	"github.com/vigilhealth/vigil/server"
)

// clinicalHTTP is the whole clinical path behind the HTTP API: signed uploads → devices → core →
// hand-off → rules → alarms, under devicestest's controlled clock.
type clinicalHTTP struct {
	*devicestest.Env
	ts      *httptest.Server
	handoff *obs.Handoff
	cl      *http.Client // a signed-in clinician's session (every role everywhere)
}

func newClinicalHTTP(t *testing.T) *clinicalHTTP {
	t.Helper()
	e := devicestest.New(t, nil) // the registry (devices, keys, assignments) and a patient
	ctx := context.Background()
	handoff := obs.NewHandoff(obs.HandoffConfig{})
	cs, err := core.New(core.Config{Pool: e.Pool, Recorder: e.Rec, Now: e.Clock.Now, PHI: e.Ring.PHI(), Handoff: handoff})
	if err != nil {
		t.Fatal(err)
	}
	ds, err := devices.New(devices.Config{Pool: e.Pool, Recorder: e.Rec, Ingester: cs, ReceiptSigner: e.Signer, Now: e.Clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ds.Close(context.Background()) })
	as, err := alarms.New(alarms.Config{Pool: e.Pool, Recorder: e.Rec, Now: e.Clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := rules.New(ctx, rules.Config{Pool: e.Pool, Recorder: e.Rec, Alarms: as, History: cs, Handoff: handoff, Now: e.Clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = eng.Close(context.Background()) })
	authSvc, cl := server.SignedIn(t, e.Pool, e.Rec)
	srv, err := server.New(server.Config{Pool: e.Pool, Recorder: e.Rec, Devices: ds, Core: cs, Alarms: as, Rules: eng, Auth: authSvc, Now: e.Clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	return &clinicalHTTP{Env: e, ts: ts, handoff: handoff, cl: cl}
}

// upload posts one signed sample of d, taken at at, with the clock at now; it returns the
// HTTP status and body, after the rules have evaluated what was stored.
func (h *clinicalHTTP) upload(t *testing.T, d *devicestest.Device, code string, v float64, unit string, at, now time.Time) (int, string) {
	t.Helper()
	h.Clock.Set(now)
	d.Seq++
	raw := d.Sign(t, &envelope.Upload{Device: d.ID.String(), KeyVersion: d.KV, Seq: d.Seq, SentAt: now.UnixMilli(),
		Samples: []envelope.Sample{{Code: code, Value: v, Unit: unit, T: at.UnixMilli()}}})
	resp, err := http.Post(h.ts.URL+"/api/v1/uploads", "application/cbor", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.handoff.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// openAlarms is GET /api/v1/alarms?patient_id=…&state=active,acknowledged: rule → severity.
func (h *clinicalHTTP) openAlarms(t *testing.T) map[string]string {
	t.Helper()
	resp, err := h.cl.Get(h.ts.URL + "/api/v1/alarms?patient_id=" + h.Patient.String() + "&state=active,acknowledged")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Alarms []struct {
			RuleID   string `json:"rule_id"`
			Severity string `json:"severity"`
		} `json:"alarms"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /api/v1/alarms = %d, %v", resp.StatusCode, err)
	}
	m := map[string]string{}
	for _, a := range out.Alarms {
		m[a.RuleID] = a.Severity
	}
	return m
}

// Issue #12, case 1, replayed through the HTTP API with two simulated devices on one patient:
// the BP device stamps 3 s behind the monitor; 90 s of systolic 80 mmHg raise sbp-low.
// Verifies: REQ-CORE-120
func TestHTTPScenarioTwoDevicesOutOfStep(t *testing.T) {
	t.Parallel()
	h := newClinicalHTTP(t)
	monitor, nibp := h.NewDevice(t), h.NewDevice(t)
	start := h.Clock.Now().Add(time.Second)
	for s := 0; s <= 90; s++ {
		now := start.Add(time.Duration(s) * time.Second)
		if st, b := h.upload(t, monitor, "8867-4", 80, "/min", now, now); st != 201 {
			t.Fatalf("upload HR = %d %s", st, b)
		}
		if s%10 == 0 {
			if st, b := h.upload(t, nibp, "8480-6", 80, "mm[Hg]", now.Add(-3*time.Second), now); st != 201 {
				t.Fatalf("upload systolic = %d %s", st, b)
			}
		}
	}
	if got := h.openAlarms(t); got["sbp-low"] != "high" {
		t.Fatalf("open alarms after 90 s of systolic 80 stamped 3 s behind HR = %v, want sbp-low high", got)
	}
}

// Issue #12, case 6, through the HTTP API: a monitor moved to the next patient uploads a
// reading it took for the previous one; it is refused (outside_assignment), and the next
// patient gets no alarm from it.
// Verifies: REQ-CORE-126
func TestHTTPScenarioMovedMonitorBuffer(t *testing.T) {
	t.Parallel()
	h := newClinicalHTTP(t)
	monitor := h.NewDevice(t) // assigned to h.Patient at T0
	next := h.NewPatient(t)
	h.Clock.Set(h.Clock.Now().Add(10 * time.Minute))
	moved := h.Clock.Now()
	if _, err := h.Devices.AssignPatient(h.Ctx, devicestest.Admin, monitor.ID, &next); err != nil {
		t.Fatal(err)
	}
	st, b := h.upload(t, monitor, "8867-4", 150, "/min", moved.Add(-2*time.Minute), moved.Add(time.Minute))
	if st != 422 || !strings.Contains(b, "outside_assignment") {
		t.Fatalf("upload of a reading taken before the move = %d %s, want 422 outside_assignment", st, b)
	}
	if n := h.Count(t, `SELECT count(*) FROM core_observations WHERE patient_id=$1`, next); n != 0 {
		t.Errorf("observations of the next patient = %d, want 0", n)
	}
	if st, b := h.upload(t, monitor, "8867-4", 72, "/min", moved.Add(70*time.Second), moved.Add(71*time.Second)); st != 201 {
		t.Fatalf("upload of a reading taken since the move = %d %s, want 201", st, b)
	}
}

func (h *clinicalHTTP) call(t *testing.T, method, path string, body any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, h.ts.URL+path, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	resp, err := h.cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// Issue #12, cases 2 and 3, through the HTTP API: HR 15 /min (implausible, flagged) sustained
// for 60 s raises hr-low critical; resolved by hand (POST /alarms/{id}/resolve) while HR 15
// persists, it re-opens within seconds.
// Verifies: REQ-CORE-122, REQ-CORE-123
func TestHTTPScenarioSustainedExtremeAndManualResolve(t *testing.T) {
	t.Parallel()
	h := newClinicalHTTP(t)
	monitor := h.NewDevice(t)
	start := h.Clock.Now().Add(time.Second)
	send := func(from, to time.Duration) {
		for d := from; d <= to; d += 5 * time.Second {
			now := start.Add(d)
			if st, b := h.upload(t, monitor, "8867-4", 15, "/min", now, now); st != 201 {
				t.Fatalf("upload HR 15 = %d %s", st, b)
			}
		}
	}
	send(0, 60*time.Second)
	if got := h.openAlarms(t); got["hr-low"] != "critical" {
		t.Fatalf("open alarms after 60 s of HR 15 = %v, want hr-low critical", got)
	}
	st, out := h.call(t, "GET", "/api/v1/alarms?patient_id="+h.Patient.String()+"&rule_id=hr-low&state=active", nil)
	list, _ := out["alarms"].([]any)
	if st != 200 || len(list) != 1 {
		t.Fatalf("GET hr-low alarm = %d %v", st, out)
	}
	id := list[0].(map[string]any)["id"].(string)
	if st, out := h.call(t, "POST", "/api/v1/alarms/"+id+"/resolve", map[string]any{"reason": "probe checked"}); st != 200 {
		t.Fatalf("POST resolve = %d %v", st, out)
	}
	if got := h.openAlarms(t); got["hr-low"] != "" {
		t.Fatalf("open alarms right after the manual resolve = %v, want none for hr-low", got)
	}
	send(65*time.Second, 70*time.Second)
	if got := h.openAlarms(t); got["hr-low"] != "critical" {
		t.Fatalf("open alarms after 10 s more of HR 15 = %v, want hr-low critical again", got)
	}
}

// Issue #12, cases 4 and 5, through the HTTP API: without a consciousness level, RR 30,
// SpO2 85 %, systolic 85, HR 140 give a partial NEWS2 alarm (critical, naming what is
// missing); acknowledged, it re-alerts with the current score when a nurse charts the
// patient as responding to voice (POST /patients/{id}/chart), which makes it worse.
// Verifies: REQ-CORE-124, REQ-CORE-125
func TestHTTPScenarioNEWS2PartialThenWorse(t *testing.T) {
	t.Parallel()
	h := newClinicalHTTP(t)
	monitor := h.NewDevice(t)
	at := h.Clock.Now().Add(time.Second)
	for _, s := range []struct {
		code, unit string
		v          float64
	}{{"9279-1", "/min", 30}, {"59408-5", "%", 85}, {"8480-6", "mm[Hg]", 85}, {"8867-4", "/min", 140}} {
		if st, b := h.upload(t, monitor, s.code, s.v, s.unit, at, at); st != 201 {
			t.Fatalf("upload %s = %d %s", s.code, st, b)
		}
	}
	news2 := func() map[string]any {
		t.Helper()
		st, out := h.call(t, "GET", "/api/v1/alarms?patient_id="+h.Patient.String()+"&rule_id=news2", nil)
		list, _ := out["alarms"].([]any)
		if st != 200 || len(list) != 1 {
			t.Fatalf("GET news2 alarms = %d %v, want one", st, out)
		}
		return list[0].(map[string]any)
	}
	a := news2()
	if a["severity"] != "critical" || !strings.Contains(a["message"].(string), "at least 12") || !strings.Contains(a["message"].(string), "consciousness") {
		t.Fatalf("news2 alarm without consciousness = %v, want critical, 'at least 12', naming consciousness", a)
	}
	id := a["id"].(string)
	if st, out := h.call(t, "POST", "/api/v1/alarms/"+id+"/acknowledge", map[string]any{"note": "on my way"}); st != 200 {
		t.Fatalf("POST acknowledge = %d %v", st, out)
	}
	h.Clock.Set(at.Add(time.Minute))
	if st, out := h.call(t, "POST", "/api/v1/patients/"+h.Patient.String()+"/chart", map[string]any{"samples": []map[string]any{
		{"code": "80288-4", "value": 2, "unit": "{score}", "time": at.Add(time.Minute)}}}); st != 201 {
		t.Fatalf("POST chart = %d %v", st, out)
	}
	if err := h.handoff.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	a = news2()
	if a["id"] != id || a["state"] != "active" || !strings.Contains(a["message"].(string), "at least 15") {
		t.Fatalf("news2 alarm after charting V = %v, want the same alarm active again saying at least 15", a)
	}
}

// Issue #12, case 8, through the HTTP API: an unknown patient's observations are 404, a cut
// range says truncated.
// Verifies: REQ-CORE-128
func TestHTTPScenarioQueriesSayWhatTheyOmit(t *testing.T) {
	t.Parallel()
	h := newClinicalHTTP(t)
	monitor := h.NewDevice(t)
	at := h.Clock.Now().Add(time.Second)
	for i := 0; i < 3; i++ {
		now := at.Add(time.Duration(i) * time.Second)
		if st, b := h.upload(t, monitor, "8867-4", 70, "/min", now, now); st != 201 {
			t.Fatalf("upload = %d %s", st, b)
		}
	}
	q := "/observations?code=8867-4&from=" + at.Add(-time.Hour).Format(time.RFC3339) + "&to=" + at.Add(time.Hour).Format(time.RFC3339)
	if st, out := h.call(t, "GET", "/api/v1/patients/"+monitor.ID.String()+q, nil); st != 404 {
		t.Errorf("GET observations of an unknown patient = %d %v, want 404", st, out)
	}
	st, out := h.call(t, "GET", "/api/v1/patients/"+h.Patient.String()+q+"&limit=2", nil)
	if obs, _ := out["observations"].([]any); st != 200 || len(obs) != 2 || out["truncated"] != true {
		t.Errorf("GET observations limit 2 of 3 = %d %v, want 2, truncated", st, out)
	}
}
