package fhir_test

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	m "github.com/samply/golang-fhir-models/fhir-models/fhir"

	"github.com/vigilhealth/vigil/interop/fhir"
	"github.com/vigilhealth/vigil/interop/fhir/fhirtest"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

const (
	patientID = "0190a1b2-0000-7000-8000-000000000001"
	deviceID  = "0190a1b2-0000-7000-8000-0000000000d1"
	encID     = "0190a1b2-0000-7000-8000-0000000000e1"
)

func samples() []fhir.Sample {
	s := func(id, code string, v float64, unit string) fhir.Sample {
		return fhir.Sample{ID: id, PatientID: patientID, DeviceID: deviceID, EncounterID: encID, Code: code, Value: v, Unit: unit, Time: t0}
	}
	out := []fhir.Sample{s("hr", "8867-4", 72, "/min"), s("rr", "9279-1", 18, "/min"), s("spo2", "59408-5", 97, "%"),
		s("spo2a", "2708-6", 96, "%"), s("temp", "8310-5", 37.2, "Cel"), s("sbp", "8480-6", 121, "mm[Hg]"), s("dbp", "8462-4", 79, "mm[Hg]"),
		s("map", "8478-0", 93, "mm[Hg]"), s("o2", "3151-8", 2, "L/min"), s("fio2", "3150-0", 28, "%"), s("wt", "29463-7", 70.5, "kg"),
		s("acvpu", "80288-4", 0, "{score}"), s("glu", "2339-0", 95, "mg/dL")}
	art := s("hr-artifact", "8867-4", 310, "/min")
	art.Artifact = true
	return append(out, art)
}

// all renders one of every resource Vigil emits, with realistic values.
func all(t *testing.T) []any {
	t.Helper()
	leaf := int64(4711)
	pub, priv, _ := ed25519.GenerateKey(nil)
	body := []byte("canonical CBOR upload body")
	sum := sha256.Sum256(body)
	fp := sha256.Sum256(pub)
	mean := 93.0
	out := []any{
		fhir.RenderPatient(fhir.Patient{ID: patientID, MRN: "MRN12345", MRNSystem: "urn:oid:1.2.3.4", FamilyName: "Doe", GivenName: "Jane", BirthDate: "1980-02-15", Sex: "F", Active: true}),
		fhir.RenderPatient(fhir.Patient{ID: "p2", MRN: "MRN2"}),
		fhir.RenderEncounter(fhir.Encounter{ID: encID, PatientID: patientID, Ward: "ICU", WardID: "w1", Start: t0, VisitNumber: "V1"}),
		fhir.RenderEncounter(fhir.Encounter{ID: "e2", PatientID: patientID, Ward: "ICU", Start: t0, End: t0.Add(48 * time.Hour)}),
		fhir.RenderEncounter(fhir.Encounter{ID: "e3", PatientID: patientID, Ward: "ICU", Start: t0, End: t0, Cancelled: true}),
		fhir.RenderDevice(fhir.Device{ID: deviceID, Serial: "SN-001", Model: "BedsideMonitor 3", Firmware: "2.4.1", Status: "active", KeyFingerprint: fp[:], PatientID: patientID}),
		fhir.RenderDevice(fhir.Device{ID: "d2", Serial: "SN-002", Status: "retired"}),
		fhir.RenderBloodPressure(fhir.BloodPressure{ID: "bp1", PatientID: patientID, DeviceID: deviceID, EncounterID: encID, Time: t0, Systolic: 121, Diastolic: 79, Mean: &mean}),
		fhir.RenderFlag(fhir.Alarm{ID: "al1", PatientID: patientID, Rule: "news2_high", RuleName: "NEWS2 ≥ 7", Severity: "critical", State: "active", OpenedAt: t0}),
		fhir.RenderFlag(fhir.Alarm{ID: "al2", PatientID: patientID, Rule: "spo2_low", Severity: "medium", State: "resolved", OpenedAt: t0, ResolvedAt: t0.Add(time.Hour)}),
		fhir.RenderAuditEvent(fhir.AuditEvent{ID: "ev1", Time: t0, Action: "upload.accepted", Outcome: "success", ActorKind: "device", ActorID: deviceID,
			AuthMethod: "device-signature", ObjectType: "upload", ObjectID: "u1", PatientID: patientID, SourceAddr: "10.1.2.3:5555", RequestID: "r1", LeafIndex: &leaf}),
		fhir.RenderAuditEvent(fhir.AuditEvent{ID: "ev2", Time: t0, Action: "hl7.adt.refused", Outcome: "rejected", Reason: "missing_pid", ActorKind: "service", ActorID: "hl7:EPIC@GEN", ObjectType: "hl7_message", SourceAddr: "[::1]:9"}),
		fhir.RenderAuditEvent(fhir.AuditEvent{ID: "ev3", Time: t0, Action: "auth.login.failed", Outcome: "failure", ActorKind: "user", ActorID: "u7"}),
		fhir.RenderProvenance(fhir.Upload{ID: "prov1", Targets: []string{"hr", "spo2"}, DeviceID: deviceID, KeyID: deviceID + "/1", Hash: sum,
			Signature: ed25519.Sign(priv, body), SignedAt: t0, ReceivedAt: t0.Add(time.Second), Receipt: []byte{0xa1, 0x01, 0x02}, ReceiptKeyID: "vigil-receipts/3",
			AuditEventID: "ev1", AuditLeafIndex: &leaf, PatientID: patientID}),
		fhir.RenderCapabilityStatement(t0, "test"),
		fhir.RenderOperationOutcome("", fhir.Problem{Code: "unknown_search_parameter", Type: "not-supported", Message: "unknown parameter foo", Expression: "foo"},
			fhir.Problem{Code: "ignored", Type: "informational", Severity: "information", Message: "x"}),
	}
	for _, s := range samples() {
		o, err := fhir.RenderObservation(s)
		if err != nil {
			t.Fatalf("RenderObservation(%s) = %v", s.Code, err)
		}
		out = append(out, o)
	}
	n, err := fhir.RenderNEWS2(fhir.NEWS2{ID: "news1", PatientID: patientID, EncounterID: encID, Time: t0, Score: 7,
		Points:      map[string]int{"respiration_rate": 2, "spo2_scale1": 2, "air_or_oxygen": 2, "systolic_bp": 0, "pulse": 1, "consciousness": 0, "temperature": 0},
		DerivedFrom: []string{"hr", "rr", "spo2", "temp", "sbp", "acvpu", "o2"}})
	if err != nil {
		t.Fatal(err)
	}
	return append(out, n)
}

// Every resource type Vigil renders passes the external validator with zero errors.
//
// Verifies: REQ-INT-010, REQ-INT-011, REQ-INT-012, REQ-INT-013
func TestResourcesPassExternalValidator(t *testing.T) {
	types := map[string]bool{}
	for _, r := range fhirtest.Check(t, all(t)...) {
		types[r.ResourceType] = true
		for _, e := range r.Errors {
			t.Errorf("FHIR validator: %s/%s (#%d): %s", r.ResourceType, r.ID, r.Index, e)
		}
	}
	for _, want := range []string{"Patient", "Encounter", "Device", "Observation", "Flag", "AuditEvent", "Provenance", "CapabilityStatement", "OperationOutcome"} {
		if !types[want] {
			t.Errorf("no %s was validated", want)
		}
	}
}

// The external check can fail: resources broken the way a mapping bug would break them are
// reported.
//
// Verifies: REQ-INT-010
func TestExternalValidatorCatchesBrokenResources(t *testing.T) {
	hr, _ := fhir.RenderObservation(samples()[0])
	noCategory := hr
	noCategory.Category = nil // the vital-signs profile requires it
	wrongCode := hr
	wrongCode.Code = m.CodeableConcept{Coding: []m.Coding{{System: ptr(fhir.LOINC), Code: ptr("1234-5")}}} // heartrate needs 8867-4
	badTime := hr
	badTime.EffectiveDateTime = ptr("2026-13-02")
	var raw map[string]any
	b, _ := json.Marshal(hr)
	_ = json.Unmarshal(b, &raw)
	raw["bogus"] = true
	bp := fhir.RenderBloodPressure(fhir.BloodPressure{ID: "bp", PatientID: "p", Time: t0, Systolic: 120, Diastolic: 80})
	bp.Component = bp.Component[:1] // no diastolic
	for i, r := range fhirtest.Check(t, noCategory, wrongCode, badTime, raw, bp) {
		if len(r.Errors) == 0 {
			t.Errorf("broken resource %d passed the validator", i)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// Verifies: REQ-INT-011
func TestObservationMapping(t *testing.T) {
	spo2, err := fhir.RenderObservation(samples()[2])
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(spo2)
	js := string(b)
	for _, want := range []string{`"resourceType":"Observation"`, `"status":"final"`, `"code":"vital-signs"`,
		`"system":"http://loinc.org","code":"59408-5"`, `"code":"2708-6"`, `"value":97,"unit":"%","system":"http://unitsofmeasure.org","code":"%"`,
		`"effectiveDateTime":"2026-01-02T03:04:05.000Z"`, `"subject":{"reference":"Patient/` + patientID + `"}`, `"device":{"reference":"Device/` + deviceID + `"}`,
		`"http://hl7.org/fhir/StructureDefinition/oxygensat"`} {
		if !strings.Contains(js, want) {
			t.Errorf("RenderObservation(SpO2) = %s\nmissing %s", js, want)
		}
	}
	// What the external validator does not check (bindings, fixed units): asserted here.
	for _, smp := range samples() {
		o, err := fhir.RenderObservation(smp)
		if err != nil {
			t.Fatal(err)
		}
		q := o.ValueQuantity
		if o.Status.Code() != "final" || *q.System != fhir.UCUM || *q.Code != smp.Unit || *o.Code.Coding[0].System != fhir.LOINC || *o.Code.Coding[0].Code != smp.Code {
			t.Errorf("RenderObservation(%s) = status %s, %s %s, %s|%s", smp.Code, o.Status.Code(), *q.System, *q.Code, *o.Code.Coding[0].System, *o.Code.Coding[0].Code)
		}
	}
	if _, err := fhir.RenderObservation(fhir.Sample{Code: "0000-0"}); !errors.Is(err, fhir.ErrUnknownCode) {
		t.Errorf("RenderObservation(unknown code) = %v, want ErrUnknownCode", err)
	}
	glu, _ := fhir.RenderObservation(samples()[12])
	if glu.Meta != nil || *glu.Category[0].Coding[0].Code != "laboratory" {
		t.Errorf("glucose rendered as a vital sign: %+v", glu.Meta)
	}
	bp := fhir.RenderBloodPressure(fhir.BloodPressure{ID: "bp", PatientID: "p", Time: t0, Systolic: 120, Diastolic: 80})
	if *bp.Code.Coding[0].Code != "85354-9" || len(bp.Component) != 2 || bp.ValueQuantity != nil || *bp.Component[1].Code.Coding[0].Code != "8462-4" {
		t.Errorf("RenderBloodPressure = %+v", bp)
	}
}

// Verifies: REQ-INT-012
func TestNEWS2Mapping(t *testing.T) {
	n, err := fhir.RenderNEWS2(fhir.NEWS2{ID: "n", PatientID: "p", Time: t0, Score: 5, Points: map[string]int{"pulse": 3, "temperature": 2}, DerivedFrom: []string{"a", "b"}})
	if err != nil {
		t.Fatal(err)
	}
	if *n.Code.Coding[0].Code != fhir.NEWS2Total || string(*n.ValueQuantity.Value) != "5" || len(n.Component) != 2 ||
		*n.Component[0].Code.Coding[0].Code != "1104351000000103" || len(n.DerivedFrom) != 2 || *n.DerivedFrom[1].Reference != "Observation/b" {
		t.Errorf("RenderNEWS2 = %+v", n)
	}
	if _, err := fhir.RenderNEWS2(fhir.NEWS2{Points: map[string]int{"shoe_size": 1}}); !errors.Is(err, fhir.ErrUnknownCode) {
		t.Errorf("RenderNEWS2(unknown parameter) = %v, want ErrUnknownCode", err)
	}
}

// Verifies: REQ-INT-013
func TestProvenanceCarriesDeviceSignature(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	body := []byte("canonical upload body")
	sum := sha256.Sum256(body)
	leaf := int64(12)
	p := fhir.RenderProvenance(fhir.Upload{ID: "p", Targets: []string{"o1"}, DeviceID: "d1", KeyID: "d1/1", Hash: sum,
		Signature: ed25519.Sign(priv, body), SignedAt: t0, ReceivedAt: t0, AuditEventID: "ev", AuditLeafIndex: &leaf})
	// A verifier holding only the FHIR resource and the device's public key can check it.
	sig, err := base64.StdEncoding.DecodeString(*p.Signature[0].Data)
	if err != nil || !ed25519.Verify(pub, body, sig) {
		t.Errorf("Provenance signature does not verify: %v", err)
	}
	if *p.Signature[0].Who.Reference != "Device/d1" || *p.Agent[0].Who.Reference != "Device/d1" ||
		*p.Entity[0].What.Identifier.Value != strings.ToLower(hexString(sum[:])) || *p.Target[0].Reference != "Observation/o1" {
		t.Errorf("RenderProvenance = %+v", p)
	}
	if len(p.Extension) != 2 || *p.Extension[0].ValueReference.Reference != "AuditEvent/ev" || *p.Extension[1].ValueString != "12" {
		t.Errorf("Provenance extensions = %+v", p.Extension)
	}
}

func hexString(b []byte) string {
	const d = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, d[c>>4], d[c&15])
	}
	return string(out)
}
