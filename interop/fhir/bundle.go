package fhir

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	m "github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// Page is one page of search results.
type Page struct {
	// Base is the FHIR base URL ("https://vigil.example/fhir/R4").
	Base  string
	Query Query
	// Matches are the rendered resources that matched; Included those _include added.
	Matches, Included []any
	// Next is the cursor of the next page; "" on the last page.
	Next string
	// Total is the number of matches of the whole search when known.
	Total *int
}

// RenderSearchBundle renders a page as a searchset Bundle: self and next links (the query
// as parsed, with its cursor), one entry per match (search mode match) and per included
// resource (include), and, when a lenient search ignored parameters, an OperationOutcome
// entry (mode outcome) naming them.
func RenderSearchBundle(p Page) (m.Bundle, error) {
	base := strings.TrimSuffix(p.Base, "/")
	self := base + "/" + p.Query.Resource + "?" + p.Query.Encode(p.Query.Cursor)
	b := m.Bundle{Type: m.BundleTypeSearchset, Total: p.Total, Link: []m.BundleLink{{Relation: "self", Url: self}}}
	if p.Next != "" {
		b.Link = append(b.Link, m.BundleLink{Relation: "next", Url: base + "/" + p.Query.Resource + "?" + p.Query.Encode(p.Next)})
	}
	add := func(r any, mode m.SearchEntryMode) error {
		raw, err := MarshalResource(r)
		if err != nil {
			return fmt.Errorf("fhir: bundle entry: %w", err)
		}
		head, err := headOf(r, raw)
		if err != nil {
			return err
		}
		e := m.BundleEntry{Resource: raw, Search: &m.BundleEntrySearch{Mode: &mode}}
		if head.ID != "" {
			e.FullUrl = ptr(base + "/" + head.ResourceType + "/" + head.ID)
		}
		b.Entry = append(b.Entry, e)
		return nil
	}
	for _, r := range p.Matches {
		if err := add(r, m.SearchEntryModeMatch); err != nil {
			return m.Bundle{}, err
		}
	}
	for _, r := range p.Included {
		if err := add(r, m.SearchEntryModeInclude); err != nil {
			return m.Bundle{}, err
		}
	}
	if len(p.Query.Ignored) > 0 {
		oo := RenderOperationOutcome("", Problem{Code: "search_parameters_ignored", Type: "informational", Severity: "information",
			Message: "ignored unknown search parameters: " + strings.Join(p.Query.Ignored, ", ")})
		if err := add(oo, m.SearchEntryModeOutcome); err != nil {
			return m.Bundle{}, err
		}
	}
	return b, nil
}

// MarshalResource writes a resource as JSON. A model type's own MarshalJSON output is taken
// as it is (json.Marshal would re-validate and re-compact it, the largest cost of a page of
// 1,000 resources).
func MarshalResource(r any) ([]byte, error) {
	if mj, ok := r.(json.Marshaler); ok {
		return mj.MarshalJSON()
	}
	return json.Marshal(r)
}

type resourceHead struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
}

// headOf returns a resource's type and id: the model struct's name and Id field, else read
// from its JSON.
func headOf(r any, raw []byte) (resourceHead, error) {
	v := reflect.ValueOf(r)
	if v.Kind() == reflect.Struct && v.Type().PkgPath() == reflect.TypeOf(m.Bundle{}).PkgPath() {
		h := resourceHead{ResourceType: v.Type().Name()}
		if f := v.FieldByName("Id"); f.IsValid() && f.Kind() == reflect.Pointer && !f.IsNil() {
			h.ID = f.Elem().String()
		}
		return h, nil
	}
	var h resourceHead
	if err := json.Unmarshal(raw, &h); err != nil || h.ResourceType == "" {
		return h, fmt.Errorf("fhir: bundle entry is not a resource: %v", err)
	}
	return h, nil
}

// MarshalBundle writes a Bundle as JSON, its entries' resources spliced in as they were
// rendered (not re-validated and re-compacted by encoding/json, as json.Marshal does with
// every json.RawMessage).
func MarshalBundle(b m.Bundle) ([]byte, error) {
	entries := b.Entry
	b.Entry = nil
	head, err := b.MarshalJSON()
	if err != nil || len(entries) == 0 {
		return head, err
	}
	if len(head) < 2 || head[len(head)-1] != '}' {
		return nil, fmt.Errorf("fhir: bundle JSON does not end with }")
	}
	size := len(head) + 16
	for _, e := range entries {
		size += len(e.Resource) + 96
	}
	out := make([]byte, 0, size)
	out = append(out, head[:len(head)-1]...)
	out = append(out, `,"entry":[`...)
	for i, e := range entries {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, '{')
		if e.FullUrl != nil {
			u, _ := json.Marshal(*e.FullUrl)
			out = append(out, `"fullUrl":`...)
			out = append(out, u...)
			out = append(out, ',')
		}
		out = append(out, `"resource":`...)
		out = append(out, e.Resource...)
		if e.Search != nil && e.Search.Mode != nil {
			out = append(out, `,"search":{"mode":"`...)
			out = append(out, e.Search.Mode.Code()...)
			out = append(out, `"}`...)
		}
		out = append(out, '}')
	}
	out = append(out, "]}"...)
	return out, nil
}
