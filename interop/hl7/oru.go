package hl7

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ErrBadORU: the ORU input is not complete enough to build a message.
var ErrBadORU = errors.New("hl7: bad ORU input")

// ORU is what one outbound ORU^R01 message carries: one patient's new vital-sign samples and
// alarms. The core side fills it; BuildORU writes it.
type ORU struct {
	ControlID            string    // MSH-10, unique per message; required
	Time                 time.Time // MSH-7
	SendingApplication   string    // MSH-3; default "VIGIL"
	SendingFacility      string    // MSH-4
	ReceivingApplication string    // MSH-5
	ReceivingFacility    string    // MSH-6
	ProcessingID         string    // MSH-11; default "P"
	Patient              ORUPatient
	Observations         []ORUObservation
	Alarms               []ORUAlarm
}

// ORUPatient identifies the patient (PID, PV1). MRN and names are PHI.
type ORUPatient struct {
	ID                 string // Vigil's patient id; written as a second PID-3 identifier (type PI)
	MRN                string // the hospital's medical record number; required
	AssigningAuthority string // of the MRN (PID-3 CX.4)
	FamilyName         string
	GivenName          string
	BirthDate          string // YYYY-MM-DD
	Sex                string // HL7 table 0001
	Ward               string // PV1-3.1
}

// ORUObservation is one sample: one OBX, LOINC-coded, valued in its UCUM unit.
type ORUObservation struct {
	Code     string  // LOINC code (OBX-3), e.g. "8867-4"; required
	Display  string  // its display name
	Value    float64 // OBX-5 (numeric, NM)
	Unit     string  // UCUM unit (OBX-6), e.g. "/min"; required
	Time     time.Time
	DeviceID string // the device that measured it (OBX-18)
	// Artifact: stored flagged as outside the physiological range; an NTE follows the OBX.
	Artifact bool
}

// ORUAlarm is one alarm of the patient: an OBR group of its own with local codes.
type ORUAlarm struct {
	ID       string // alarm id (OBR-3)
	Rule     string // rule id
	Severity string // low, medium, high, critical
	State    string // active, acknowledged, resolved
	Message  string // human-readable cause
	Time     time.Time
}

// Code systems of the ORU profile.
const (
	LOINCSystem = "LN"
	UCUMSystem  = "UCUM"
	// VitalSignsPanel is the LOINC panel written in OBR-4 of the vital-signs group.
	VitalSignsPanel        = "85353-1"
	vitalSignsPanelDisplay = "Vital signs, weight, height, head circumference, oxygen saturation and BMI panel"
)

// BuildORU writes an ORU^R01 (v2.5.1) message: MSH, PID, PV1, then one OBR group of
// vital signs (one OBX per sample, LOINC-coded, UCUM units, an NTE after a sample flagged as
// an artifact) and one OBR group per alarm. docs/interop.md is the profile.
func BuildORU(o ORU) ([]byte, error) {
	if o.ControlID == "" || o.Patient.MRN == "" {
		return nil, fmt.Errorf("%w: control id and patient MRN are required", ErrBadORU)
	}
	if len(o.Observations) == 0 && len(o.Alarms) == 0 {
		return nil, fmt.Errorf("%w: nothing to send", ErrBadORU)
	}
	app := o.SendingApplication
	if app == "" {
		app = "VIGIL"
	}
	proc := o.ProcessingID
	if proc == "" {
		proc = "P"
	}
	var b Builder
	b.MSH(F(app), F(o.SendingFacility), F(o.ReceivingApplication), F(o.ReceivingFacility), F(FormatDTM(o.Time)), Field{},
		F("ORU", "R01", "ORU_R01"), F(o.ControlID), F(proc), F(Version))
	p := o.Patient
	ids := []Field{F(p.MRN, "", "", p.AssigningAuthority, "MR")}
	if p.ID != "" {
		ids = append(ids, F(p.ID, "", "", "VIGIL", "PI"))
	}
	birth := strings.ReplaceAll(p.BirthDate, "-", "")
	b.Segment("PID", F("1"), Field{}, Reps(ids...), Field{}, F(p.FamilyName, p.GivenName), Field{}, F(birth), F(p.Sex))
	b.Segment("PV1", F("1"), F("I"), F(p.Ward))
	set := 0
	if len(o.Observations) > 0 {
		set++
		first := o.Observations[0].Time
		for _, s := range o.Observations {
			if s.Time.Before(first) {
				first = s.Time
			}
		}
		b.Segment("OBR", F(strconv.Itoa(set)), Field{}, F(o.ControlID+"-"+strconv.Itoa(set), "VIGIL"),
			F(VitalSignsPanel, vitalSignsPanelDisplay, LOINCSystem), Field{}, Field{}, F(FormatDTM(first)),
			Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, F("F"))
		for i, s := range o.Observations {
			if s.Code == "" || s.Unit == "" {
				return nil, fmt.Errorf("%w: observation %d without code or unit", ErrBadORU, i)
			}
			var dev Field
			if s.DeviceID != "" {
				dev = F(s.DeviceID, "VIGIL")
			}
			b.Segment("OBX", F(strconv.Itoa(i+1)), F("NM"), F(s.Code, s.Display, LOINCSystem), Field{},
				F(strconv.FormatFloat(s.Value, 'f', -1, 64)), F(s.Unit, s.Unit, UCUMSystem), Field{}, Field{}, Field{}, Field{},
				F("F"), Field{}, Field{}, F(FormatDTM(s.Time)), Field{}, Field{}, Field{}, dev)
			if s.Artifact {
				b.Segment("NTE", F("1"), F("L"), F("Possible artifact: outside the physiological range"))
			}
		}
	}
	for _, a := range o.Alarms {
		set++
		b.Segment("OBR", F(strconv.Itoa(set)), Field{}, F(a.ID, "VIGIL"), F("ALARM", "Vigil alarm", LocalCodeSystem), Field{}, Field{},
			F(FormatDTM(a.Time)), Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, Field{}, F("F"))
		flag := "A"
		if a.Severity == "high" || a.Severity == "critical" {
			flag = "AA"
		}
		t := F(FormatDTM(a.Time))
		b.Segment("OBX", F("1"), F("ST"), F("RULE", "Alarm rule", LocalCodeSystem), Field{}, F(a.Rule), Field{}, Field{}, Field{}, Field{}, Field{}, F("F"), Field{}, Field{}, t)
		b.Segment("OBX", F("2"), F("CWE"), F("SEVERITY", "Alarm severity", LocalCodeSystem), Field{}, F(a.Severity, a.Severity, LocalCodeSystem),
			Field{}, Field{}, F(flag), Field{}, Field{}, F("F"), Field{}, Field{}, t)
		b.Segment("OBX", F("3"), F("ST"), F("STATE", "Alarm state", LocalCodeSystem), Field{}, F(a.State), Field{}, Field{}, Field{}, Field{}, Field{}, F("F"), Field{}, Field{}, t)
		b.Segment("OBX", F("4"), F("TX"), F("MESSAGE", "Alarm message", LocalCodeSystem), Field{}, F(a.Message), Field{}, Field{}, Field{}, Field{}, Field{}, F("F"), Field{}, Field{}, t)
	}
	return b.Bytes(), nil
}
