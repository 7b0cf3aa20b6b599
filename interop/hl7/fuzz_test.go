package hl7_test

import (
	"strings"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/interop/hl7"
)

// FuzzParse: the parser faces the network (MLLP). Whatever the bytes, it must not panic,
// and what it accepts must be well formed: MSH first, valid segment ids, and every field
// readable at every level.
//
// Verifies: REQ-INT-001
func FuzzParse(f *testing.F) {
	f.Add(msg(mshA01, evn, pid, pv1))
	f.Add([]byte("MSH|^~\\&|A|B|||2026||ADT^A08|1|P|2.5.1\nPID|1||X^^^^MR||\\X41\\^B\\E\\"))
	f.Add([]byte("MSH|^~\\&"))
	f.Add([]byte("MSH#*!@$#x#y\rZZZ#1*2!3"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := hl7.Parse(b, hl7.Limits{MaxSegments: 50, MaxFields: 50})
		if err != nil {
			return
		}
		if len(m.Segments) == 0 || m.Segments[0].Name() != "MSH" {
			t.Fatalf("Parse accepted a message that does not start with MSH: %q", b)
		}
		for _, s := range m.Segments[1:] {
			if s.Name() == "MSH" || len(s.Name()) != 3 {
				t.Fatalf("Parse accepted segment %q", s.Name())
			}
			for n := 0; n < len(s.Fields)+1; n++ {
				for r := 0; r <= s.Repetitions(n)+1; r++ {
					_ = s.Get(n, r, 2, 2)
					_ = s.Get(n, r, 1, 0)
				}
			}
		}
		// A message that parses gets a well-formed acknowledgement whatever it says.
		cmd, rej := hl7.ParseADT(m, hl7.ADTOptions{})
		code, probs := hl7.AA, []hl7.Problem(nil)
		if rej != nil {
			code, probs = rej.Ack, rej.Problems
		} else if cmd.ControlID == "" || cmd.Patient.MRN == "" {
			t.Fatalf("ParseADT accepted a command without control id or MRN: %+v", cmd)
		}
		ack := hl7.Ack(m, code, probs, hl7.AckOptions{ControlID: "A1", Now: time.Unix(0, 0)})
		got, ctl, _, err := hl7.ParseAck(ack)
		if err != nil || got != code {
			t.Fatalf("ParseAck(Ack) = %s, %v; want %s (ack %q)", got, err, code, ack)
		}
		if want := m.MSH().Value(10, 0); ctl != want {
			t.Fatalf("ACK MSA-2 = %q, want %q", ctl, want)
		}
	})
}

// FuzzEscape: any text survives Escape then Unescape, and escaped text never holds a
// delimiter or a line break.
//
// Verifies: REQ-INT-001
func FuzzEscape(f *testing.F) {
	f.Add("a|b^c~d\\e&f\r\n")
	f.Fuzz(func(t *testing.T, s string) {
		e := hl7.Escape(s, hl7.Standard)
		if strings.ContainsAny(e, "|^~&\r\n") {
			t.Fatalf("Escape(%q) = %q holds a delimiter", s, e)
		}
		if got := hl7.Unescape(e, hl7.Standard); got != s {
			t.Fatalf("Unescape(Escape(%q)) = %q", s, got)
		}
	})
}
