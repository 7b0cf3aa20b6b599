package fhir

import (
	"errors"
	"fmt"
	"strings"
)

// SMART on FHIR scopes (SMART App Launch 1.0 "context/Type.read", and the 2.0 forms
// "context/Type.rs" and ".r", ".s"), as Vigil grants them to API tokens: read only, the
// resource types Vigil serves or "*". A token's scopes narrow what its roles allow by the
// policy; they never widen it.

// Scope is one parsed scope.
type Scope struct {
	Context string // "patient" (one launch patient), "user" or "system" (what the token's roles allow)
	Type    string // a resource type Vigil serves, or "*"
}

// Scopes is a token's set of scopes.
type Scopes []Scope

// ErrInvalidScope: a scope Vigil does not grant (malformed, a write scope, an unknown type).
var ErrInvalidScope = errors.New("fhir: invalid SMART scope")

// ParseScopes parses space-separated scopes. Every scope must be a read scope of a served
// resource type (or "*") in the patient, user or system context; openid, fhirUser,
// launch/patient and offline_access are accepted and carry no access.
func ParseScopes(s string) (Scopes, error) {
	var out Scopes
	fields := strings.Fields(s)
	if len(fields) == 0 || len(fields) > 32 || len(s) > 2048 {
		return nil, fmt.Errorf("%w: between 1 and 32 scopes", ErrInvalidScope)
	}
	for _, f := range fields {
		switch f {
		case "openid", "fhirUser", "launch", "launch/patient", "offline_access", "online_access":
			continue
		}
		ctx, rest, ok := strings.Cut(f, "/")
		typ, perm, ok2 := strings.Cut(rest, ".")
		if !ok || !ok2 || (ctx != "patient" && ctx != "user" && ctx != "system") {
			return nil, fmt.Errorf("%w: %q is not context/Type.permission", ErrInvalidScope, clip(f))
		}
		switch perm {
		case "read", "r", "s", "rs":
		default:
			return nil, fmt.Errorf("%w: %q: Vigil grants read scopes only", ErrInvalidScope, clip(f))
		}
		if _, known := SearchParams[typ]; typ != "*" && !known {
			return nil, fmt.Errorf("%w: %q: no such resource type served", ErrInvalidScope, clip(f))
		}
		out = append(out, Scope{Context: ctx, Type: typ})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no resource scope", ErrInvalidScope)
	}
	return out, nil
}

// Allows reports whether the scopes let the token read typ, and whether only in a patient
// context (every scope that allows it is a patient/ scope).
func (ss Scopes) Allows(typ string) (allowed, patientOnly bool) {
	patientOnly = true
	for _, s := range ss {
		if s.Type == "*" || s.Type == typ {
			allowed = true
			if s.Context != "patient" {
				patientOnly = false
			}
		}
	}
	return allowed, allowed && patientOnly
}

// NeedsPatient reports whether some scope is a patient/ scope (the grant must name the
// patient).
func (ss Scopes) NeedsPatient() bool {
	for _, s := range ss {
		if s.Context == "patient" {
			return true
		}
	}
	return false
}

// String writes the scopes back, space-separated.
func (ss Scopes) String() string {
	parts := make([]string, len(ss))
	for i, s := range ss {
		parts[i] = s.Context + "/" + s.Type + ".read"
	}
	return strings.Join(parts, " ")
}
