package server

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/internal/testclock"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// snakeKey is the one casing of the API's JSON member names.
var snakeKey = regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)

// badKeys returns the member names of v (decoded JSON) that are not snake_case, with their path.
func badKeys(path string, v any) []string {
	var out []string
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if !snakeKey.MatchString(k) {
				out = append(out, path+"."+k)
			}
			out = append(out, badKeys(path+"."+k, e)...)
		}
	case []any:
		for _, e := range x {
			out = append(out, badKeys(path+"[]", e)...)
		}
	}
	return out
}

// Hazard 7 (issue #12): an alarm answered as a clinician reads it. A caller allowed to read the
// patient sees who the alarm is about (name, MRN, ward), and that read is audited; a NEWS2
// alarm lists each measured value with its unit and points; units are human (°C, /min,
// mmHg), the rule, limit and priority are words, no enum name or UCUM code is display text,
// and every member name is snake_case. A caller who may see the alarm but not the patient (a
// device technician given alarm read by the policy) gets no identifying field, and nothing is
// audited as an identity read for them.
// Verifies: REQ-CORE-130, REQ-CORE-131, REQ-CORE-132
func TestAlarmAnswersAreReadableAndIdentityFollowsPHIAccess(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	clk := testclock.New(testclock.T0)
	rec := audittest.Recorder(t, pool, nil)
	ring := keystest.LocalRing(t, nil)
	cs, err := core.New(core.Config{Pool: pool, Recorder: rec, Now: clk.Now, PHI: ring.PHI()})
	if err != nil {
		t.Fatal(err)
	}
	as, err := alarms.New(alarms.Config{Pool: pool, Recorder: rec, Now: clk.Now, Notifier: cs.Hub()})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := rules.New(ctx, rules.Config{Pool: pool, Recorder: rec, Alarms: as, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	authSvc := authtest.New(t, pool, rec, ring.PHI(), nil, nil)
	s, err := New(Config{Pool: pool, Recorder: rec, Core: cs, Alarms: as, Rules: eng, Auth: authSvc, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()

	admin := audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "admin", AuthMethod: "test"}}
	site, err := cs.CreateSite(ctx, admin, "General")
	if err != nil {
		t.Fatal(err)
	}
	ward, err := cs.CreateWard(ctx, admin, site.ID, "Ward 7B")
	if err != nil {
		t.Fatal(err)
	}
	pt, err := cs.CreatePatient(ctx, admin, core.PatientPHI{MRN: "MRN-4711", GivenName: "Ada", FamilyName: "Lovelace"}, &ward.ID)
	if err != nil {
		t.Fatal(err)
	}
	clin, clinUser := SignedInUser(t, authSvc, authtest.Grant{Role: auth.RoleClinician, Domain: auth.WardDomain(ward.ID)})
	// A technician who, by a local policy, may list and read alarms (say, to chase technical
	// alarms) but holds no role that reads patient records.
	for _, r := range []auth.Rule{{Role: auth.RoleDeviceTechnician, Object: auth.ObjAlarm, Action: "read", Scope: auth.ScopeGlobal},
		{Role: auth.RoleDeviceTechnician, Object: auth.ObjAlarm, Action: "list", Scope: auth.ScopeAny},
		{Role: auth.RoleDeviceTechnician, Object: auth.ObjStream, Action: "subscribe", Scope: auth.ScopeAny}} {
		if err := authSvc.AddRule(ctx, authtest.Admin, r); err != nil {
			t.Fatal(err)
		}
	}
	tech, techUser := SignedInUser(t, authSvc, authtest.Grant{Role: auth.RoleDeviceTechnician, Domain: auth.AllDomains})

	// A deteriorating patient: RR 30, SpO2 85, systolic 85, pulse 140, 38.5 °C, alert.
	at := clk.Now()
	var obs []rules.Observation
	for i := range 4 {
		t0 := at.Add(time.Duration(i) * 30 * time.Second)
		for _, v := range []struct {
			code, unit string
			v          float64
		}{{rules.CodeRespiratoryRate, "/min", 30}, {rules.CodeSpO2, "%", 85}, {rules.CodeSystolicBP, "mm[Hg]", 85},
			{rules.CodeHeartRate, "/min", 140}, {rules.CodeBodyTemperature, "Cel", 38.5}, {rules.CodeConsciousness, "{score}", 0},
			{rules.CodeInhaledO2Conc, "%", 21}} {
			obs = append(obs, rules.Observation{PatientID: pt.ID, Code: v.code, Value: v.v, Unit: v.unit, EffectiveAt: t0})
		}
	}
	clk.Set(at.Add(90 * time.Second))
	if _, err := eng.Evaluate(ctx, pt.ID, obs); err != nil {
		t.Fatal(err)
	}

	get := func(cl *http.Client, path string) (int, []byte) {
		t.Helper()
		resp, err := cl.Get(ts.URL + "/api/v1" + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	type answer struct {
		ID      uuid.UUID       `json:"id"`
		RuleID  string          `json:"rule_id"`
		Patient map[string]any  `json:"patient"`
		Read    *rules.Readable `json:"readable"`
	}
	st, body := get(clin, "/alarms?patient_id="+pt.ID.String())
	var list struct {
		Alarms []answer `json:"alarms"`
	}
	if err := json.Unmarshal(body, &list); st != 200 || err != nil {
		t.Fatalf("clinician GET /alarms = %d %s (%v)", st, body, err)
	}
	var raw any
	_ = json.Unmarshal(body, &raw)
	if bad := badKeys("", raw); len(bad) > 0 {
		t.Errorf("GET /alarms member names not snake_case: %v", bad)
	}
	byRule := map[string]answer{}
	for _, a := range list.Alarms {
		byRule[a.RuleID] = a
		if a.Patient["display_name"] != "LOVELACE, Ada" || a.Patient["mrn"] != "MRN-4711" || a.Patient["ward"] != "Ward 7B" ||
			a.Patient["ward_id"] != ward.ID.String() {
			t.Errorf("alarm %s patient = %v, want LOVELACE, Ada, MRN-4711, Ward 7B", a.RuleID, a.Patient)
		}
		if a.Read == nil || a.Read.Rule == "" || !strings.HasSuffix(a.Read.Priority, " priority") {
			t.Errorf("alarm %s readable = %+v, want the rule's name and the priority in words", a.RuleID, a.Read)
		}
	}
	n2, ok := byRule["news2"]
	if !ok || n2.Read == nil || n2.Read.NEWS2 == nil {
		t.Fatalf("alarms = %s, want a NEWS2 alarm with its readable score", body)
	}
	if n2.Read.NEWS2.Total != 13 || n2.Read.NEWS2.Response != "high clinical response" || n2.Read.NEWS2.AtLeast {
		t.Errorf("NEWS2 readable = %+v, want 13, high clinical response, complete", n2.Read.NEWS2)
	}
	want := map[string]string{"Respiration rate": "30/min 3", "SpO2": "85 % 3", "Systolic blood pressure": "85 mmHg 3",
		"Pulse": "140/min 3", "Temperature": "38.5 °C 1", "Consciousness (ACVPU)": "alert 0", "Inhaled oxygen (FiO2)": "21 % 0"}
	for _, m := range n2.Read.Measured {
		p := -1
		if m.Points != nil {
			p = *m.Points
		}
		got := m.Text + " " + strconv.Itoa(p)
		if want[m.Parameter] != got {
			t.Errorf("NEWS2 measured %q = %q, want %q", m.Parameter, got, want[m.Parameter])
		}
		delete(want, m.Parameter)
	}
	if len(want) > 0 {
		t.Errorf("NEWS2 measured lacks %v", want)
	}
	th, ok := byRule["temp-high"]
	if !ok || th.Read == nil || th.Read.Limit != "above 38 °C" || len(th.Read.Measured) != 1 || th.Read.Measured[0].Text != "38.5 °C" ||
		th.Read.Measured[0].Unit != "°C" || th.Read.Priority != "low priority" || th.Read.Rule == "temp-high" {
		t.Errorf("temp-high readable = %+v, want the rule's name, 38.5 °C above 38 °C, low priority", th.Read)
	}
	readable, _ := json.Marshal(n2.Read)
	readable2, _ := json.Marshal(th.Read)
	for _, code := range []string{"Cel", "low_medium", "mm[Hg]", "{score}", "8867-4"} {
		if strings.Contains(string(readable)+string(readable2), `"`+code) || strings.Contains(string(readable)+string(readable2), " "+code) {
			t.Errorf("readable text shows the code %q: %s %s", code, readable, readable2)
		}
	}
	// The identities shown are named in the list's audit event.
	count := func(q string, args ...any) int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, q, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(`SELECT count(*) FROM audit_events WHERE action = 'access.phi.list' AND actor_id = $1
		AND (payload->'identified')::jsonb ? $2 AND (payload->'identity_basis')::jsonb ? 'ward'`, clinUser.ID.String(), pt.ID.String()); n != 1 {
		t.Errorf("access.phi.list events of the clinician naming the identified patient = %d, want 1", n)
	}
	// One alarm: identity shown and audited as an identity read.
	st, body = get(clin, "/alarms/"+n2.ID.String())
	var one answer
	if err := json.Unmarshal(body, &one); st != 200 || err != nil || one.Patient["mrn"] != "MRN-4711" {
		t.Errorf("clinician GET /alarms/{id} = %d %s, want the patient's identity", st, body)
	}
	if n := count(`SELECT count(*) FROM audit_events WHERE action = 'access.phi.read' AND actor_id = $1
		AND object_id = $2 AND payload->>'what' = 'identity' AND payload->>'basis' = 'ward'`, clinUser.ID.String(), pt.ID.String()); n != 1 {
		t.Errorf("identity reads audited for the clinician = %d, want 1", n)
	}

	// The technician: the alarms, readable, but nobody's name, MRN or ward (an unfiltered list
	// is narrowed to the patients they may see: none).
	for _, path := range []string{"/alarms?patient_id=" + pt.ID.String(), "/alarms", "/alarms/" + n2.ID.String()} {
		st, body = get(tech, path)
		if st != 200 {
			t.Fatalf("technician GET %s = %d %s, want 200", path, st, body)
		}
		for _, leak := range []string{"Lovelace", "LOVELACE", "MRN-4711", "Ward 7B", `"patient":`, "display_name"} {
			if strings.Contains(string(body), leak) {
				t.Errorf("technician GET %s shows %q: %s", path, leak, body)
			}
		}
		if path != "/alarms" && (!strings.Contains(string(body), `"readable":`) || !strings.Contains(string(body), pt.ID.String())) {
			t.Errorf("technician GET %s = %s, want the readable alarm and the patient's id", path, body)
		}
	}
	if n := count(`SELECT count(*) FROM audit_events WHERE actor_id = $1 AND (payload::text LIKE '%identified%'
		OR payload->>'what' = 'identity')`, techUser.ID.String()); n != 0 {
		t.Errorf("identity reads audited for the technician = %d, want 0", n)
	}

	// The stream: an alarm event names the patient for the clinician (audited once, via
	// "stream"), not for the technician.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	open := func(cl *http.Client) <-chan sseEvent {
		t.Helper()
		req, _ := http.NewRequestWithContext(sctx, "GET", ts.URL+"/api/v1/stream?patient_id="+pt.ID.String(), nil)
		resp, err := cl.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET /stream = %v, %v; want 200", resp, err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		ch := make(chan sseEvent, 16)
		go readSSE(bufio.NewReader(resp.Body), ch)
		return ch
	}
	clinEvents, techEvents := open(clin), open(tech)
	for i := 0; cs.Hub().Subscribers() < 2; i++ {
		if i > 500 {
			t.Fatal("streams did not subscribe")
		}
		time.Sleep(10 * time.Millisecond) // waiting for the server goroutines, not for logic
	}
	if _, err := as.Acknowledge(ctx, n2.ID, audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: clinUser.ID.String(), AuthMethod: "test"}}, ""); err != nil {
		t.Fatal(err)
	}
	next := func(ch <-chan sseEvent) string {
		t.Helper()
		select {
		case ev := <-ch:
			return ev.data
		case <-time.After(10 * time.Second):
			t.Fatal("no event on the stream")
		}
		return ""
	}
	if d := next(clinEvents); !strings.Contains(d, `"patient":{"id":"`+pt.ID.String()+`","display_name":"LOVELACE, Ada","mrn":"MRN-4711"`) ||
		!strings.Contains(d, `"readable":{"rule":`) {
		t.Errorf("clinician's stream event = %s, want the patient's identity and the readable alarm", d)
	}
	if d := next(techEvents); strings.Contains(d, "MRN-4711") || strings.Contains(d, "Lovelace") || strings.Contains(d, `"patient":`) ||
		!strings.Contains(d, `"readable":{"rule":`) {
		t.Errorf("technician's stream event = %s, want the readable alarm without identity", d)
	}
	if n := count(`SELECT count(*) FROM audit_events WHERE action = 'access.phi.read' AND actor_id = $1
		AND object_id = $2 AND payload->>'what' = 'identity' AND payload->>'via' = 'stream'`, clinUser.ID.String(), pt.ID.String()); n != 1 {
		t.Errorf("identity reads audited for the clinician's stream = %d, want 1", n)
	}
}
