package server

import (
	"encoding/json"
	"strings"
	"testing"
)

// The strict JSON check faces the network: it never panics, accepts only valid JSON, refuses
// valid JSON only for a duplicate member or excessive nesting, and its member-name folding
// agrees with strings.EqualFold (the matching encoding/json uses).
// Verifies: REQ-FND-017
func FuzzCheckJSON(f *testing.F) {
	for _, s := range []string{`{"name":"a"}`, `{"name":"a","NAME":"b"}`, `{"a":[1,{"b":null}]} x`, `[[[[]]]]`,
		`{"ſ":1,"s":2}`, `{"K":1,"k":2}`, `"\u212a"`, ``, `{`, `{"a":1}{"a":1}`} {
		f.Add([]byte(s), "name", "NAME")
	}
	f.Fuzz(func(t *testing.T, b []byte, x, y string) {
		err := checkJSON(b)
		switch {
		case err == nil && !json.Valid(b):
			t.Fatalf("checkJSON(%q) = nil, want an error for invalid JSON", b)
		case err != nil && json.Valid(b) && !strings.Contains(err.Error(), "more than once") && !strings.Contains(err.Error(), "nested deeper"):
			t.Fatalf("checkJSON(%q) = %v for valid JSON, want nil or a duplicate/nesting refusal", b, err)
		}
		if (foldName(x) == foldName(y)) != strings.EqualFold(x, y) {
			t.Fatalf("foldName(%q) == foldName(%q) is %v, strings.EqualFold says %v", x, y, foldName(x) == foldName(y), strings.EqualFold(x, y))
		}
	})
}
