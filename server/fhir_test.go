package server

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/envelope"
	"github.com/vigilhealth/vigil/interop/fhir/fhirtest"
)

// fhirFixture is a full server with real data: two wards, a patient on each, a device on
// the first patient that uploaded signed vitals (a blood-pressure pair among them), NEWS2
// scored by the rules engine and the alarm it raised.
type fhirFixture struct {
	*fullServer
	wardA, wardB uuid.UUID
	p, q         uuid.UUID // p on ward A (with data), q on ward B
	device       uuid.UUID
	admin        *http.Client
	clinician    *http.Client // a clinician of ward A
	clinicianID  uuid.UUID
	devicePub    ed25519.PublicKey
	sent         map[string][]byte // the device's signature (base64) → the signed body
}

func newFHIRFixture(t *testing.T, mods ...func(*Config)) *fhirFixture {
	t.Helper()
	f := &fhirFixture{fullServer: newFullServer(t, mods...)}
	ctx := context.Background()
	env := f.env
	by := audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "admin-1", AuthMethod: "test"}, RequestID: "fhir-test"}
	site, err := env.Core.CreateSite(ctx, by, "General")
	if err != nil {
		t.Fatal(err)
	}
	wa, err := env.Core.CreateWard(ctx, by, site.ID, "A")
	if err != nil {
		t.Fatal(err)
	}
	wb, err := env.Core.CreateWard(ctx, by, site.ID, "B")
	if err != nil {
		t.Fatal(err)
	}
	f.wardA, f.wardB = wa.ID, wb.ID
	f.p = env.Patient
	if err := env.Core.MovePatient(ctx, by, f.p, f.wardA); err != nil {
		t.Fatal(err)
	}
	q, err := env.Core.CreatePatient(ctx, by, core.PatientPHI{MRN: "MRN-B-1", GivenName: "Bea", FamilyName: "Other", BirthDate: "1970-01-02"}, &f.wardB)
	if err != nil {
		t.Fatal(err)
	}
	f.q = q.ID
	d := env.NewDevice(t)
	f.device = d.ID
	f.devicePub, f.sent = d.Key.Public().(ed25519.PublicKey), map[string][]byte{}
	now := env.Clock.Now().Truncate(time.Second)
	for i := 3; i >= 0; i-- {
		at := now.Add(-time.Duration(i) * time.Minute).UnixMilli()
		samples := []envelope.Sample{
			{Code: "8867-4", Value: 131, Unit: "/min", T: at}, {Code: "59408-5", Value: 90, Unit: "%", T: at},
			{Code: "9279-1", Value: 26, Unit: "/min", T: at}, {Code: "8310-5", Value: 39.2, Unit: "Cel", T: at},
			{Code: "8480-6", Value: 95, Unit: "mm[Hg]", T: at}, {Code: "8462-4", Value: 60, Unit: "mm[Hg]", T: at},
		}
		d.Seq++
		raw := d.Sign(t, &envelope.Upload{Device: d.ID.String(), KeyVersion: d.KV, Seq: d.Seq, SentAt: now.UnixMilli(), Samples: samples})
		if _, err := env.Devices.Accept(ctx, raw, devices.Meta{Transport: "http"}); err != nil {
			t.Fatalf("Accept = %v", err)
		}
		e, err := envelope.ParseEnvelope(raw, envelope.DefaultLimits)
		if err != nil {
			t.Fatal(err)
		}
		f.sent[base64.StdEncoding.EncodeToString(e.Sig)] = e.Body
	}
	obs, err := env.Core.ObservationsSince(ctx, f.p, now.Add(-time.Hour), 0)
	if err != nil || len(obs) != 24 {
		t.Fatalf("ObservationsSince = %d, %v; want 24", len(obs), err)
	}
	if _, err := f.rules.Evaluate(ctx, f.p, obs); err != nil {
		t.Fatalf("Evaluate = %v", err)
	}
	f.admin = SignedInClient(t, f.auth)
	var u *authtest.User
	f.clinician, u = SignedInUser(t, f.auth, authtest.Grant{Role: auth.RoleClinician, Domain: auth.WardDomain(f.wardA)})
	f.clinicianID = u.ID
	return f
}

// get fetches a FHIR path and decodes the JSON answer.
func (f *fhirFixture) get(t *testing.T, cl *http.Client, path string, hdr ...string) (int, map[string]any) {
	t.Helper()
	u := path
	if !strings.HasPrefix(path, "http") {
		u = f.ts.URL + path
	}
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/fhir+json") {
		t.Errorf("GET %s: Content-Type = %q, want application/fhir+json", path, ct)
	}
	var out map[string]any
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("GET %s = %d, body not JSON: %s", path, resp.StatusCode, body)
	}
	return resp.StatusCode, out
}

func entries(b map[string]any) []map[string]any {
	var out []map[string]any
	es, _ := b["entry"].([]any)
	for _, e := range es {
		em := e.(map[string]any)
		out = append(out, em)
	}
	return out
}

func resourcesOf(b map[string]any, mode string) []map[string]any {
	var out []map[string]any
	for _, e := range entries(b) {
		if s, _ := e["search"].(map[string]any); s != nil && s["mode"] == mode {
			out = append(out, e["resource"].(map[string]any))
		}
	}
	return out
}

func linkOf(b map[string]any, rel string) string {
	ls, _ := b["link"].([]any)
	for _, l := range ls {
		lm := l.(map[string]any)
		if lm["relation"] == rel {
			return lm["url"].(string)
		}
	}
	return ""
}

func ooCode(oo map[string]any) string {
	is, _ := oo["issue"].([]any)
	if len(is) == 0 {
		return ""
	}
	d, _ := is[0].(map[string]any)["details"].(map[string]any)
	cs, _ := d["coding"].([]any)
	if len(cs) == 0 {
		return ""
	}
	return cs[0].(map[string]any)["code"].(string)
}

// The FHIR API serves real data read through the policy: a ward's clinician reads their
// patient's vitals (a blood-pressure panel, NEWS2 with derivedFrom), alarms as Flags, the
// Provenance of an upload with Vigil's signed receipt and audit references, paging with next
// links; another ward's patient is 404 (audited as a denial), searches show only the
// clinician's patients, and every patient's data shown is audited as access.phi.read.
// Verifies: REQ-INT-020, REQ-INT-021, REQ-INT-022, REQ-INT-024, REQ-INT-030
// Verifies: REQ-POR-088
func TestFHIRReadAndSearch(t *testing.T) {
	t.Parallel()
	f := newFHIRFixture(t)
	p := f.p.String()

	st, cs := f.get(t, http.DefaultClient, "/fhir/R4/metadata")
	if st != 200 || cs["resourceType"] != "CapabilityStatement" || cs["fhirVersion"] != "4.0.1" {
		t.Fatalf("metadata = %d %v", st, cs["resourceType"])
	}

	// Read: own ward's patient, not the other ward's (404, not 403).
	if st, r := f.get(t, f.clinician, "/fhir/R4/Patient/"+p); st != 200 || r["id"] != p {
		t.Errorf("Patient/own = %d %v, want 200", st, r["id"])
	}
	st, oo := f.get(t, f.clinician, "/fhir/R4/Patient/"+f.q.String())
	if st != 404 || oo["resourceType"] != "OperationOutcome" || ooCode(oo) != "not_found" {
		t.Errorf("Patient/other ward = %d %v, want 404 OperationOutcome not_found", st, oo)
	}
	if st, _ := f.get(t, f.clinician, "/fhir/R4/Encounter/"+f.q.String()); st != 404 {
		t.Errorf("Encounter/other ward = %d, want 404", st)
	}
	if n := f.env.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'access.denied' AND object_id = $1 AND actor_id = $2`,
		f.q.String(), f.clinicianID.String()); n < 2 {
		t.Errorf("access.denied events for the other ward's patient = %d, want 2", n)
	}
	// Each of those reads has that one record, not also the error handler's (REQ-POR-088).
	if n := f.env.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'http.request.rejected' AND actor_id = $1`,
		f.clinicianID.String()); n != 0 {
		t.Errorf("http.request.rejected events of the clinician's refused reads = %d, want 0 (access.denied is their one record)", n)
	}

	// Search, newest first, three per page: follow the next links to the end.
	var all []map[string]any
	next := "/fhir/R4/Observation?patient=" + p + "&_sort=-date&_count=3"
	pages := 0
	for next != "" && pages < 20 {
		st, b := f.get(t, f.clinician, next)
		if st != 200 || b["type"] != "searchset" {
			t.Fatalf("GET %s = %d %v", next, st, b)
		}
		all = append(all, resourcesOf(b, "match")...)
		next = linkOf(b, "next")
		pages++
	}
	// 4 uploads × (HR, SpO2, RR, temperature, BP panel) + NEWS2 scores.
	var bp, news2, vitals int
	var last string
	for _, o := range all {
		eff := o["effectiveDateTime"].(string)
		if last != "" && eff > last {
			t.Errorf("Observation search _sort=-date: %s after %s", eff, last)
		}
		last = eff
		code := o["code"].(map[string]any)["coding"].([]any)[0].(map[string]any)["code"]
		switch code {
		case "85354-9":
			bp++
			if len(o["component"].([]any)) != 2 {
				t.Errorf("BP panel components = %v", o["component"])
			}
		case "1104051000000101":
			news2++
			if df, _ := o["derivedFrom"].([]any); len(df) < 4 {
				t.Errorf("NEWS2 derivedFrom = %v, want the scored observations", o["derivedFrom"])
			}
		default:
			vitals++
		}
	}
	if bp != 4 || vitals != 16 || news2 < 1 || pages < 7 {
		t.Errorf("Observation pages = %d: %d BP panels, %d vitals, %d NEWS2; want 4, 16, ≥1 over ≥7 pages", pages, bp, vitals, news2)
	}
	// Every observation read by id is the one searched.
	id := all[0]["id"].(string)
	if st, r := f.get(t, f.clinician, "/fhir/R4/Observation/"+id); st != 200 || r["id"] != id {
		t.Errorf("Observation/%s = %d %v", id, st, r["id"])
	}

	// The other ward's patient: an empty search, not an error.
	if st, b := f.get(t, f.clinician, "/fhir/R4/Observation?patient="+f.q.String()); st != 200 || len(entries(b)) != 0 {
		t.Errorf("Observation?patient=other ward = %d, %d entries; want 200 and none", st, len(entries(b)))
	}
	// Without a patient: only the clinician's patients.
	st, b := f.get(t, f.clinician, "/fhir/R4/Patient")
	if ps := resourcesOf(b, "match"); st != 200 || len(ps) != 1 || ps[0]["id"] != p {
		t.Errorf("Patient search = %d %v, want only the own ward's patient", st, ps)
	}

	// _include the device; code and date filters.
	st, b = f.get(t, f.clinician, "/fhir/R4/Observation?patient="+p+"&code=http://loinc.org|8867-4&date=ge2000-01-01&_include=Observation:device")
	if inc := resourcesOf(b, "include"); st != 200 || len(resourcesOf(b, "match")) != 4 || len(inc) != 1 || inc[0]["resourceType"] != "Device" {
		t.Errorf("Observation?code=HR&_include=device = %d, %d matches, includes %v", st, len(resourcesOf(b, "match")), inc)
	}

	// Flags, Provenance of an observation (Vigil's receipt signature, audit references).
	st, b = f.get(t, f.clinician, "/fhir/R4/Flag?patient="+p)
	if st != 200 || len(resourcesOf(b, "match")) == 0 {
		t.Errorf("Flag?patient = %d %v, want the NEWS2 alarm", st, b)
	}
	hr := resourcesOf(b, "match")
	_ = hr
	st, b = f.get(t, f.clinician, "/fhir/R4/Provenance?target=Observation/"+id)
	prov := resourcesOf(b, "match")
	if st != 200 || len(prov) != 1 {
		t.Fatalf("Provenance?target = %d %v", st, b)
	}
	if sigs, _ := prov[0]["signature"].([]any); len(sigs) == 0 || prov[0]["agent"].([]any)[0].(map[string]any)["who"].(map[string]any)["reference"] != "Device/"+f.device.String() {
		t.Errorf("Provenance = %v, want the device as agent and the receipt signature", prov[0])
	}
	// The device's own Ed25519 signature of the upload travels with it: signature[0], the
	// source signature, is the one the device sent and verifies under its key.
	if sigs, _ := prov[0]["signature"].([]any); len(sigs) < 2 {
		t.Errorf("Provenance signatures = %v, want the device's and the receipt's", prov[0]["signature"])
	} else {
		s0, _ := sigs[0].(map[string]any)
		data, _ := s0["data"].(string)
		body, ok := f.sent[data]
		who, _ := s0["who"].(map[string]any)
		if !ok || !ed25519.Verify(f.devicePub, body, mustBase64(t, data)) || who["reference"] != "Device/"+f.device.String() {
			t.Errorf("Provenance signature[0] = %v, want the device's own signature of one of its uploads", s0)
		}
	}

	// Devices and the audit trail are for those who may read them.
	if st, _ := f.get(t, f.clinician, "/fhir/R4/AuditEvent?patient="+p); st != 403 {
		t.Errorf("clinician AuditEvent search = %d, want 403", st)
	}
	st, b = f.get(t, f.admin, "/fhir/R4/AuditEvent?patient="+p+"&_count=5")
	if st != 200 || len(resourcesOf(b, "match")) == 0 {
		t.Errorf("AuditEvent?patient = %d %v", st, b)
	}
	if st, r := f.get(t, f.admin, "/fhir/R4/Device/"+f.device.String()); st != 200 || r["resourceType"] != "Device" {
		t.Errorf("Device/id = %d %v", st, r)
	}

	// Reads audited per patient.
	if n := f.env.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'access.phi.read' AND object_id = $1 AND actor_id = $2`,
		p, f.clinicianID.String()); n < 5 {
		t.Errorf("access.phi.read events of the clinician's FHIR reads = %d, want ≥ 5", n)
	}
	if n := f.env.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'access.phi.read' AND object_id = $1 AND actor_id = $2`,
		f.q.String(), f.clinicianID.String()); n != 0 {
		t.Errorf("access.phi.read of the other ward's patient = %d, want 0", n)
	}
}

// Bad searches are OperationOutcomes with the JSON envelope's codes: strict handling refuses
// an unknown parameter, lenient ignores and reports it; a malformed date, an unknown type and
// a missing session are refused; each rejection is audited.
// Verifies: REQ-INT-023
func TestFHIRErrors(t *testing.T) {
	t.Parallel()
	f := newFHIRFixture(t)
	p := f.p.String()
	cases := []struct {
		cl     *http.Client
		path   string
		hdr    []string
		status int
		code   string
	}{
		{f.clinician, "/fhir/R4/Observation?patient=" + p + "&colour=red", []string{"Prefer", "handling=strict"}, 400, "unknown_search_parameter"},
		{f.clinician, "/fhir/R4/Observation?patient=" + p + "&date=2026-13-01", nil, 400, "invalid_date"},
		{f.clinician, "/fhir/R4/Observation?_count=5000", nil, 400, "invalid_count"},
		{f.clinician, "/fhir/R4/Observation?_cursor=!!", nil, 400, "invalid_search_value"},
		{f.clinician, "/fhir/R4/Medication", nil, 400, "unknown_resource_type"},
		{f.clinician, "/fhir/R4/Observation/nonsense", nil, 404, "not_found"},
		{http.DefaultClient, "/fhir/R4/Observation?patient=" + p, nil, 401, "unauthenticated"},
		{f.clinician, "/fhir/R4/Device", nil, 403, "forbidden"},
	}
	for _, c := range cases {
		st, oo := f.get(t, c.cl, c.path, c.hdr...)
		if st != c.status || oo["resourceType"] != "OperationOutcome" || ooCode(oo) != c.code {
			t.Errorf("GET %s = %d %v, want %d OperationOutcome %s", c.path, st, oo, c.status, c.code)
		}
	}
	// The policy's 403 is recorded once, as access.denied (REQ-POR-088); every other
	// rejection as http.request.rejected.
	if n := f.env.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'http.request.rejected' AND starts_with(object_id, 'GET /fhir/R4/')`); n < len(cases)-1 {
		t.Errorf("rejections audited = %d, want %d", n, len(cases)-1)
	}
	if n := f.env.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'access.denied' AND starts_with(payload->>'route', 'GET /fhir/R4/Device')`); n != 1 {
		t.Errorf("access.denied of the refused Device search = %d, want 1", n)
	}
	// Lenient (the default): ignored and reported in an outcome entry.
	st, b := f.get(t, f.clinician, "/fhir/R4/Observation?patient="+p+"&colour=red&_count=1")
	if oo := resourcesOf(b, "outcome"); st != 200 || len(oo) != 1 || ooCode(oo[0]) != "search_parameters_ignored" {
		t.Errorf("lenient unknown parameter = %d %v", st, oo)
	}
	if strings.Contains(linkOf(b, "self"), "colour") {
		t.Errorf("self link %s keeps an ignored parameter", linkOf(b, "self"))
	}
}

// Every resource type the running server emits, read back over HTTP from real data, passes
// the external FHIR validator (npm @medplum/core) with zero errors: the search Bundles and
// each resource in them.
// Verifies: REQ-INT-025
func TestFHIRServedResourcesValidate(t *testing.T) {
	t.Parallel()
	f := newFHIRFixture(t)
	p := f.p.String()
	var all []any
	types := map[string]bool{}
	add := func(cl *http.Client, path string) {
		st, b := f.get(t, cl, path)
		if st != 200 {
			t.Fatalf("GET %s = %d %v", path, st, b)
		}
		all = append(all, b)
		types[b["resourceType"].(string)] = true
		for _, e := range entries(b) {
			r := e["resource"].(map[string]any)
			all = append(all, r)
			types[r["resourceType"].(string)] = true
		}
	}
	add(f.admin, "/fhir/R4/metadata")
	add(f.admin, "/fhir/R4/Patient?_id="+p)
	add(f.admin, "/fhir/R4/Encounter?patient="+p+"&_include=Encounter:patient")
	add(f.admin, "/fhir/R4/Observation?patient="+p+"&_include=Observation:device&_include=Observation:patient&_count=1000&foo=bar")
	add(f.admin, "/fhir/R4/Flag?patient="+p)
	add(f.admin, "/fhir/R4/Provenance?patient="+p+"&_include=Provenance:target")
	add(f.admin, "/fhir/R4/Device?patient="+p)
	add(f.admin, "/fhir/R4/AuditEvent?_count=50")
	_, oo := f.get(t, f.admin, "/fhir/R4/Observation?date=bad")
	all = append(all, oo)
	for _, want := range []string{"CapabilityStatement", "Bundle", "Patient", "Encounter", "Observation", "Device", "Flag", "Provenance", "AuditEvent", "OperationOutcome"} {
		if !types[want] && want != "OperationOutcome" {
			t.Errorf("no %s served", want)
		}
	}
	fhirtest.Validate(t, all...)
}

// SMART on FHIR scopes narrow an API token's FHIR reads within its roles: user/Observation.read
// reads observations but not Patient (403 insufficient_scope); patient/*.read reads only the
// launch patient (another is not found); a write or unknown scope is refused.
// Verifies: REQ-INT-028
func TestFHIRSMARTScopes(t *testing.T) {
	t.Parallel()
	f := newFHIRFixture(t)
	ctx := context.Background()
	acct, err := f.auth.CreateServiceAccount(ctx, authtest.Admin, "ehr-connector")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.auth.GrantRole(ctx, authtest.Admin, auth.ServiceSubject(acct.ID), auth.RoleClinician, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	tok, err := f.auth.IssueAPIToken(ctx, authtest.Admin, acct.ID, "fhir", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	bot := &http.Client{Transport: &authtest.BearerTransport{Token: tok.Token}}
	put := func(body string) int {
		req, _ := http.NewRequest(http.MethodPut, f.ts.URL+"/api/v1/api-tokens/"+tok.ID.String()+"/smart-scopes", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := f.admin.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	p, q := f.p.String(), f.q.String()
	// Without scopes: the roles decide (every ward).
	if st, _ := f.get(t, bot, "/fhir/R4/Patient/"+q); st != 200 {
		t.Errorf("token without scopes: Patient/q = %d, want 200", st)
	}
	if st := put(`{"scope": "user/Observation.read"}`); st != 200 {
		t.Fatalf("PUT smart-scopes = %d", st)
	}
	if st, b := f.get(t, bot, "/fhir/R4/Observation?patient="+p+"&_count=5"); st != 200 || len(resourcesOf(b, "match")) != 5 {
		t.Errorf("user/Observation.read: Observation search = %d %d", st, len(resourcesOf(b, "match")))
	}
	if st, oo := f.get(t, bot, "/fhir/R4/Patient/"+p); st != 403 || ooCode(oo) != "insufficient_scope" {
		t.Errorf("user/Observation.read: Patient/p = %d %v, want 403 insufficient_scope", st, oo)
	}
	if st := put(`{"scope": "patient/*.read", "patient_id": "` + q + `"}`); st != 200 {
		t.Fatalf("PUT patient scopes = %d", st)
	}
	if st, _ := f.get(t, bot, "/fhir/R4/Patient/"+q); st != 200 {
		t.Errorf("patient/*.read of q: Patient/q = %d, want 200", st)
	}
	if st, _ := f.get(t, bot, "/fhir/R4/Patient/"+p); st != 404 {
		t.Errorf("patient/*.read of q: Patient/p = %d, want 404", st)
	}
	if st, b := f.get(t, bot, "/fhir/R4/Observation?patient="+p); st != 200 || len(entries(b)) != 0 {
		t.Errorf("patient/*.read of q: Observation?patient=p = %d %d entries, want none", st, len(entries(b)))
	}
	for _, bad := range []string{`{"scope": "patient/*.write", "patient_id": "` + q + `"}`, `{"scope": "user/Medication.read"}`, `{"scope": "patient/*.read"}`} {
		if st := put(bad); st != 400 {
			t.Errorf("PUT %s = %d, want 400", bad, st)
		}
	}
	if n := f.env.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'fhir.smart_scopes.set' AND object_id = $1`, tok.ID.String()); n != 2 {
		t.Errorf("fhir.smart_scopes.set events = %d, want 2", n)
	}
}

func mustBase64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("base64 %q: %v", s, err)
	}
	return b
}
