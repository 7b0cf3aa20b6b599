// Package fhir renders Vigil's domain as FHIR R4 (4.0.1) resources and parses FHIR search
// parameters. The resource types are those of github.com/samply/golang-fhir-models (plain
// Go structs over encoding/json, no dependencies); this package only fills them. Its input
// types are small structs of its own, so the domain packages can change without touching
// the mapping; the server adapts core and devices values into them. docs/interop.md lists
// the resources, profiles and codes; every renderer is checked by an external validator
// (interop/fhir/validator, npm @medplum/core) in the tests.
package fhir

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"

	m "github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// Code systems and identifier namespaces.
const (
	LOINC          = "http://loinc.org"
	UCUM           = "http://unitsofmeasure.org"
	ObsCategory    = "http://terminology.hl7.org/CodeSystem/observation-category"
	VitalSignsProf = "http://hl7.org/fhir/StructureDefinition/vitalsigns"
	BPProf         = "http://hl7.org/fhir/StructureDefinition/bp"
	// Base is the namespace of Vigil's own identifiers, code systems and extensions.
	Base = "https://vigil.health/fhir"
	// PatientIDSystem identifies a patient by Vigil's id.
	PatientIDSystem = Base + "/sid/patient-id"
	// DeviceSerialSystem and DeviceKeySystem identify a device by serial number and by the
	// SHA-256 fingerprint of its public key.
	DeviceSerialSystem = Base + "/sid/device-serial"
	DeviceKeySystem    = Base + "/sid/device-key-sha256"
	// UploadHashSystem identifies a signed upload by the SHA-256 of its canonical body.
	UploadHashSystem = Base + "/sid/upload-sha256"
	// AuditActionSystem codes audit actions ("upload.accepted").
	AuditActionSystem = Base + "/CodeSystem/audit-action"
	// AlarmRuleSystem codes alarm rules ("news2_high").
	AlarmRuleSystem = Base + "/CodeSystem/alarm-rule"
	// ErrorCodeSystem codes Vigil's error codes (the JSON error envelope's, docs/api.md).
	ErrorCodeSystem = Base + "/CodeSystem/error-code"
	// Extensions of Provenance: the upload's audit event and the audit log leaf holding it.
	ExtAuditEvent = Base + "/StructureDefinition/audit-event"
	ExtLeafIndex  = Base + "/StructureDefinition/audit-leaf-index"
	// ExtRequestID carries an audit event's request id.
	ExtRequestID = Base + "/StructureDefinition/request-id"
	// ExtFlagPriority is FHIR's core extension for a Flag's priority.
	ExtFlagPriority = "http://hl7.org/fhir/StructureDefinition/flag-priority"
)

func ptr[T any](v T) *T { return &v }

func ref(kind, id string) *m.Reference {
	if id == "" {
		return nil
	}
	return &m.Reference{Reference: ptr(kind + "/" + id)}
}

func instant(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z07:00") }

func coding(system, code, display string) m.Coding {
	c := m.Coding{System: &system, Code: &code}
	if display != "" {
		c.Display = &display
	}
	return c
}

func concept(system, code, display string) m.CodeableConcept {
	return m.CodeableConcept{Coding: []m.Coding{coding(system, code, display)}, Text: nilIfEmpty(display)}
}

func nilIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func decimal(v float64) *json.Number {
	n := json.Number(strconv.FormatFloat(v, 'f', -1, 64))
	return &n
}

// Patient is what the Patient resource shows. MRN and names are PHI.
type Patient struct {
	ID         string
	MRN        string
	MRNSystem  string // the hospital's MRN namespace (URI); default Base + "/sid/mrn"
	FamilyName string
	GivenName  string
	BirthDate  string // YYYY-MM-DD
	Sex        string // HL7 v2 table 0001 code or FHIR gender: F, M, O, U, female, male, other, unknown
	Active     bool
}

var genders = map[string]m.AdministrativeGender{"F": m.AdministrativeGenderFemale, "female": m.AdministrativeGenderFemale,
	"M": m.AdministrativeGenderMale, "male": m.AdministrativeGenderMale, "O": m.AdministrativeGenderOther,
	"other": m.AdministrativeGenderOther, "U": m.AdministrativeGenderUnknown, "unknown": m.AdministrativeGenderUnknown}

// RenderPatient renders a Patient.
func RenderPatient(p Patient) m.Patient {
	sys := p.MRNSystem
	if sys == "" {
		sys = Base + "/sid/mrn"
	}
	r := m.Patient{Id: &p.ID, Active: &p.Active,
		Identifier: []m.Identifier{
			{Use: ptr(m.IdentifierUseUsual), Type: &m.CodeableConcept{Coding: []m.Coding{coding("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "Medical record number")}},
				System: &sys, Value: &p.MRN},
			{Use: ptr(m.IdentifierUseSecondary), System: ptr(PatientIDSystem), Value: &p.ID},
		}}
	if p.FamilyName != "" || p.GivenName != "" {
		n := m.HumanName{Use: ptr(m.NameUseOfficial), Family: nilIfEmpty(p.FamilyName)}
		if p.GivenName != "" {
			n.Given = []string{p.GivenName}
		}
		r.Name = []m.HumanName{n}
	}
	if g, ok := genders[p.Sex]; ok {
		r.Gender = &g
	}
	r.BirthDate = nilIfEmpty(p.BirthDate)
	return r
}

// Encounter is one admission: the ward, the period.
type Encounter struct {
	ID          string
	PatientID   string
	Ward        string // ward name
	WardID      string // ward id (Location/<id>)
	Start       time.Time
	End         time.Time // zero while admitted
	VisitNumber string
	// Cancelled: the admission was cancelled (ADT^A11) — it ended before it began.
	Cancelled bool
}

// RenderEncounter renders an inpatient Encounter: in-progress while admitted, finished
// after discharge, cancelled when the admission was cancelled (ADT^A11). FHIR R4's
// "cancelled" is an encounter that ended before it began: an A11 is refused once anything was
// stored for the admission, so a cancelled admission never has data. "entered-in-error"
// (should never have been in the record) is not used: an A11 does not say whether the
// admission was a mistake or a visit that did not take place.
func RenderEncounter(e Encounter) m.Encounter {
	status := m.EncounterStatusInProgress
	period := &m.Period{Start: ptr(instant(e.Start))}
	if !e.End.IsZero() {
		status = m.EncounterStatusFinished
		period.End = ptr(instant(e.End))
	}
	if e.Cancelled {
		status = m.EncounterStatusCancelled
	}
	r := m.Encounter{Id: &e.ID, Status: status,
		Class:   coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "IMP", "inpatient encounter"),
		Subject: ref("Patient", e.PatientID), Period: period}
	if e.VisitNumber != "" {
		r.Identifier = []m.Identifier{{Use: ptr(m.IdentifierUseOfficial), System: ptr(Base + "/sid/visit-number"), Value: &e.VisitNumber}}
	}
	if e.Ward != "" || e.WardID != "" {
		loc := m.Reference{Display: nilIfEmpty(e.Ward)}
		if e.WardID != "" {
			loc.Reference = ptr("Location/" + e.WardID)
		}
		r.Location = []m.EncounterLocation{{Location: loc, Period: period}}
	}
	return r
}

// Device is a registered device.
type Device struct {
	ID             string
	Serial         string
	Model          string
	Firmware       string
	Status         string // Vigil's registry status: "active", "retired", … (active → active, else inactive)
	KeyFingerprint []byte // SHA-256 of the current public key
	PatientID      string
}

// RenderDevice renders a Device: serial, model, firmware, status, and the key fingerprint
// as an identifier.
func RenderDevice(d Device) m.Device {
	st := m.FHIRDeviceStatusInactive
	if d.Status == "active" {
		st = m.FHIRDeviceStatusActive
	}
	r := m.Device{Id: &d.ID, Status: &st, SerialNumber: nilIfEmpty(d.Serial), ModelNumber: nilIfEmpty(d.Model),
		Identifier: []m.Identifier{{System: ptr(DeviceSerialSystem), Value: &d.Serial}},
		Patient:    ref("Patient", d.PatientID)}
	if len(d.KeyFingerprint) > 0 {
		r.Identifier = append(r.Identifier, m.Identifier{System: ptr(DeviceKeySystem), Value: ptr(hex.EncodeToString(d.KeyFingerprint))})
	}
	if d.Model != "" {
		r.DeviceName = []m.DeviceDeviceName{{Name: d.Model, Type: m.DeviceNameTypeModelName}}
	}
	if d.Firmware != "" {
		r.Version = []m.DeviceVersion{{Type: ptr(concept(Base+"/CodeSystem/device-version", "firmware", "Firmware")), Value: d.Firmware}}
	}
	return r
}

// sigData encodes signature bytes as FHIR base64Binary.
func sigData(b []byte) *string { return ptr(base64.StdEncoding.EncodeToString(b)) }
