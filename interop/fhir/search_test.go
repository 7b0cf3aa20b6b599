package fhir_test

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/interop/fhir"
	"github.com/vigilhealth/vigil/interop/fhir/fhirtest"
)

func parse(t *testing.T, resource, query string, h fhir.Handling) (fhir.Query, error) {
	t.Helper()
	q, err := url.ParseQuery(query)
	if err != nil {
		t.Fatalf("url.ParseQuery(%q) = %v", query, err)
	}
	return fhir.ParseSearch(resource, q, h)
}

// Verifies: REQ-INT-014
func TestParseSearchObservation(t *testing.T) {
	q, err := parse(t, "Observation", "patient=Patient/p1&code=http://loinc.org|8867-4,http://loinc.org|9279-1&date=ge2026-01-02&date=lt2026-01-02T12:00:00Z&_count=100&_sort=-date&_include=Observation:device", fhir.Strict)
	if err != nil {
		t.Fatalf("ParseSearch = %v", err)
	}
	if q.Count != 100 || len(q.Sort) != 1 || q.Sort[0] != (fhir.SortKey{Param: "date", Desc: true}) || len(q.Include) != 1 || q.Include[0] != "Observation:device" {
		t.Errorf("ParseSearch = %+v", q)
	}
	byParam := map[string][]fhir.Filter{}
	for _, f := range q.Filters {
		byParam[f.Param] = append(byParam[f.Param], f)
	}
	if f := byParam["patient"]; len(f) != 1 || *f[0].Values[0].Ref != (fhir.Ref{Type: "Patient", ID: "p1"}) {
		t.Errorf("patient filter = %+v", f)
	}
	if f := byParam["code"]; len(f) != 1 || len(f[0].Values) != 2 || *f[0].Values[1].Token != (fhir.Token{System: "http://loinc.org", Code: "9279-1"}) {
		t.Errorf("code filter = %+v", f)
	}
	d := byParam["date"]
	if len(d) != 2 {
		t.Fatalf("date filters = %+v, want two (AND)", d)
	}
	ge, lt := d[0].Values[0].Date, d[1].Values[0].Date
	if ge.Prefix != "ge" || !ge.Start.Equal(time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)) || !ge.End.Equal(time.Date(2026, 1, 3, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("ge date = %+v", ge)
	}
	if lt.Prefix != "lt" || !lt.Start.Equal(time.Date(2026, 1, 2, 12, 0, 0, 0, time.UTC)) || !lt.End.Equal(lt.Start.Add(time.Second)) {
		t.Errorf("lt date = %+v", lt)
	}
	// A bare id takes the parameter's target type; defaults apply.
	q, err = parse(t, "Observation", "patient=p1&code=8867-4", fhir.Strict)
	if err != nil || q.Count != fhir.DefaultCount || q.Filters[1].Values[0].Ref.Type != "Patient" || !q.Filters[0].Values[0].Token.AnySystem {
		t.Errorf("ParseSearch(bare values) = %+v, %v", q, err)
	}
	for _, c := range []struct {
		query string
		start time.Time
		end   time.Time
	}{
		{"date=2026", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"date=2026-02", time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)},
		{"date=2026-02-03T04:05%2B01:00", time.Date(2026, 2, 3, 3, 5, 0, 0, time.UTC), time.Date(2026, 2, 3, 3, 6, 0, 0, time.UTC)},
		{"date=2026-02-03T04:05:06.5Z", time.Date(2026, 2, 3, 4, 5, 6, 5e8, time.UTC), time.Date(2026, 2, 3, 4, 5, 6, 5e8+1, time.UTC)},
	} {
		q, err := parse(t, "Observation", c.query, fhir.Strict)
		if err != nil {
			t.Errorf("ParseSearch(%s) = %v", c.query, err)
			continue
		}
		if d := q.Filters[0].Values[0].Date; !d.Start.Equal(c.start) || !d.End.Equal(c.end) {
			t.Errorf("ParseSearch(%s) = [%v, %v), want [%v, %v)", c.query, d.Start, d.End, c.start, c.end)
		}
	}
}

// Verifies: REQ-INT-014
func TestParseSearchHandling(t *testing.T) {
	for _, c := range []struct {
		header string
		want   fhir.Handling
	}{{"handling=strict", fhir.Strict}, {"return=minimal, handling=strict", fhir.Strict}, {`handling="strict"`, fhir.Strict},
		{"handling=lenient", fhir.Lenient}, {"", fhir.Lenient}, {"respond-async", fhir.Lenient}} {
		if got := fhir.ParsePrefer(c.header); got != c.want {
			t.Errorf("ParsePrefer(%q) = %v, want %v", c.header, got, c.want)
		}
	}
	q, err := parse(t, "Observation", "patient=p1&foo=bar&_elements=id", fhir.Lenient)
	if err != nil || strings.Join(q.Ignored, ",") != "_elements,foo" || len(q.Filters) != 1 {
		t.Errorf("lenient ParseSearch = %+v, %v; want foo and _elements ignored", q, err)
	}
	_, err = parse(t, "Observation", "patient=p1&foo=bar", fhir.Strict)
	var se *fhir.SearchError
	if !errors.As(err, &se) || se.Problems[0].Code != fhir.CodeUnknownParameter || se.Problems[0].Expression != "foo" {
		t.Errorf("strict ParseSearch(foo) = %v, want unknown_search_parameter on foo", err)
	}
}

// Verifies: REQ-INT-014
func TestParseSearchRefusals(t *testing.T) {
	for _, c := range []struct {
		resource, query, code string
	}{
		{"Medication", "", fhir.CodeUnknownResource},
		{"Observation", "date=2026-13-01", fhir.CodeInvalidDate},
		{"Observation", "date=yesterday", fhir.CodeInvalidDate},
		{"Observation", "date=xx2026", fhir.CodeInvalidDate},
		{"Observation", "date=2026-02-30", fhir.CodeInvalidDate},
		{"Observation", "date=2026-02-03T04:05", fhir.CodeInvalidDate},
		{"Observation", "_count=-1", fhir.CodeInvalidCount},
		{"Observation", "_count=5000", fhir.CodeInvalidCount},
		{"Observation", "_count=ten", fhir.CodeInvalidCount},
		{"Observation", "_sort=code", fhir.CodeUnsupportedSort},
		{"Observation", "_include=Observation:performer", fhir.CodeUnsupportedInc},
		{"Observation", "_include:iterate=Observation:device", fhir.CodeUnsupportedMod},
		{"Observation", "patient=Device/d1", fhir.CodeInvalidValue},
		{"Observation", "patient=../etc/passwd", fhir.CodeInvalidValue},
		{"Observation", "code=", fhir.CodeInvalidValue},
		{"Observation", "code=http://loinc.org|", fhir.CodeInvalidValue},
		{"Observation", "code:text=heart", fhir.CodeUnsupportedMod},
		{"Observation", "date:missing=true", fhir.CodeUnsupportedMod},
		{"Patient", "identifier:missing=maybe", fhir.CodeInvalidValue},
		{"Observation", "code=" + strings.Repeat("x", 300), fhir.CodeInvalidValue},
		{"Observation", "code=" + strings.Repeat("a,", 60) + "a", fhir.CodeTooComplex},
		{"Observation", "_format=xml", fhir.CodeInvalidValue},
	} {
		_, err := parse(t, c.resource, c.query, fhir.Lenient)
		var se *fhir.SearchError
		if !errors.As(err, &se) || se.Problems[0].Code != c.code {
			t.Errorf("ParseSearch(%s?%s) = %v, want %s", c.resource, c.query, err, c.code)
		}
	}
	// Other resources' parameters.
	for _, ok := range []string{"Patient?identifier=urn:oid:1.2.3|MRN1", "Provenance?target=Observation/o1", "AuditEvent?patient=p1&date=ge2026-01-01",
		`Patient?identifier=a\,b`, "Observation?patient:Patient=p1", "Flag?patient=p1&_sort=-date"} {
		res, query, _ := strings.Cut(ok, "?")
		if _, err := parse(t, res, query, fhir.Strict); err != nil {
			t.Errorf("ParseSearch(%s) = %v", ok, err)
		}
	}
	q, _ := parse(t, "Patient", `identifier=a\,b|c`, fhir.Strict)
	if tok := q.Filters[0].Values[0].Token; tok.System != "a,b" || tok.Code != "c" {
		t.Errorf("escaped comma: %+v", tok)
	}
}

// FuzzParseSearch: the search parser faces the network; it must not panic, and what it
// accepts must be within its limits and well typed.
//
// Verifies: REQ-INT-014
func FuzzParseSearch(f *testing.F) {
	f.Add("Observation", "patient=p1&code=http://loinc.org|8867-4&date=ge2026-01-02T00:00:00Z&_count=10&_sort=-date&_include=Observation:device", true)
	f.Add("Patient", `identifier=a\,b|c&foo=1`, false)
	f.Add("AuditEvent", "date=2026-02&patient:missing=true", true)
	f.Fuzz(func(t *testing.T, resource, query string, strict bool) {
		q, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		h := fhir.Lenient
		if strict {
			h = fhir.Strict
		}
		res, err := fhir.ParseSearch(resource, q, h)
		if err != nil {
			var se *fhir.SearchError
			if !errors.As(err, &se) || len(se.Problems) == 0 {
				t.Fatalf("ParseSearch error %v is not a *SearchError with problems", err)
			}
			for _, p := range se.Problems {
				if p.Code == "" || len(p.Expression) > 70 {
					t.Fatalf("problem %+v", p)
				}
			}
			return
		}
		if res.Count < 0 || res.Count > fhir.MaxCount {
			t.Fatalf("Count = %d", res.Count)
		}
		for _, f := range res.Filters {
			for _, v := range f.Values {
				n := 0
				if v.Token != nil {
					n++
				}
				if v.Ref != nil {
					n++
				}
				if v.Date != nil {
					n++
					if !v.Date.End.After(v.Date.Start) {
						t.Fatalf("empty date range %+v", v.Date)
					}
				}
				if n != 1 {
					t.Fatalf("value %+v has %d kinds", v, n)
				}
			}
		}
		if strict && len(res.Ignored) > 0 {
			t.Fatalf("strict search ignored %v", res.Ignored)
		}
	})
}

// A search result page is a searchset Bundle with self and next links, match and include
// entries and, under lenient handling, an outcome naming the ignored parameters; it passes
// the external validator.
//
// Verifies: REQ-INT-014, REQ-INT-010
func TestSearchBundle(t *testing.T) {
	q, err := parse(t, "Observation", "patient=p1&code=http://loinc.org|8867-4&date=ge2026-01-02&_count=2&_sort=-date&_include=Observation:device&foo=1&_cursor=abc", fhir.Lenient)
	if err != nil {
		t.Fatal(err)
	}
	if q.Cursor != "abc" {
		t.Errorf("Cursor = %q, want abc", q.Cursor)
	}
	var matches []any
	for _, s := range samples()[:2] {
		o, _ := fhir.RenderObservation(s)
		matches = append(matches, o)
	}
	total := 7
	b, err := fhir.RenderSearchBundle(fhir.Page{Base: "https://vigil.example/fhir/R4/", Query: q, Matches: matches,
		Included: []any{fhir.RenderDevice(fhir.Device{ID: deviceID, Serial: "SN", Status: "active"})}, Next: "def", Total: &total})
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Link) != 2 || b.Link[0].Relation != "self" || b.Link[1].Relation != "next" {
		t.Fatalf("links = %+v", b.Link)
	}
	next, err := url.Parse(b.Link[1].Url)
	if err != nil || next.Path != "/fhir/R4/Observation" {
		t.Fatalf("next link = %q, %v", b.Link[1].Url, err)
	}
	// Following the next link parses to the same search, one page on.
	q2, err := fhir.ParseSearch("Observation", next.Query(), fhir.Strict)
	if err != nil || q2.Cursor != "def" || q2.Count != 2 || len(q2.Filters) != 3 || q2.Sort[0] != (fhir.SortKey{Param: "date", Desc: true}) || q2.Include[0] != "Observation:device" {
		t.Errorf("next link parses to %+v, %v", q2, err)
	}
	if strings.Contains(b.Link[0].Url, "foo") || !strings.Contains(b.Link[0].Url, "_cursor=abc") {
		t.Errorf("self link = %q", b.Link[0].Url)
	}
	if len(b.Entry) != 4 || *b.Entry[0].FullUrl != "https://vigil.example/fhir/R4/Observation/hr" || b.Entry[2].Search.Mode.Code() != "include" || b.Entry[3].Search.Mode.Code() != "outcome" {
		t.Errorf("entries = %+v", b.Entry)
	}
	if !strings.Contains(string(b.Entry[3].Resource), "foo") {
		t.Errorf("outcome entry = %s, want it to name foo", b.Entry[3].Resource)
	}
	fhirtest.Validate(t, b)
	if _, err := parse(t, "Observation", "_cursor=a/b", fhir.Lenient); err == nil {
		t.Errorf("ParseSearch(_cursor=a/b) accepted")
	}
}
