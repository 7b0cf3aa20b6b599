package hl7

import (
	"strings"
	"time"
)

// Field is one field to write: its repetitions, each a list of components as plain text
// (the Builder escapes them). The zero Field is an empty field.
type Field struct{ reps [][]string }

// F makes a Field of one repetition from its components: F("8867-4", "Heart rate", "LN")
// writes 8867-4^Heart rate^LN.
func F(components ...string) Field { return Field{reps: [][]string{components}} }

// Reps makes a repeated field from the first repetition of each of fs (joined by ~).
func Reps(fs ...Field) Field {
	var r Field
	for _, f := range fs {
		r.reps = append(r.reps, f.reps...)
	}
	return r
}

// Builder writes a message with the Standard delimiters. The zero value is ready to use.
type Builder struct {
	b strings.Builder
}

// MSH writes the header segment: fields are MSH-3 onwards (MSH-1 and MSH-2 are written by
// the Builder).
func (b *Builder) MSH(fields ...Field) {
	b.b.WriteString("MSH|^~\\&")
	b.fields(fields)
}

// Segment writes one segment: its id and fields 1 onwards.
func (b *Builder) Segment(id string, fields ...Field) {
	b.b.WriteString(id)
	b.fields(fields)
}

func (b *Builder) fields(fields []Field) {
	// trailing empty fields are not written
	n := len(fields)
	for n > 0 && empty(fields[n-1]) {
		n--
	}
	for _, f := range fields[:n] {
		b.b.WriteByte('|')
		for r, comps := range f.reps {
			if r > 0 {
				b.b.WriteByte('~')
			}
			m := len(comps)
			for m > 0 && comps[m-1] == "" {
				m--
			}
			for i, c := range comps[:m] {
				if i > 0 {
					b.b.WriteByte('^')
				}
				b.b.WriteString(Escape(c, Standard))
			}
		}
	}
	b.b.WriteByte('\r')
}

func empty(f Field) bool {
	for _, comps := range f.reps {
		for _, c := range comps {
			if c != "" {
				return false
			}
		}
	}
	return true
}

// Bytes returns the message written so far (segments terminated by CR).
func (b *Builder) Bytes() []byte { return []byte(b.b.String()) }

// String returns the message written so far.
func (b *Builder) String() string { return b.b.String() }

// FormatDTM formats t as an HL7 DTM in UTC with a zone offset, to the second
// (YYYYMMDDHHMMSS+0000), or to the millisecond when t has a fraction.
func FormatDTM(t time.Time) string {
	t = t.UTC()
	if t.Nanosecond()/int(time.Millisecond) != 0 {
		return t.Format("20060102150405.000") + "+0000"
	}
	return t.Format("20060102150405") + "+0000"
}
