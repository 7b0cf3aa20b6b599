package api

import (
	"net/url"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/interop/fhir"
)

// Observation ids and paging cursors round-trip; anything else is not one.
// Verifies: REQ-INT-024
func TestIDsAndCursors(t *testing.T) {
	pid := uuid.Must(uuid.NewV7())
	at := time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC)
	for _, code := range []string{"8867-4", groupBP, groupNEWS2} {
		id := ObservationID(pid, code, at)
		if len(id) > 64 {
			t.Errorf("ObservationID(%s) = %q: longer than FHIR's 64", code, id)
		}
		p, c, tt, ok := parseObservationID(id)
		if !ok || p != pid || c != code || !tt.Equal(at) {
			t.Errorf("parseObservationID(%q) = %v %q %v %v", id, p, c, tt, ok)
		}
	}
	for _, bad := range []string{"", "x", "a.b.c", pid.String() + ".8867-4.1", "zz" + ObservationID(pid, "8867-4", at)[2:]} {
		if _, _, _, ok := parseObservationID(bad); ok {
			t.Errorf("parseObservationID(%q) accepted", bad)
		}
	}
	k := cursorKey{at, pid, groupBP}
	got, ok := decodeCursor(k.encode())
	if !ok || got != k {
		t.Errorf("decodeCursor(encode(%v)) = %v %v", k, got, ok)
	}
	if _, ok := decodeCursor("!!"); ok {
		t.Error("decodeCursor(!!) accepted")
	}
	later := cursorKey{at.Add(time.Microsecond), pid, "8867-4"}
	if !k.less(later) || later.less(k) {
		t.Error("cursor order is not by time first")
	}
}

// Code and category filters select the observation groups.
// Verifies: REQ-INT-020
func TestGroups(t *testing.T) {
	q := func(raw string) fhir.Query {
		v, _ := url.ParseQuery(raw)
		qq, err := fhir.ParseSearch("Observation", v, fhir.Strict)
		if err != nil {
			t.Fatal(err)
		}
		return qq
	}
	cases := map[string][]string{
		"code=http://loinc.org|8867-4":       {"8867-4"},
		"code=85354-9":                       {groupBP},
		"code=8480-6":                        {groupBP},
		"code=1104051000000101":              {groupNEWS2},
		"category=survey":                    {groupNEWS2},
		"code=http://snomed.info/sct|8867-4": {},
		"code=8867-4&category=survey":        {},
	}
	for raw, want := range cases {
		got := groups(q(raw))
		if len(got) != len(want) {
			t.Errorf("groups(%s) = %v, want %v", raw, got, want)
			continue
		}
		for _, w := range want {
			if !got[w] {
				t.Errorf("groups(%s) = %v, want %v", raw, got, want)
			}
		}
	}
	if g := groups(q("category=vital-signs")); !g[groupBP] || !g["8867-4"] || g[groupNEWS2] || g["80288-4"] {
		t.Errorf("groups(category=vital-signs) = %v", g)
	}
	from, to, empty := dateRange(q("date=ge2026-01-02&date=lt2026-01-03"), "date")
	if empty || !from.Equal(time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)) || !to.Equal(time.Date(2026, 1, 3, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("dateRange = %v %v %v", from, to, empty)
	}
	if _, _, empty := dateRange(q("date=lt2026-01-01&date=gt2026-02-01"), "date"); !empty {
		t.Error("disjoint date range not empty")
	}
}
