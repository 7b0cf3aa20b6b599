package hl7

import (
	"slices"
	"time"
)

// Version is the HL7 version Vigil writes (MSH-12) and whose profile it reads.
const Version = "2.5.1"

// ADTKind is what an inbound ADT message asks Vigil to do.
type ADTKind string

// ADT kinds, one per supported trigger event.
const (
	ADTAdmit           ADTKind = "admit"            // A01 admit/visit notification
	ADTTransfer        ADTKind = "transfer"         // A02 transfer a patient
	ADTDischarge       ADTKind = "discharge"        // A03 discharge/end visit
	ADTUpdate          ADTKind = "update"           // A08 update patient information
	ADTCancelAdmit     ADTKind = "cancel_admit"     // A11 cancel admit
	ADTCancelDischarge ADTKind = "cancel_discharge" // A13 cancel discharge
)

var adtEvents = map[string]ADTKind{
	"A01": ADTAdmit, "A02": ADTTransfer, "A03": ADTDischarge, "A08": ADTUpdate,
	"A11": ADTCancelAdmit, "A13": ADTCancelDischarge,
}

// ADTPatient is the patient of an ADT message (PID). It is PHI.
type ADTPatient struct {
	MRN                string // PID-3: the identifier of type MR (else the first), CX.1
	AssigningAuthority string // its CX.4.1
	FamilyName         string // PID-5 XPN.1.1
	GivenName          string // PID-5 XPN.2
	BirthDate          string // PID-7 as YYYY-MM-DD ("" when absent)
	Sex                string // PID-8 (HL7 table 0001: F M O U A N)
}

// Location is a patient location (PL): point of care (the ward), room, bed, facility.
type Location struct {
	PointOfCare string // PL.1
	Room        string // PL.2
	Bed         string // PL.3
	Facility    string // PL.4.1
}

// ADT is an inbound ADT message validated and reduced to what Vigil acts on. The core side
// applies it (interop/hl7/inbound.ADTApplier).
type ADT struct {
	Kind               ADTKind
	Event              string // A01, A02, …
	ControlID          string // MSH-10
	SendingApplication string // MSH-3.1
	SendingFacility    string // MSH-4.1
	MessageTime        time.Time
	// EventTime is when the event happened: EVN-6, else EVN-2, else MSH-7.
	EventTime     time.Time
	Patient       ADTPatient
	Location      Location  // PV1-3: the assigned location (the new one for a transfer)
	PriorLocation Location  // PV1-6 (A02)
	VisitNumber   string    // PV1-19 CX.1
	AdmitTime     time.Time // PV1-44; zero when absent
	DischargeTime time.Time // PV1-45; zero when absent
}

// ADTOptions configure what ParseADT accepts.
type ADTOptions struct {
	// Versions are the accepted MSH-12 values. Default 2.3, 2.3.1, 2.4, 2.5, 2.5.1 (the
	// fields read are the same in all of them).
	Versions []string
	// ProcessingIDs are the accepted MSH-11 values. Default P (production) only.
	ProcessingIDs []string
	// Zone reads date/times sent without an offset. Default UTC.
	Zone *time.Location
}

var sexes = []string{"F", "M", "O", "U", "A", "N"}

// ParseADT validates m against Vigil's inbound ADT profile (docs/interop.md) and returns
// the command it carries. A message that does not fit returns a *Rejection: AR for an
// unacceptable header (message type, event, version, processing id, encoding characters,
// control id), AE for bad content (no PID, no identifier, no name, no location, bad dates
// or codes), with every problem found.
func ParseADT(m *Message, opt ADTOptions) (ADT, *Rejection) {
	if len(opt.Versions) == 0 {
		opt.Versions = []string{"2.3", "2.3.1", "2.4", "2.5", "2.5.1"}
	}
	if len(opt.ProcessingIDs) == 0 {
		opt.ProcessingIDs = []string{"P"}
	}
	h := m.MSH()
	var ar []Problem
	if m.Delims != Standard {
		ar = append(ar, Problem{Code: "unsupported_encoding_characters", HL7Code: CodeDataType, Segment: "MSH", Field: 2,
			Text: `field separator and encoding characters must be |^~\&`})
	}
	if h.Value(9, 1) != "ADT" {
		ar = append(ar, Problem{Code: "unsupported_message_type", HL7Code: CodeUnsupportedType, Segment: "MSH", Field: 9,
			Text: "only ADT messages are accepted on this interface"})
	}
	event := h.Value(9, 2)
	kind, known := adtEvents[event]
	if h.Value(9, 1) == "ADT" && !known {
		ar = append(ar, Problem{Code: "unsupported_event", HL7Code: CodeUnsupportedEvent, Segment: "MSH", Field: 9,
			Text: "supported events: A01 A02 A03 A08 A11 A13"})
	}
	if v := h.Value(12, 1); !slices.Contains(opt.Versions, v) {
		ar = append(ar, Problem{Code: "unsupported_version", HL7Code: CodeUnsupportedVersion, Segment: "MSH", Field: 12,
			Text: "unsupported HL7 version"})
	}
	if p := h.Value(11, 1); !slices.Contains(opt.ProcessingIDs, p) {
		ar = append(ar, Problem{Code: "unsupported_processing_id", HL7Code: CodeUnsupportedProcID, Segment: "MSH", Field: 11,
			Text: "unsupported processing id"})
	}
	ctl := h.Value(10, 0)
	if ctl == "" {
		ar = append(ar, Problem{Code: "missing_control_id", HL7Code: CodeRequiredMissing, Segment: "MSH", Field: 10,
			Text: "message control id is required"})
	}
	msgTime, _, err := ParseDTM(h.Value(7, 1), opt.Zone)
	if err != nil {
		ar = append(ar, Problem{Code: "bad_message_time", HL7Code: CodeDataType, Segment: "MSH", Field: 7,
			Text: "message date/time is missing or not a DTM"})
	}
	if len(ar) > 0 {
		return ADT{}, &Rejection{Ack: AR, Problems: ar}
	}

	cmd := ADT{Kind: kind, Event: event, ControlID: ctl, SendingApplication: h.Value(3, 1),
		SendingFacility: h.Value(4, 1), MessageTime: msgTime, EventTime: msgTime}
	var ae []Problem
	bad := func(code, hl7code, seg string, field int, text string) {
		ae = append(ae, Problem{Code: code, HL7Code: hl7code, Segment: seg, Field: field, Text: text})
	}
	dtm := func(seg Segment, field int, code string) time.Time {
		v := seg.Value(field, 1)
		if v == "" {
			return time.Time{}
		}
		t, _, err := ParseDTM(v, opt.Zone)
		if err != nil {
			bad(code, CodeDataType, seg.Name(), field, "not an HL7 date/time")
		}
		return t
	}
	if evn, ok := m.Segment("EVN"); ok {
		if t := dtm(evn, 2, "bad_event_time"); !t.IsZero() {
			cmd.EventTime = t
		}
		if t := dtm(evn, 6, "bad_event_time"); !t.IsZero() {
			cmd.EventTime = t
		}
	}
	pid, ok := m.Segment("PID")
	if !ok {
		bad("missing_pid", CodeSegmentSequence, "PID", 0, "PID segment is required")
		return ADT{}, &Rejection{Ack: AE, Problems: ae}
	}
	cmd.Patient = readPatient(pid)
	if cmd.Patient.MRN == "" {
		bad("missing_patient_identifier", CodeRequiredMissing, "PID", 3, "a patient identifier (PID-3) is required")
	}
	if (kind == ADTAdmit || kind == ADTUpdate) && cmd.Patient.FamilyName == "" && cmd.Patient.GivenName == "" {
		bad("missing_patient_name", CodeRequiredMissing, "PID", 5, "a patient name (PID-5) is required")
	}
	if v := pid.Value(7, 1); v != "" {
		t, prec, err := ParseDTM(v, opt.Zone)
		if err != nil || prec < 8 {
			bad("bad_birth_date", CodeDataType, "PID", 7, "birth date must be YYYYMMDD")
		} else {
			cmd.Patient.BirthDate = t.Format(time.DateOnly)
		}
	}
	if v := cmd.Patient.Sex; v != "" && !slices.Contains(sexes, v) {
		bad("bad_sex", CodeTableValue, "PID", 8, "administrative sex not in HL7 table 0001")
	}
	pv1, hasPV1 := m.Segment("PV1")
	needPV1 := kind == ADTAdmit || kind == ADTTransfer
	if !hasPV1 && needPV1 {
		bad("missing_pv1", CodeSegmentSequence, "PV1", 0, "PV1 segment is required for A01 and A02")
	}
	if hasPV1 {
		cmd.Location = readLocation(pv1, 3)
		cmd.PriorLocation = readLocation(pv1, 6)
		cmd.VisitNumber = pv1.Value(19, 1)
		cmd.AdmitTime = dtm(pv1, 44, "bad_admit_time")
		cmd.DischargeTime = dtm(pv1, 45, "bad_discharge_time")
		if needPV1 && cmd.Location.PointOfCare == "" {
			bad("missing_location", CodeRequiredMissing, "PV1", 3, "the assigned location's point of care (PV1-3.1) is required")
		}
	}
	if len(ae) > 0 {
		return ADT{}, &Rejection{Ack: AE, Problems: ae}
	}
	return cmd, nil
}

func readPatient(pid Segment) ADTPatient {
	var p ADTPatient
	// PID-3: the MR identifier if one is typed so, else the first.
	n := pid.Repetitions(3)
	pick := 0
	for r := 1; r <= n; r++ {
		if pid.Get(3, r, 1, 1) == "" {
			continue
		}
		if pick == 0 {
			pick = r
		}
		if pid.Get(3, r, 5, 1) == "MR" {
			pick = r
			break
		}
	}
	if pick > 0 {
		p.MRN = pid.Get(3, pick, 1, 1)
		p.AssigningAuthority = pid.Get(3, pick, 4, 1)
	}
	p.FamilyName = pid.Get(5, 1, 1, 1)
	p.GivenName = pid.Get(5, 1, 2, 1)
	p.Sex = pid.Value(8, 1)
	return p
}

func readLocation(s Segment, field int) Location {
	return Location{PointOfCare: s.Get(field, 1, 1, 1), Room: s.Get(field, 1, 2, 1), Bed: s.Get(field, 1, 3, 1),
		Facility: s.Get(field, 1, 4, 1)}
}
