package hl7

import (
	"strings"
)

// Unescape replaces the escape sequences of HL7 v2.5.1 §2.7 in s: \F\ \S\ \T\ \R\ \E\ become
// the delimiters, \Xhh…\ the bytes it spells in hexadecimal, \.br\ a line break; the
// formatting sequences (\H\, \N\, \.sp\ …) are dropped; anything else (an unterminated or
// unknown sequence) is kept as it was.
func Unescape(s string, d Delimiters) string {
	if strings.IndexByte(s, d.Escape) < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != d.Escape {
			b.WriteByte(c)
			continue
		}
		j := strings.IndexByte(s[i+1:], d.Escape)
		if j < 0 {
			b.WriteString(s[i:])
			break
		}
		seq := s[i+1 : i+1+j]
		switch {
		case seq == "F":
			b.WriteByte(d.Field)
		case seq == "S":
			b.WriteByte(d.Component)
		case seq == "T":
			b.WriteByte(d.Subcomponent)
		case seq == "R":
			b.WriteByte(d.Repetition)
		case seq == "E":
			b.WriteByte(d.Escape)
		case seq == ".br":
			b.WriteByte('\n')
		case seq == "H" || seq == "N" || strings.HasPrefix(seq, ".") && len(seq) > 1:
			// formatting: dropped
		case len(seq) > 1 && seq[0] == 'X' && len(seq)%2 == 1 && isHex(seq[1:]):
			for k := 1; k < len(seq); k += 2 {
				b.WriteByte(unhex(seq[k])<<4 | unhex(seq[k+1]))
			}
		default:
			b.WriteString(s[i : i+j+2])
		}
		i += j + 1
	}
	return b.String()
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'F' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

const hexDigits = "0123456789ABCDEF"

// Escape is the inverse of Unescape for text: the delimiters become \F\ \S\ \T\ \R\ \E\, and
// CR, LF and the other control characters become \Xhh\, so a value can never end a segment
// or a field early.
func Escape(s string, d Delimiters) string {
	clean := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < ' ' || c == 0x7f || c == d.Field || c == d.Component || c == d.Repetition || c == d.Escape || c == d.Subcomponent {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		c := s[i]
		var code string
		switch c {
		case d.Field:
			code = "F"
		case d.Component:
			code = "S"
		case d.Subcomponent:
			code = "T"
		case d.Repetition:
			code = "R"
		case d.Escape:
			code = "E"
		default:
			if c < ' ' || c == 0x7f {
				code = "X" + string([]byte{hexDigits[c>>4], hexDigits[c&0xf]})
			}
		}
		if code == "" {
			b.WriteByte(c)
			continue
		}
		b.WriteByte(d.Escape)
		b.WriteString(code)
		b.WriteByte(d.Escape)
	}
	return b.String()
}
