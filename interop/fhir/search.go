package fhir

import (
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	m "github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// ParamType is a FHIR search parameter type.
type ParamType string

// The search parameter types Vigil supports.
const (
	TypeToken     ParamType = "token"
	TypeReference ParamType = "reference"
	TypeDate      ParamType = "date"
)

// ParamDef defines one search parameter of a resource type.
type ParamDef struct {
	Name    string
	Type    ParamType
	Targets []string // reference: the resource types it may point to (the first is implied by a bare id)
	Doc     string
}

// SearchParams are the search parameters Vigil supports, per resource type. The
// CapabilityStatement is generated from them, so it cannot disagree with the parser.
var SearchParams = map[string][]ParamDef{
	"Patient": {{Name: "_id", Type: TypeToken, Doc: "logical id"},
		{Name: "identifier", Type: TypeToken, Doc: "MRN (system|value) or Vigil's patient id"}},
	"Encounter": {{Name: "_id", Type: TypeToken, Doc: "logical id"},
		{Name: "patient", Type: TypeReference, Targets: []string{"Patient"}, Doc: "the admitted patient"}},
	"Device": {{Name: "_id", Type: TypeToken, Doc: "logical id"},
		{Name: "identifier", Type: TypeToken, Doc: "serial number or key fingerprint"},
		{Name: "patient", Type: TypeReference, Targets: []string{"Patient"}, Doc: "the patient the device is attached to"}},
	"Observation": {{Name: "_id", Type: TypeToken, Doc: "logical id"},
		{Name: "patient", Type: TypeReference, Targets: []string{"Patient"}, Doc: "the patient"},
		{Name: "subject", Type: TypeReference, Targets: []string{"Patient"}, Doc: "the patient"},
		{Name: "code", Type: TypeToken, Doc: "LOINC code (http://loinc.org|8867-4)"},
		{Name: "category", Type: TypeToken, Doc: "vital-signs, survey, exam, laboratory"},
		{Name: "date", Type: TypeDate, Doc: "effective time"},
		{Name: "device", Type: TypeReference, Targets: []string{"Device"}, Doc: "the measuring device"}},
	"Flag": {{Name: "_id", Type: TypeToken, Doc: "logical id"},
		{Name: "patient", Type: TypeReference, Targets: []string{"Patient"}, Doc: "the patient"},
		{Name: "date", Type: TypeDate, Doc: "period"}},
	"Provenance": {{Name: "_id", Type: TypeToken, Doc: "logical id"},
		{Name: "target", Type: TypeReference, Targets: []string{"Observation"}, Doc: "an observation the upload carried"},
		{Name: "patient", Type: TypeReference, Targets: []string{"Patient"}, Doc: "the patient"}},
	"AuditEvent": {{Name: "_id", Type: TypeToken, Doc: "logical id"},
		{Name: "patient", Type: TypeReference, Targets: []string{"Patient"}, Doc: "the patient concerned"},
		{Name: "date", Type: TypeDate, Doc: "recorded time"},
		{Name: "action", Type: TypeToken, Doc: "C R U D E"}},
}

// sortable and includes are the _sort keys and _include values per resource type.
var (
	sortable = map[string][]string{"Observation": {"date"}, "AuditEvent": {"date"}, "Flag": {"date"}}
	includes = map[string][]string{"Observation": {"Observation:device", "Observation:patient", "Observation:subject"},
		"Provenance": {"Provenance:target"}, "Encounter": {"Encounter:patient"}}
)

// Search limits.
const (
	DefaultCount   = 50
	MaxCount       = 1000
	maxValues      = 50  // values of one parameter (OR) and repetitions (AND), together
	maxValueLength = 256 // one value
	maxParams      = 40  // parameters of one query
)

// Handling is the client's choice of how unknown parameters are treated (the Prefer
// header's handling=strict|lenient; FHIR's default is lenient).
type Handling int

// Handlings.
const (
	Lenient Handling = iota // unknown parameters are ignored and reported (Query.Ignored)
	Strict                  // an unknown parameter is an error
)

// ParsePrefer reads handling=strict|lenient from a Prefer header value; anything else is
// Lenient.
func ParsePrefer(header string) Handling {
	for _, part := range strings.Split(header, ",") {
		for _, kv := range strings.Split(part, ";") {
			k, v, _ := strings.Cut(strings.TrimSpace(kv), "=")
			if strings.EqualFold(k, "handling") && strings.EqualFold(strings.Trim(v, `" `), "strict") {
				return Strict
			}
		}
	}
	return Lenient
}

// Token is a token value: system|code, |code (no system), or code (any system).
type Token struct {
	System    string
	Code      string
	AnySystem bool // no "|" was given
}

// Ref is a reference value: a resource type and id.
type Ref struct{ Type, ID string }

// DateBound is a date value with its prefix: the instant range [Start, End) its precision
// covers.
type DateBound struct {
	Prefix     string // eq ne gt lt ge le sa eb ap
	Start, End time.Time
}

// Value is one value of a parameter; exactly one field is set, by the parameter's type.
type Value struct {
	Token *Token
	Ref   *Ref
	Date  *DateBound
}

// Filter is one occurrence of a parameter: its values are alternatives (OR); the filters
// of a Query all apply (AND).
type Filter struct {
	Param    string
	Modifier string // "" or "missing" (token and reference), "not" (token)
	Missing  bool   // for :missing=true
	Values   []Value
	// Key and Raw are the parameter and value as given (for paging links).
	Key, Raw string
}

// SortKey is one _sort key.
type SortKey struct {
	Param string
	Desc  bool
}

// Query is a parsed search.
type Query struct {
	Resource string
	Filters  []Filter
	Count    int
	Sort     []SortKey
	Include  []string // "Observation:device"
	// Cursor is the opaque paging position (_cursor) of a next-page link; "" for the first
	// page. The server makes and checks it.
	Cursor string
	// Ignored are the parameters a Lenient search ignored (reported to the client in an
	// OperationOutcome of the result Bundle).
	Ignored []string
}

// SearchError is a search Vigil refuses; Problems say why, with the stable codes of
// docs/api.md.
type SearchError struct{ Problems []Problem }

func (e *SearchError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.Code + ": " + p.Message
	}
	return "fhir search: " + strings.Join(parts, "; ")
}

// Search error codes.
const (
	CodeUnknownResource  = "unknown_resource_type"
	CodeUnknownParameter = "unknown_search_parameter"
	CodeInvalidValue     = "invalid_search_value"
	CodeInvalidDate      = "invalid_date"
	CodeInvalidCount     = "invalid_count"
	CodeUnsupportedSort  = "unsupported_sort"
	CodeUnsupportedInc   = "unsupported_include"
	CodeUnsupportedMod   = "unsupported_modifier"
	CodeTooComplex       = "search_too_complex"
)

var (
	idRE       = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)
	dateRE     = regexp.MustCompile(`^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$`)
	cursorRE   = regexp.MustCompile(`^[A-Za-z0-9_\-]{1,256}$`)
	datePrefix = []string{"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"}
)

// ParseSearch parses the query of a search on resource. Malformed values, bad _count,
// _sort or _include are errors whatever the handling; unknown parameters are errors under
// Strict and ignored (listed in Query.Ignored) under Lenient. _format=json and the
// application/fhir+json forms are accepted and ignored.
func ParseSearch(resource string, q url.Values, h Handling) (Query, error) {
	defs, ok := SearchParams[resource]
	if !ok {
		return Query{}, &SearchError{[]Problem{{Code: CodeUnknownResource, Type: "not-supported", Message: "resource type not supported: " + clip(resource)}}}
	}
	qr := Query{Resource: resource, Count: DefaultCount}
	var probs []Problem
	bad := func(code, typ, expr, format string, a ...any) {
		probs = append(probs, Problem{Code: code, Type: typ, Expression: clip(expr), Message: fmt.Sprintf(format, a...)})
	}
	if len(q) > maxParams {
		return Query{}, &SearchError{[]Problem{{Code: CodeTooComplex, Type: "too-costly", Message: fmt.Sprintf("more than %d parameters", maxParams)}}}
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		raws := q[key]
		if len(raws) > maxValues {
			bad(CodeTooComplex, "too-costly", key, "parameter repeated more than %d times", maxValues)
			continue
		}
		name, mod, _ := strings.Cut(key, ":")
		switch name {
		case "_count":
			if mod != "" || len(raws) != 1 {
				bad(CodeInvalidCount, "invalid", key, "_count takes one value")
				continue
			}
			n, err := strconv.Atoi(raws[0])
			if err != nil || n < 0 || n > MaxCount {
				bad(CodeInvalidCount, "invalid", key, "_count must be an integer from 0 to %d", MaxCount)
				continue
			}
			qr.Count = n
			continue
		case "_sort":
			for _, raw := range raws {
				for _, k := range strings.Split(raw, ",") {
					desc := strings.HasPrefix(k, "-")
					k = strings.TrimPrefix(k, "-")
					if !contains(sortable[resource], k) {
						bad(CodeUnsupportedSort, "not-supported", "_sort", "cannot sort %s by %q", resource, clip(k))
						continue
					}
					qr.Sort = append(qr.Sort, SortKey{Param: k, Desc: desc})
				}
			}
			continue
		case "_include":
			if mod != "" {
				bad(CodeUnsupportedMod, "not-supported", key, "_include:%s is not supported", clip(mod))
				continue
			}
			for _, raw := range raws {
				if !contains(includes[resource], raw) {
					bad(CodeUnsupportedInc, "not-supported", "_include", "_include=%s is not supported", clip(raw))
					continue
				}
				qr.Include = append(qr.Include, raw)
			}
			continue
		case "_cursor":
			if mod != "" || len(raws) != 1 || !cursorRE.MatchString(raws[0]) {
				bad(CodeInvalidValue, "invalid", key, "_cursor is an opaque token from a next link")
				continue
			}
			qr.Cursor = raws[0]
			continue
		case "_format":
			for _, raw := range raws {
				if raw != "json" && raw != "application/json" && raw != "application/fhir+json" {
					bad(CodeInvalidValue, "not-supported", key, "only JSON is supported")
				}
			}
			continue
		}
		def, known := findDef(defs, name)
		if !known {
			if h == Strict {
				bad(CodeUnknownParameter, "not-supported", key, "unknown search parameter %q for %s", clip(key), resource)
			} else {
				qr.Ignored = append(qr.Ignored, clip(key))
			}
			continue
		}
		switch {
		case mod == "":
		case mod == "missing" && def.Type != TypeDate:
		case mod == "not" && def.Type == TypeToken:
		case def.Type == TypeReference && contains(def.Targets, mod):
			// patient:Patient=123
		default:
			bad(CodeUnsupportedMod, "not-supported", key, "modifier :%s is not supported on %s", clip(mod), name)
			continue
		}
		for _, raw := range raws {
			f := Filter{Param: name, Modifier: mod, Key: key, Raw: raw}
			if def.Type == TypeReference && mod != "missing" {
				f.Modifier = ""
			}
			if mod == "missing" {
				if raw != "true" && raw != "false" {
					bad(CodeInvalidValue, "invalid", key, ":missing takes true or false")
					continue
				}
				f.Missing = raw == "true"
				qr.Filters = append(qr.Filters, f)
				continue
			}
			vals := splitValues(raw)
			if len(vals) > maxValues {
				bad(CodeTooComplex, "too-costly", key, "more than %d values", maxValues)
				continue
			}
			for _, v := range vals {
				if len(v) == 0 || len(v) > maxValueLength {
					bad(CodeInvalidValue, "invalid", key, "empty value or longer than %d bytes", maxValueLength)
					continue
				}
				val, p := parseValue(def, mod, v)
				if p != nil {
					p.Expression = clip(key)
					probs = append(probs, *p)
					continue
				}
				f.Values = append(f.Values, val)
			}
			if len(f.Values) > 0 {
				qr.Filters = append(qr.Filters, f)
			}
		}
	}
	if len(probs) > 0 {
		return Query{}, &SearchError{probs}
	}
	return qr, nil
}

// Encode returns the query string of q (filters as given, then _count, _sort, _include)
// with the given paging cursor: the self link of a page (cursor = q.Cursor) or its next
// link. Parameters a lenient search ignored are left out.
func (q Query) Encode(cursor string) string {
	v := url.Values{}
	for _, f := range q.Filters {
		v.Add(f.Key, f.Raw)
	}
	v.Set("_count", strconv.Itoa(q.Count))
	if len(q.Sort) > 0 {
		keys := make([]string, len(q.Sort))
		for i, s := range q.Sort {
			keys[i] = s.Param
			if s.Desc {
				keys[i] = "-" + s.Param
			}
		}
		v.Set("_sort", strings.Join(keys, ","))
	}
	for _, inc := range q.Include {
		v.Add("_include", inc)
	}
	if cursor != "" {
		v.Set("_cursor", cursor)
	}
	return v.Encode()
}

func parseValue(def ParamDef, mod, v string) (Value, *Problem) {
	switch def.Type {
	case TypeToken:
		sys, code, hasBar := cutUnescaped(v, '|')
		t := Token{System: unescape(sys), Code: unescape(code), AnySystem: !hasBar}
		if !hasBar {
			t.Code, t.System = unescape(v), ""
		}
		if t.Code == "" {
			return Value{}, &Problem{Code: CodeInvalidValue, Type: "invalid", Message: "a token needs a code"}
		}
		return Value{Token: &t}, nil
	case TypeReference:
		typ, id, hasSlash := strings.Cut(v, "/")
		if !hasSlash {
			typ, id = def.Targets[0], v
			if mod != "" {
				typ = mod
			}
		}
		if !contains(def.Targets, typ) || !idRE.MatchString(id) {
			return Value{}, &Problem{Code: CodeInvalidValue, Type: "invalid", Message: fmt.Sprintf("%s takes a reference to %s: [type/]id", def.Name, strings.Join(def.Targets, " or "))}
		}
		return Value{Ref: &Ref{Type: typ, ID: id}}, nil
	case TypeDate:
		d, err := parseDate(v)
		if err != nil {
			return Value{}, &Problem{Code: CodeInvalidDate, Type: "invalid", Message: err.Error()}
		}
		return Value{Date: &d}, nil
	}
	return Value{}, &Problem{Code: CodeInvalidValue, Type: "invalid", Message: "unsupported parameter type"}
}

// parseDate parses [prefix]YYYY[-MM[-DD[Thh:mm[:ss[.fff]][Z|±hh:mm]]]]. A time must carry a
// zone (Vigil has no server-local time to assume).
func parseDate(v string) (DateBound, error) {
	d := DateBound{Prefix: "eq"}
	if len(v) > 2 && v[0] >= 'a' && v[0] <= 'z' {
		if !contains(datePrefix, v[:2]) {
			return d, fmt.Errorf("unknown date prefix %q", clip(v[:2]))
		}
		d.Prefix, v = v[:2], v[2:]
	}
	g := dateRE.FindStringSubmatch(v)
	if g == nil {
		return d, fmt.Errorf("%q is not a FHIR date or dateTime", clip(v))
	}
	num := func(s string, def int) int {
		if s == "" {
			return def
		}
		n, _ := strconv.Atoi(s)
		return n
	}
	year, mon, day := num(g[1], 0), num(g[2], 1), num(g[3], 1)
	hh, mm, ss := num(g[4], 0), num(g[5], 0), num(g[6], 0)
	if mon < 1 || mon > 12 || day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 59 {
		return d, fmt.Errorf("%q is out of range", clip(v))
	}
	if g[4] != "" && g[8] == "" {
		return d, fmt.Errorf("%q: a time needs a zone (Z or ±hh:mm)", clip(v))
	}
	loc := time.UTC
	if z := g[8]; z != "" && z != "Z" {
		zh, zm := num(z[1:3], 0), num(z[4:6], 0)
		if zh > 14 || zm > 59 {
			return d, fmt.Errorf("%q: bad zone", clip(v))
		}
		off := zh*3600 + zm*60
		if z[0] == '-' {
			off = -off
		}
		loc = time.FixedZone("", off)
	}
	ns := 0
	if f := g[7]; f != "" {
		ns = num((f[1:] + "000000000")[:9], 0)
	}
	start := time.Date(year, time.Month(mon), day, hh, mm, ss, ns, loc)
	if start.Day() != day {
		return d, fmt.Errorf("%q: no such day", clip(v))
	}
	var end time.Time
	switch {
	case g[2] == "":
		end = start.AddDate(1, 0, 0)
	case g[3] == "":
		end = start.AddDate(0, 1, 0)
	case g[4] == "":
		end = start.AddDate(0, 0, 1)
	case g[6] == "":
		end = start.Add(time.Minute)
	case g[7] == "":
		end = start.Add(time.Second)
	default:
		end = start.Add(time.Nanosecond)
	}
	d.Start, d.End = start.UTC(), end.UTC()
	return d, nil
}

func findDef(defs []ParamDef, name string) (ParamDef, bool) {
	for _, d := range defs {
		if d.Name == name {
			return d, true
		}
	}
	return ParamDef{}, false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// splitValues splits a parameter value on commas not escaped by a backslash.
func splitValues(v string) []string {
	var out []string
	start := 0
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '\\':
			i++
		case ',':
			out = append(out, v[start:i])
			start = i + 1
		}
	}
	return append(out, v[start:])
}

// cutUnescaped cuts v at the first sep not escaped by a backslash.
func cutUnescaped(v string, sep byte) (string, string, bool) {
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '\\':
			i++
		case sep:
			return v[:i], v[i+1:], true
		}
	}
	return v, "", false
}

func unescape(v string) string {
	if !strings.Contains(v, `\`) {
		return v
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == '\\' && i+1 < len(v) {
			i++
		}
		b.WriteByte(v[i])
	}
	return b.String()
}

// clip bounds text echoed back to the client.
func clip(s string) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// RenderCapabilityStatement renders the server's CapabilityStatement (GET /fhir/R4/metadata):
// FHIR 4.0.1, JSON, read and search-type on each resource type with its search parameters,
// _include values and the vital-signs profiles.
func RenderCapabilityStatement(date time.Time, version string) m.CapabilityStatement {
	types := make([]string, 0, len(SearchParams))
	for t := range SearchParams {
		types = append(types, t)
	}
	sort.Strings(types)
	rest := m.CapabilityStatementRest{Mode: m.RestfulCapabilityModeServer,
		Documentation: ptr("Read and search; unknown search parameters follow the Prefer: handling header (lenient by default). Errors are OperationOutcomes with Vigil's error codes.")}
	for _, t := range types {
		var rt m.ResourceType
		if err := rt.UnmarshalJSON([]byte(strconv.Quote(t))); err != nil {
			continue
		}
		r := m.CapabilityStatementRestResource{Type: rt,
			Interaction:   []m.CapabilityStatementRestResourceInteraction{{Code: m.TypeRestfulInteractionRead}, {Code: m.TypeRestfulInteractionSearchType}},
			SearchInclude: includes[t]}
		if t == "Observation" {
			r.SupportedProfile = []string{VitalSignsProf, BPProf, "http://hl7.org/fhir/StructureDefinition/heartrate",
				"http://hl7.org/fhir/StructureDefinition/resprate", "http://hl7.org/fhir/StructureDefinition/oxygensat",
				"http://hl7.org/fhir/StructureDefinition/bodytemp", "http://hl7.org/fhir/StructureDefinition/bodyweight"}
		}
		for _, p := range SearchParams[t] {
			var st m.SearchParamType
			_ = st.UnmarshalJSON([]byte(strconv.Quote(string(p.Type))))
			r.SearchParam = append(r.SearchParam, m.CapabilityStatementRestResourceSearchParam{Name: p.Name, Type: st, Documentation: nilIfEmpty(p.Doc)})
		}
		rest.Resource = append(rest.Resource, r)
	}
	return m.CapabilityStatement{Status: m.PublicationStatusActive, Date: date.UTC().Format("2006-01-02"), Kind: m.CapabilityStatementKindInstance,
		Name: ptr("Vigil"), Title: ptr("Vigil FHIR R4 server"), Publisher: ptr("Vigil"),
		Software:       &m.CapabilityStatementSoftware{Name: "Vigil", Version: nilIfEmpty(version)},
		Implementation: &m.CapabilityStatementImplementation{Description: "Vigil FHIR R4 API (/fhir/R4)"},
		FhirVersion:    m.FHIRVersion4_0_1, Format: []string{"json", "application/fhir+json"}, Rest: []m.CapabilityStatementRest{rest}}
}
