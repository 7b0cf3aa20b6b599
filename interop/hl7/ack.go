package hl7

import (
	"strconv"
	"strings"
	"time"
)

// AckCode is MSA-1 of an original-mode acknowledgement (HL7 table 0008).
type AckCode string

// Acknowledgement codes.
const (
	// AA: application accept — the message was processed.
	AA AckCode = "AA"
	// AE: application error — the message's content is wrong (a required field missing, a
	// bad value, an unknown patient); nothing was applied; re-sending it unchanged fails again.
	AE AckCode = "AE"
	// AR: application reject — the message was refused for reasons other than its content
	// (unacceptable MSH: message type, event, version, processing id, encoding characters; or
	// an internal error); nothing was applied.
	AR AckCode = "AR"
)

// HL7 error condition codes (table 0357) used in ERR-3.
const (
	CodeSegmentSequence    = "100"
	CodeRequiredMissing    = "101"
	CodeDataType           = "102"
	CodeTableValue         = "103"
	CodeUnsupportedType    = "200"
	CodeUnsupportedEvent   = "201"
	CodeUnsupportedProcID  = "202"
	CodeUnsupportedVersion = "203"
	CodeUnknownKey         = "204"
	CodeDuplicateKey       = "205"
	CodeRecordLocked       = "206"
	CodeInternal           = "207"
)

var table0357 = map[string]string{
	"0": "Message accepted", CodeSegmentSequence: "Segment sequence error", CodeRequiredMissing: "Required field missing",
	CodeDataType: "Data type error", CodeTableValue: "Table value not found", CodeUnsupportedType: "Unsupported message type",
	CodeUnsupportedEvent: "Unsupported event code", CodeUnsupportedProcID: "Unsupported processing id",
	CodeUnsupportedVersion: "Unsupported version id", CodeUnknownKey: "Unknown key identifier",
	CodeDuplicateKey: "Duplicate key identifier", CodeRecordLocked: "Application record locked",
	CodeInternal: "Application internal error",
}

// LocalCodeSystem names Vigil's local code system in coded elements (HL7 reserves 99zzz for
// local tables).
const LocalCodeSystem = "99VGL"

// Problem is one reason a message was not accepted. It becomes one ERR segment of the
// acknowledgement; Code is also the reason recorded in the audit trail.
type Problem struct {
	// Code is Vigil's stable machine code (ERR-5), e.g. "missing_pid"; docs/interop.md lists them.
	Code string
	// HL7Code is the HL7 table 0357 condition code (ERR-3), e.g. CodeRequiredMissing.
	HL7Code string
	// Segment, Sequence and Field locate the problem (ERR-2); Field 0 for the whole segment.
	Segment  string
	Sequence int
	Field    int
	// Text is a short explanation for the interface analyst (ERR-8). It MUST NOT hold PHI.
	Text string
}

// Rejection is a message refused with AE or AR and the problems that explain why.
type Rejection struct {
	Ack      AckCode
	Problems []Problem
}

// Error lists the problems' codes.
func (r *Rejection) Error() string {
	codes := make([]string, len(r.Problems))
	for i, p := range r.Problems {
		codes[i] = p.Code
	}
	return "hl7: message refused (" + string(r.Ack) + "): " + strings.Join(codes, ", ")
}

// Reason returns the first problem's code ("" for none): the audit reason.
func (r *Rejection) Reason() string {
	if len(r.Problems) == 0 {
		return ""
	}
	return r.Problems[0].Code
}

// AckOptions are what Vigil writes in its acknowledgements.
type AckOptions struct {
	SendingApplication string    // MSH-3 of the ACK; default "VIGIL"
	SendingFacility    string    // MSH-4 of the ACK
	ControlID          string    // MSH-10 of the ACK (unique per ACK)
	Now                time.Time // MSH-7
}

// Ack builds the original-mode acknowledgement of orig (nil when orig could not be parsed:
// the ACK then has an empty MSA-2) with the given code and problems, one ERR segment per
// problem.
func Ack(orig *Message, code AckCode, problems []Problem, opt AckOptions) []byte {
	app := opt.SendingApplication
	if app == "" {
		app = "VIGIL"
	}
	var recvApp, recvFac, event, ctl, proc string
	proc = "P"
	if orig != nil {
		h := orig.MSH()
		recvApp, recvFac = h.Get(3, 1, 0, 0), h.Get(4, 1, 0, 0)
		event = h.Value(9, 2)
		ctl = h.Value(10, 0)
		if p := h.Value(11, 1); p != "" {
			proc = p
		}
	}
	var b Builder
	b.MSH(F(app), F(opt.SendingFacility), F(recvApp), F(recvFac), F(FormatDTM(opt.Now)), Field{},
		F("ACK", event, "ACK"), F(opt.ControlID), F(proc), F(Version))
	text := ""
	if len(problems) > 0 {
		text = problems[0].Text
	}
	b.Segment("MSA", F(string(code)), F(ctl), F(text))
	for _, p := range problems {
		loc := F(p.Segment)
		if p.Segment != "" {
			seq := p.Sequence
			if seq == 0 {
				seq = 1
			}
			loc = F(p.Segment, strconv.Itoa(seq))
			if p.Field > 0 {
				loc = F(p.Segment, strconv.Itoa(seq), strconv.Itoa(p.Field))
			}
		}
		b.Segment("ERR", Field{}, loc, F(p.HL7Code, table0357[p.HL7Code], "HL70357"), F("E"),
			F(p.Code, "", LocalCodeSystem), Field{}, Field{}, F(p.Text))
	}
	return b.Bytes()
}

// ParseAck reads an acknowledgement: its MSA-1 code and MSA-2 (the control id it
// acknowledges), and the ERR-5/ERR-3 codes of its ERR segments. Enhanced-mode codes (CA, CE,
// CR) are mapped to AA, AE, AR.
func ParseAck(b []byte) (code AckCode, ackedControlID string, errs []string, err error) {
	m, err := Parse(b, Limits{})
	if err != nil {
		return "", "", nil, err
	}
	msa, ok := m.Segment("MSA")
	if !ok {
		return "", "", nil, &Rejection{Ack: AR, Problems: []Problem{{Code: "missing_msa", HL7Code: CodeSegmentSequence, Segment: "MSA", Text: "acknowledgement without MSA"}}}
	}
	switch c := msa.Value(1, 0); c {
	case "AA", "CA":
		code = AA
	case "AE", "CE":
		code = AE
	case "AR", "CR":
		code = AR
	default:
		return "", "", nil, &Rejection{Ack: AR, Problems: []Problem{{Code: "bad_msa_code", HL7Code: CodeTableValue, Segment: "MSA", Field: 1, Text: "unknown acknowledgement code"}}}
	}
	for _, s := range m.Segments {
		if s.Name() == "ERR" {
			e := s.Value(5, 1)
			if e == "" {
				e = s.Value(3, 1)
			}
			errs = append(errs, e)
		}
	}
	return code, msa.Value(2, 0), errs, nil
}
