package hl7

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// ErrDate: a date/time field is not an HL7 DT or DTM value.
var ErrDate = errors.New("hl7: bad date/time")

// ParseDTM parses an HL7 DTM value YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]. Without an
// offset the time is read in loc (the sender's time zone, by agreement; UTC when nil). The
// precision it was sent with is returned as the number of digits before any fraction
// (4 = year … 14 = second).
func ParseDTM(s string, loc *time.Location) (time.Time, int, error) {
	if loc == nil {
		loc = time.UTC
	}
	bad := func(why string) (time.Time, int, error) {
		return time.Time{}, 0, fmt.Errorf("%w: %q: %s", ErrDate, s, why)
	}
	body, zone := s, ""
	for i := 0; i < len(s); i++ {
		if s[i] == '+' || s[i] == '-' {
			body, zone = s[:i], s[i:]
			break
		}
	}
	frac := ""
	for i := 0; i < len(body); i++ {
		if body[i] == '.' {
			body, frac = body[:i], body[i+1:]
			break
		}
	}
	n := len(body)
	if n != 4 && n != 6 && n != 8 && n != 10 && n != 12 && n != 14 {
		return bad("wrong number of digits")
	}
	if !digits(body) {
		return bad("not digits")
	}
	if frac != "" && (n != 14 || len(frac) > 4 || !digits(frac)) {
		return bad("bad fraction of a second")
	}
	part := func(i, def int) int {
		if len(body) < i+2 {
			return def
		}
		v, _ := strconv.Atoi(body[i : i+2])
		return v
	}
	year, _ := strconv.Atoi(body[:4])
	mon, day, hh, mm, ss := part(4, 1), part(6, 1), part(8, 0), part(10, 0), part(12, 0)
	if mon < 1 || mon > 12 || day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 59 {
		return bad("out of range")
	}
	ns := 0
	if frac != "" {
		f, _ := strconv.Atoi(frac)
		for i := len(frac); i < 9; i++ {
			f *= 10
		}
		ns = f
	}
	if zone != "" {
		if len(zone) != 5 || !digits(zone[1:]) {
			return bad("bad zone offset")
		}
		zh, _ := strconv.Atoi(zone[1:3])
		zm, _ := strconv.Atoi(zone[3:5])
		if zh > 14 || zm > 59 {
			return bad("bad zone offset")
		}
		off := zh*3600 + zm*60
		if zone[0] == '-' {
			off = -off
		}
		loc = time.FixedZone("", off)
	}
	t := time.Date(year, time.Month(mon), day, hh, mm, ss, ns, loc)
	if t.Day() != day { // 20240231
		return bad("no such day")
	}
	return t, n, nil
}

func digits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
