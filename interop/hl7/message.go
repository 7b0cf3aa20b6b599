// Package hl7 reads and writes HL7 v2.5.1 messages in their pipe-delimited (ER7) form: a
// small, fuzzed parser (Parse), the escape rules, a Builder for outbound messages, the
// original-mode acknowledgement (Ack, with MSA and ERR segments), the inbound ADT profile
// (ParseADT: A01/A02/A03/A08/A11/A13 into an ADT command value) and the outbound ORU^R01
// profile (BuildORU). It does no I/O: MLLP is interop/mllp.
//
// Why our own parser: no maintained Go HL7 v2 library is served by the Go module proxy this
// project builds from (docs/interop.md gives the evaluation); the profile Vigil needs is
// small (MSH, EVN, PID, PV1 in; MSH, PID, PV1, OBR, OBX, NTE out), so the parser reads the
// generic segment/field/repetition/component/subcomponent structure and the profiles read
// the few fields they use.
package hl7

import (
	"errors"
	"fmt"
	"strings"
)

// Parse errors. Every error returned by Parse wraps exactly one of them.
var (
	// ErrNoMSH: the message does not start with an MSH segment (or is empty).
	ErrNoMSH = errors.New("hl7: message does not start with MSH")
	// ErrEncodingCharacters: MSH-1/MSH-2 do not declare a field separator and four distinct
	// encoding characters.
	ErrEncodingCharacters = errors.New("hl7: bad field separator or encoding characters")
	// ErrSegment: a segment is not a three-character segment id followed by fields.
	ErrSegment = errors.New("hl7: malformed segment")
	// ErrTooLarge: the message has more segments or fields than Limits allow.
	ErrTooLarge = errors.New("hl7: message too large")
)

// Limits bound what Parse accepts, so a hostile message cannot make it allocate without
// bound (the byte size is bounded by the transport, interop/mllp).
type Limits struct {
	MaxSegments int // default 1000
	MaxFields   int // per segment; default 300
}

func (l Limits) withDefaults() Limits {
	if l.MaxSegments <= 0 {
		l.MaxSegments = 1000
	}
	if l.MaxFields <= 0 {
		l.MaxFields = 300
	}
	return l
}

// Delimiters are a message's separators, declared in MSH-1 and MSH-2.
type Delimiters struct {
	Field, Component, Repetition, Escape, Subcomponent byte
}

// Standard are the delimiters HL7 recommends and Vigil's profiles require: | ^ ~ \ &.
var Standard = Delimiters{Field: '|', Component: '^', Repetition: '~', Escape: '\\', Subcomponent: '&'}

// EncodingCharacters returns MSH-2 for d ("^~\&" for Standard).
func (d Delimiters) EncodingCharacters() string {
	return string([]byte{d.Component, d.Repetition, d.Escape, d.Subcomponent})
}

// Message is a parsed message: its delimiters and segments in order.
type Message struct {
	Delims   Delimiters
	Segments []Segment
}

// Segment is one segment. Fields[0] is the segment id; Fields[n] is field n, raw (still
// escaped). For MSH, Fields[1] is the field separator and Fields[2] the encoding characters,
// so that MSH-n is Fields[n] as for every other segment.
type Segment struct {
	Fields []string
	d      *Delimiters
}

// Name returns the segment id ("PID").
func (s Segment) Name() string { return s.Fields[0] }

// Raw returns field n as it was sent (escaped, with its repetitions and components), or ""
// when the segment has fewer fields.
func (s Segment) Raw(n int) string {
	if n <= 0 || n >= len(s.Fields) {
		return ""
	}
	return s.Fields[n]
}

// Repetitions returns the number of repetitions of field n (0 when empty).
func (s Segment) Repetitions(n int) int {
	raw := s.Raw(n)
	if raw == "" {
		return 0
	}
	if s.Name() == "MSH" && n <= 2 {
		return 1
	}
	return strings.Count(raw, string(s.d.Repetition)) + 1
}

// Get returns field n, repetition rep (1-based), component comp (1-based), subcomponent sub
// (1-based), unescaped; 0 for comp or sub means "the whole" level (components or
// subcomponents still joined by their separators, escaped text unescaped). It returns ""
// for what is absent. MSH-1 and MSH-2 are returned as they are.
func (s Segment) Get(n, rep, comp, sub int) string {
	raw := s.Raw(n)
	if raw == "" {
		return ""
	}
	if s.Name() == "MSH" && n <= 2 {
		return raw
	}
	d := s.d
	v := nth(raw, d.Repetition, rep)
	if comp > 0 {
		v = nth(v, d.Component, comp)
		if sub > 0 {
			v = nth(v, d.Subcomponent, sub)
		}
	}
	return Unescape(v, *d)
}

// Value is Get(n, 1, comp, 1) for a component, or Get(n, 1, 0, 0) for comp 0: the usual way
// to read a field of a simple data type.
func (s Segment) Value(n, comp int) string {
	if comp == 0 {
		return s.Get(n, 1, 0, 0)
	}
	return s.Get(n, 1, comp, 1)
}

// nth returns the i-th (1-based) part of s split by sep, or "" when absent.
func nth(s string, sep byte, i int) string {
	if i <= 0 {
		i = 1
	}
	for k := 1; ; k++ {
		j := strings.IndexByte(s, sep)
		if k == i {
			if j < 0 {
				return s
			}
			return s[:j]
		}
		if j < 0 {
			return ""
		}
		s = s[j+1:]
	}
}

// Segment returns the first segment named name and true, or false when there is none.
func (m *Message) Segment(name string) (Segment, bool) {
	for _, s := range m.Segments {
		if s.Name() == name {
			return s, true
		}
	}
	return Segment{}, false
}

// MSH returns the header segment (always Segments[0] of a parsed message).
func (m *Message) MSH() Segment { return m.Segments[0] }

// Parse parses one message in ER7 form. Segments end with CR (HL7's terminator); LF and
// CRLF are accepted too, and empty lines are skipped. The first segment must be MSH with a
// field separator and four distinct encoding characters (MSH-2 of v2.5.1), none of them a
// letter, digit, space or line break. Parse checks structure only; profiles (ParseADT)
// check content.
func Parse(b []byte, lim Limits) (*Message, error) {
	lim = lim.withDefaults()
	s := string(b)
	if len(s) < 4 || s[:3] != "MSH" {
		return nil, ErrNoMSH
	}
	d, err := delimiters(s)
	if err != nil {
		return nil, err
	}
	m := &Message{Delims: d}
	lines := 0
	for len(s) > 0 {
		i := strings.IndexAny(s, "\r\n")
		var line string
		if i < 0 {
			line, s = s, ""
		} else {
			line, s = s[:i], s[i+1:]
		}
		if line == "" {
			continue
		}
		lines++
		if lines > lim.MaxSegments {
			return nil, fmt.Errorf("%w: more than %d segments", ErrTooLarge, lim.MaxSegments)
		}
		seg, err := parseSegment(line, &m.Delims, len(m.Segments) == 0, lim)
		if err != nil {
			return nil, fmt.Errorf("segment %d: %w", lines, err)
		}
		m.Segments = append(m.Segments, seg)
	}
	return m, nil
}

func delimiters(s string) (Delimiters, error) {
	// "MSH" F C R E S F ...  (v2.5.1: exactly four encoding characters)
	if len(s) < 8 {
		return Delimiters{}, fmt.Errorf("%w: header too short", ErrEncodingCharacters)
	}
	d := Delimiters{Field: s[3], Component: s[4], Repetition: s[5], Escape: s[6], Subcomponent: s[7]}
	if len(s) > 8 && s[8] != d.Field && s[8] != '\r' && s[8] != '\n' {
		return Delimiters{}, fmt.Errorf("%w: MSH-2 has more than four characters", ErrEncodingCharacters)
	}
	all := []byte{d.Field, d.Component, d.Repetition, d.Escape, d.Subcomponent}
	for i, c := range all {
		if c <= ' ' || c >= 0x7f || c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' {
			return Delimiters{}, fmt.Errorf("%w: %q is not a valid delimiter", ErrEncodingCharacters, c)
		}
		for _, o := range all[:i] {
			if o == c {
				return Delimiters{}, fmt.Errorf("%w: delimiter %q used twice", ErrEncodingCharacters, c)
			}
		}
	}
	return d, nil
}

func validSegmentID(id string) bool {
	if len(id) != 3 {
		return false
	}
	for i := 0; i < 3; i++ {
		c := id[i]
		if !(c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func parseSegment(line string, d *Delimiters, first bool, lim Limits) (Segment, error) {
	fs := string(d.Field)
	if len(line) < 3 || !validSegmentID(line[:3]) || len(line) > 3 && line[3] != d.Field {
		return Segment{}, fmt.Errorf("%w: %q is not a segment id followed by %q", ErrSegment, prefix(line, 8), fs)
	}
	id := line[:3]
	if id == "MSH" != first {
		if first {
			return Segment{}, ErrNoMSH
		}
		return Segment{}, fmt.Errorf("%w: a second MSH segment", ErrSegment)
	}
	var fields []string
	if id == "MSH" {
		// MSH-1 is the separator itself; MSH-2 the encoding characters.
		rest := ""
		if len(line) > 9 {
			rest = line[9:]
		}
		fields = []string{"MSH", fs, line[4:8]}
		if len(line) > 8 {
			if n := strings.Count(rest, fs) + 3; n > lim.MaxFields {
				return Segment{}, fmt.Errorf("%w: more than %d fields", ErrTooLarge, lim.MaxFields)
			}
			if len(line) > 9 || line[8] == d.Field {
				fields = append(fields, strings.Split(rest, fs)...)
			}
		}
	} else {
		if n := strings.Count(line, fs) + 1; n > lim.MaxFields {
			return Segment{}, fmt.Errorf("%w: more than %d fields", ErrTooLarge, lim.MaxFields)
		}
		fields = strings.Split(line, fs)
	}
	return Segment{Fields: fields, d: d}, nil
}

func prefix(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
