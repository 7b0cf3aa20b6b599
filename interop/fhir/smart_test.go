package fhir_test

import (
	"errors"
	"testing"

	"github.com/vigilhealth/vigil/interop/fhir"
)

// SMART scopes: read scopes of served types are granted, anything else refused.
// Verifies: REQ-INT-028
func TestParseScopes(t *testing.T) {
	ss, err := fhir.ParseScopes("openid patient/*.read user/Observation.rs launch/patient")
	if err != nil || len(ss) != 2 {
		t.Fatalf("ParseScopes = %v, %v", ss, err)
	}
	if ok, po := ss.Allows("Patient"); !ok || !po {
		t.Errorf("Allows(Patient) = %v %v, want allowed in a patient context only", ok, po)
	}
	if ok, po := ss.Allows("Observation"); !ok || po {
		t.Errorf("Allows(Observation) = %v %v, want allowed for the user", ok, po)
	}
	only, _ := fhir.ParseScopes("user/Observation.read")
	if ok, _ := only.Allows("AuditEvent"); ok {
		t.Error("user/Observation.read allows AuditEvent")
	}
	for _, bad := range []string{"", "patient/*.write", "user/Medication.read", "admin/*.read", "patient/Observation", "openid", "user/*.cruds"} {
		if _, err := fhir.ParseScopes(bad); !errors.Is(err, fhir.ErrInvalidScope) {
			t.Errorf("ParseScopes(%q) = %v, want ErrInvalidScope", bad, err)
		}
	}
}

func FuzzParseScopes(f *testing.F) {
	for _, s := range []string{"patient/*.read", "user/Observation.rs openid", "system/Device.r", "x/y.z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ss, err := fhir.ParseScopes(s)
		if err != nil {
			return
		}
		again, err := fhir.ParseScopes(ss.String())
		if err != nil || len(again) != len(ss) {
			t.Fatalf("ParseScopes(%q).String() = %q does not parse back: %v", s, ss.String(), err)
		}
	})
}
