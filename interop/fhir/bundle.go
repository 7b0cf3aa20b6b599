package fhir

import (
	"encoding/json"
	"fmt"
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
		raw, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("fhir: bundle entry: %w", err)
		}
		var head struct {
			ResourceType string `json:"resourceType"`
			ID           string `json:"id"`
		}
		if err := json.Unmarshal(raw, &head); err != nil || head.ResourceType == "" {
			return fmt.Errorf("fhir: bundle entry is not a resource: %v", err)
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
