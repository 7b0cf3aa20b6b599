package hl7_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/interop/hl7"
)

// msg joins segments with CR, HL7's segment terminator.
func msg(segs ...string) []byte { return []byte(strings.Join(segs, "\r") + "\r") }

const (
	mshA01 = `MSH|^~\&|EPIC|GENHOSP|VIGIL|GENHOSP|20260102030405+0100||ADT^A01^ADT_A01|MSG0001|P|2.5.1`
	evn    = `EVN|A01|20260102030000+0100`
	pid    = `PID|1||PI7788^^^HOSP^PI~MRN12345^^^GENHOSP&1.2.3&ISO^MR||Doe\S\Smith^Jane^Q||19800215|F`
	pv1    = `PV1|1|I|ICU^12^B^GENHOSP||||||||||||||||V0042|||||||||||||||||||||||||20260102025500+0100`
)

// Verifies: REQ-INT-001
func TestParseStructure(t *testing.T) {
	m, err := hl7.Parse(msg(mshA01, evn, pid, pv1), hl7.Limits{})
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	if got, want := len(m.Segments), 4; got != want {
		t.Fatalf("len(Segments) = %d, want %d", got, want)
	}
	h := m.MSH()
	p, _ := m.Segment("PID")
	for _, c := range []struct {
		name string
		got  string
		want string
	}{
		{"MSH-1", h.Value(1, 0), "|"},
		{"MSH-2", h.Value(2, 0), `^~\&`},
		{"MSH-9.2", h.Value(9, 2), "A01"},
		{"MSH-10", h.Value(10, 0), "MSG0001"},
		{"MSH-12", h.Value(12, 1), "2.5.1"},
		{"PID-3 rep 2 comp 1", p.Get(3, 2, 1, 1), "MRN12345"},
		{"PID-3 rep 2 comp 4 sub 2", p.Get(3, 2, 4, 2), "1.2.3"},
		{"PID-3 rep 2 comp 4 whole", p.Get(3, 2, 4, 0), "GENHOSP&1.2.3&ISO"},
		{"PID-5.1 (escaped ^)", p.Value(5, 1), "Doe^Smith"},
		{"PID-5.2", p.Value(5, 2), "Jane"},
		{"PID-7", p.Value(7, 0), "19800215"},
		{"absent field", p.Value(40, 0), ""},
		{"absent component", p.Value(8, 3), ""},
		{"absent repetition", p.Get(3, 3, 1, 1), ""},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if got, want := p.Repetitions(3), 2; got != want {
		t.Errorf("Repetitions(PID-3) = %d, want %d", got, want)
	}
	// LF and CRLF terminators are accepted too.
	m2, err := hl7.Parse([]byte(strings.Join([]string{mshA01, evn, pid}, "\r\n")), hl7.Limits{})
	if err != nil || len(m2.Segments) != 3 {
		t.Fatalf("Parse(CRLF) = %v, %v; want 3 segments", m2, err)
	}
}

// Verifies: REQ-INT-001
func TestParseRefusesMalformed(t *testing.T) {
	for _, c := range []struct {
		name string
		in   string
		want error
	}{
		{"empty", "", hl7.ErrNoMSH},
		{"no MSH", "PID|1||X\r", hl7.ErrNoMSH},
		{"short header", "MSH|^~", hl7.ErrEncodingCharacters},
		{"duplicate delimiter", "MSH|^^\\&|A\r", hl7.ErrEncodingCharacters},
		{"letter as delimiter", "MSH|^~\\A|A\r", hl7.ErrEncodingCharacters},
		{"five encoding characters (v2.7 truncation)", "MSH|^~\\&#|A\r", hl7.ErrEncodingCharacters},
		{"bad segment id", mshA01 + "\rpid|1\r", hl7.ErrSegment},
		{"segment id without separator", mshA01 + "\rPIDX\r", hl7.ErrSegment},
		{"second MSH", mshA01 + "\r" + mshA01 + "\r", hl7.ErrSegment},
		{"too many segments", mshA01 + strings.Repeat("\rNTE|1", 1000), hl7.ErrTooLarge},
		{"too many fields", mshA01 + "\rNTE" + strings.Repeat("|", 400), hl7.ErrTooLarge},
	} {
		_, err := hl7.Parse([]byte(c.in), hl7.Limits{})
		if !errors.Is(err, c.want) {
			t.Errorf("%s: Parse = %v, want %v", c.name, err, c.want)
		}
	}
}

// Verifies: REQ-INT-001
func TestEscapeRoundTrip(t *testing.T) {
	for _, s := range []string{"", "plain", `a|b^c~d\e&f`, "line1\rline2\nx", "\x00\x1f\x7f", "üñï"} {
		e := hl7.Escape(s, hl7.Standard)
		if strings.ContainsAny(e, "|^~&\r\n") {
			t.Errorf("Escape(%q) = %q still holds a delimiter", s, e)
		}
		if got := hl7.Unescape(e, hl7.Standard); got != s {
			t.Errorf("Unescape(Escape(%q)) = %q, want %q", s, got, s)
		}
	}
	for in, want := range map[string]string{
		`\F\\S\\T\\R\\E\`: `|^&~\`, `a\X0D0A\b`: "a\r\nb", `x\H\bold\N\y`: "xboldy", `line\.br\next`: "line\nnext",
		`unterminated\F`: `unterminated\F`, `\Q\`: `\Q\`, `\X0\`: `\X0\`,
	} {
		if got := hl7.Unescape(in, hl7.Standard); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

// Verifies: REQ-INT-001
func TestParseDTM(t *testing.T) {
	for _, c := range []struct {
		in   string
		want time.Time
		prec int
	}{
		{"2026", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), 4},
		{"20260215", time.Date(2026, 2, 15, 0, 0, 0, 0, time.UTC), 8},
		{"202602151230", time.Date(2026, 2, 15, 12, 30, 0, 0, time.UTC), 12},
		{"20260215123045.25+0100", time.Date(2026, 2, 15, 11, 30, 45, 250e6, time.UTC), 14},
		{"20260215123045-0500", time.Date(2026, 2, 15, 17, 30, 45, 0, time.UTC), 14},
	} {
		got, prec, err := hl7.ParseDTM(c.in, nil)
		if err != nil || !got.Equal(c.want) || prec != c.prec {
			t.Errorf("ParseDTM(%q) = %v, %d, %v; want %v, %d", c.in, got, prec, err, c.want, c.prec)
		}
	}
	for _, in := range []string{"", "202", "2026021", "20261301", "20260230", "2026021512304", "20260215.5", "20260215123045+01", "20260215123045+2500", "abcd"} {
		if _, _, err := hl7.ParseDTM(in, nil); !errors.Is(err, hl7.ErrDate) {
			t.Errorf("ParseDTM(%q) = %v, want ErrDate", in, err)
		}
	}
	if got, want := hl7.FormatDTM(time.Date(2026, 2, 15, 12, 30, 45, 0, time.FixedZone("", 3600))), "20260215113045+0000"; got != want {
		t.Errorf("FormatDTM = %q, want %q", got, want)
	}
}

func parseADT(t *testing.T, segs ...string) (hl7.ADT, *hl7.Rejection) {
	t.Helper()
	m, err := hl7.Parse(msg(segs...), hl7.Limits{})
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	return hl7.ParseADT(m, hl7.ADTOptions{})
}

func withEvent(msh, ev string) string { return strings.Replace(msh, "ADT^A01^ADT_A01", "ADT^"+ev, 1) }

// Verifies: REQ-INT-003
func TestParseADTEvents(t *testing.T) {
	cmd, rej := parseADT(t, mshA01, evn, pid, pv1)
	if rej != nil {
		t.Fatalf("ParseADT(A01) = %v", rej)
	}
	want := hl7.ADT{Kind: hl7.ADTAdmit, Event: "A01", ControlID: "MSG0001", SendingApplication: "EPIC", SendingFacility: "GENHOSP",
		MessageTime: time.Date(2026, 1, 2, 2, 4, 5, 0, time.UTC), EventTime: time.Date(2026, 1, 2, 2, 0, 0, 0, time.UTC),
		Patient:  hl7.ADTPatient{MRN: "MRN12345", AssigningAuthority: "GENHOSP", FamilyName: "Doe^Smith", GivenName: "Jane", BirthDate: "1980-02-15", Sex: "F"},
		Location: hl7.Location{PointOfCare: "ICU", Room: "12", Bed: "B", Facility: "GENHOSP"}, VisitNumber: "V0042",
		AdmitTime: time.Date(2026, 1, 2, 1, 55, 0, 0, time.UTC)}
	if !cmd.MessageTime.Equal(want.MessageTime) || !cmd.EventTime.Equal(want.EventTime) || !cmd.AdmitTime.Equal(want.AdmitTime) {
		t.Errorf("ParseADT(A01) times = %v %v %v, want %v %v %v", cmd.MessageTime, cmd.EventTime, cmd.AdmitTime, want.MessageTime, want.EventTime, want.AdmitTime)
	}
	cmd.MessageTime, cmd.EventTime, cmd.AdmitTime = want.MessageTime, want.EventTime, want.AdmitTime
	if cmd != want {
		t.Errorf("ParseADT(A01) = %+v, want %+v", cmd, want)
	}
	for _, c := range []struct {
		event string
		segs  []string
		kind  hl7.ADTKind
	}{
		{"A02^ADT_A02", []string{evn, pid, `PV1|1|I|CCU^3^A|||ICU^12^B`}, hl7.ADTTransfer},
		{"A03^ADT_A03", []string{evn, pid, `PV1|1|I|CCU^3^A` + strings.Repeat("|", 42) + `20260105120000`}, hl7.ADTDischarge},
		{"A08^ADT_A01", []string{evn, pid}, hl7.ADTUpdate},
		{"A11^ADT_A09", []string{evn, `PID|1||MRN12345^^^GENHOSP^MR`}, hl7.ADTCancelAdmit},
		{"A13^ADT_A01", []string{evn, `PID|1||MRN12345^^^GENHOSP^MR`, `PV1|1|I|CCU^3^A`}, hl7.ADTCancelDischarge},
	} {
		cmd, rej := parseADT(t, append([]string{withEvent(mshA01, c.event)}, c.segs...)...)
		if rej != nil {
			t.Errorf("ParseADT(%s) = %v", c.event, rej)
			continue
		}
		if cmd.Kind != c.kind || cmd.Patient.MRN != "MRN12345" {
			t.Errorf("ParseADT(%s) = kind %q MRN %q, want %q MRN12345", c.event, cmd.Kind, cmd.Patient.MRN, c.kind)
		}
		switch c.kind {
		case hl7.ADTTransfer:
			if cmd.Location.PointOfCare != "CCU" || cmd.PriorLocation.PointOfCare != "ICU" {
				t.Errorf("ParseADT(A02) locations = %+v from %+v, want CCU from ICU", cmd.Location, cmd.PriorLocation)
			}
		case hl7.ADTDischarge:
			if want := time.Date(2026, 1, 5, 12, 0, 0, 0, time.UTC); !cmd.DischargeTime.Equal(want) {
				t.Errorf("ParseADT(A03) DischargeTime = %v, want %v", cmd.DischargeTime, want)
			}
		}
	}
}

// Verifies: REQ-INT-004
func TestParseADTRejections(t *testing.T) {
	for _, c := range []struct {
		name string
		segs []string
		ack  hl7.AckCode
		code string
		hl7  string
	}{
		{"unknown event", []string{withEvent(mshA01, "A99"), evn, pid, pv1}, hl7.AR, "unsupported_event", hl7.CodeUnsupportedEvent},
		{"not ADT", []string{strings.Replace(mshA01, "ADT^A01^ADT_A01", "ORM^O01", 1), pid}, hl7.AR, "unsupported_message_type", hl7.CodeUnsupportedType},
		{"wrong version", []string{strings.Replace(mshA01, "|2.5.1", "|2.1", 1), pid, pv1}, hl7.AR, "unsupported_version", hl7.CodeUnsupportedVersion},
		{"test processing id", []string{strings.Replace(mshA01, "|P|", "|T|", 1), pid, pv1}, hl7.AR, "unsupported_processing_id", hl7.CodeUnsupportedProcID},
		{"no control id", []string{strings.Replace(mshA01, "MSG0001", "", 1), pid, pv1}, hl7.AR, "missing_control_id", hl7.CodeRequiredMissing},
		{"bad message time", []string{strings.Replace(mshA01, "20260102030405+0100", "yesterday", 1), pid, pv1}, hl7.AR, "bad_message_time", hl7.CodeDataType},
		{"wrong encoding characters", []string{strings.ReplaceAll(strings.Replace(mshA01, `^~\&`, `*~\&`, 1), "ADT^A01^ADT_A01", "ADT*A01*ADT_A01"), pid, pv1}, hl7.AR, "unsupported_encoding_characters", hl7.CodeDataType},
		{"missing PID", []string{mshA01, evn, pv1}, hl7.AE, "missing_pid", hl7.CodeSegmentSequence},
		{"missing identifier", []string{mshA01, evn, `PID|1||||Doe^Jane`, pv1}, hl7.AE, "missing_patient_identifier", hl7.CodeRequiredMissing},
		{"missing name", []string{mshA01, evn, `PID|1||MRN1^^^H^MR`, pv1}, hl7.AE, "missing_patient_name", hl7.CodeRequiredMissing},
		{"bad birth date", []string{mshA01, evn, `PID|1||MRN1^^^H^MR||Doe^Jane||1980`, pv1}, hl7.AE, "bad_birth_date", hl7.CodeDataType},
		{"bad sex", []string{mshA01, evn, `PID|1||MRN1^^^H^MR||Doe^Jane|||Q`, pv1}, hl7.AE, "bad_sex", hl7.CodeTableValue},
		{"missing PV1 on admit", []string{mshA01, evn, pid}, hl7.AE, "missing_pv1", hl7.CodeSegmentSequence},
		{"missing location", []string{mshA01, evn, pid, `PV1|1|I`}, hl7.AE, "missing_location", hl7.CodeRequiredMissing},
		{"bad event time", []string{mshA01, `EVN|A01|soon`, pid, pv1}, hl7.AE, "bad_event_time", hl7.CodeDataType},
	} {
		_, rej := parseADT(t, c.segs...)
		if rej == nil {
			t.Errorf("%s: ParseADT = accepted, want %s %s", c.name, c.ack, c.code)
			continue
		}
		if rej.Ack != c.ack || rej.Reason() != c.code || rej.Problems[0].HL7Code != c.hl7 {
			t.Errorf("%s: ParseADT = %s %s (%s), want %s %s (%s)", c.name, rej.Ack, rej.Reason(), rej.Problems[0].HL7Code, c.ack, c.code, c.hl7)
		}
	}
}

// Verifies: REQ-INT-004
func TestAckCarriesCodedReasons(t *testing.T) {
	m, err := hl7.Parse(msg(mshA01, evn, pv1), hl7.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	_, rej := hl7.ParseADT(m, hl7.ADTOptions{})
	now := time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC)
	ack := hl7.Ack(m, rej.Ack, rej.Problems, hl7.AckOptions{ControlID: "ACK1", Now: now})
	wantPrefix := "MSH|^~\\&|VIGIL||EPIC|GENHOSP|20260102030406+0000||ACK^A01^ACK|ACK1|P|2.5.1\rMSA|AE|MSG0001|PID segment is required\r" +
		"ERR||PID^1|100^Segment sequence error^HL70357|E|missing_pid^^99VGL|||PID segment is required\r"
	if string(ack) != wantPrefix {
		t.Errorf("Ack = %q, want %q", ack, wantPrefix)
	}
	code, ctl, errs, err := hl7.ParseAck(ack)
	if err != nil || code != hl7.AE || ctl != "MSG0001" || len(errs) != 1 || errs[0] != "missing_pid" {
		t.Errorf("ParseAck = %s %q %v %v, want AE MSG0001 [missing_pid]", code, ctl, errs, err)
	}
	// An unparseable message still gets an AR, with an empty MSA-2.
	ack = hl7.Ack(nil, hl7.AR, []hl7.Problem{{Code: "malformed_message", HL7Code: hl7.CodeSegmentSequence, Text: "not HL7"}}, hl7.AckOptions{ControlID: "ACK2", Now: now})
	code, ctl, _, err = hl7.ParseAck(ack)
	if err != nil || code != hl7.AR || ctl != "" {
		t.Errorf("ParseAck(ack of garbage) = %s %q %v, want AR \"\"", code, ctl, err)
	}
}

// Verifies: REQ-INT-006
func TestBuildORU(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	b, err := hl7.BuildORU(hl7.ORU{ControlID: "VGL1", Time: at, ReceivingApplication: "EPIC",
		Patient: hl7.ORUPatient{ID: "0190-abc", MRN: "MRN12345", AssigningAuthority: "GENHOSP", FamilyName: "O'Brien|Smith", GivenName: "Jane", BirthDate: "1980-02-15", Sex: "F", Ward: "ICU"},
		Observations: []hl7.ORUObservation{
			{Code: "8867-4", Display: "Heart rate", Value: 72, Unit: "/min", Time: at, DeviceID: "dev-1"},
			{Code: "8310-5", Display: "Body temperature", Value: 37.25, Unit: "Cel", Time: at.Add(-time.Minute)},
			{Code: "59408-5", Display: "SpO2", Value: 40, Unit: "%", Time: at, Artifact: true},
		},
		Alarms: []hl7.ORUAlarm{{ID: "al-1", Rule: "news2", Severity: "high", State: "active", Message: "NEWS2 7 ^ rising", Time: at}}})
	if err != nil {
		t.Fatalf("BuildORU = %v", err)
	}
	m, err := hl7.Parse(b, hl7.Limits{})
	if err != nil {
		t.Fatalf("Parse(BuildORU) = %v", err)
	}
	var names []string
	for _, s := range m.Segments {
		names = append(names, s.Name())
	}
	if got, want := strings.Join(names, " "), "MSH PID PV1 OBR OBX OBX OBX NTE OBR OBX OBX OBX OBX"; got != want {
		t.Fatalf("segments = %s, want %s", got, want)
	}
	h := m.MSH()
	if h.Get(9, 1, 0, 0) != "ORU^R01^ORU_R01" || h.Value(12, 0) != "2.5.1" || h.Value(10, 0) != "VGL1" {
		t.Errorf("MSH = %v", h.Fields)
	}
	p, _ := m.Segment("PID")
	if p.Get(3, 1, 1, 1) != "MRN12345" || p.Get(3, 1, 5, 1) != "MR" || p.Get(3, 2, 1, 1) != "0190-abc" || p.Value(5, 1) != "O'Brien|Smith" || p.Value(7, 0) != "19800215" {
		t.Errorf("PID = %v", p.Fields)
	}
	obx := m.Segments[4]
	for _, c := range []struct {
		n, comp int
		want    string
	}{
		{2, 0, "NM"}, {3, 1, "8867-4"}, {3, 3, "LN"}, {5, 0, "72"}, {6, 1, "/min"}, {6, 3, "UCUM"}, {11, 0, "F"},
		{14, 0, "20260102030405+0000"}, {18, 1, "dev-1"},
	} {
		if got := obx.Value(c.n, c.comp); got != c.want {
			t.Errorf("OBX-%d.%d = %q, want %q", c.n, c.comp, got, c.want)
		}
	}
	if got := m.Segments[5].Value(5, 0); got != "37.25" {
		t.Errorf("OBX-5 of temperature = %q, want 37.25", got)
	}
	if got := m.Segments[3].Value(7, 0); got != "20260102030305+0000" {
		t.Errorf("OBR-7 = %q, want the earliest sample time", got)
	}
	alarmMsg := m.Segments[12]
	if alarmMsg.Value(5, 0) != "NEWS2 7 ^ rising" || m.Segments[10].Value(8, 0) != "AA" {
		t.Errorf("alarm OBX = %v / %v", alarmMsg.Fields, m.Segments[10].Fields)
	}
	for _, bad := range []hl7.ORU{{Patient: hl7.ORUPatient{MRN: "x"}, Observations: []hl7.ORUObservation{{Code: "1", Unit: "1"}}},
		{ControlID: "x", Patient: hl7.ORUPatient{MRN: "x"}},
		{ControlID: "x", Patient: hl7.ORUPatient{MRN: "x"}, Observations: []hl7.ORUObservation{{Code: "8867-4"}}}} {
		if _, err := hl7.BuildORU(bad); !errors.Is(err, hl7.ErrBadORU) {
			t.Errorf("BuildORU(%+v) = %v, want ErrBadORU", bad, err)
		}
	}
}
