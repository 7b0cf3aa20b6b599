package server_test

import (
	"strings"
	"testing"

	"github.com/vigilhealth/vigil/server"
)

// Every JSON body goes through one strict decoder: application/json only (a cross-site
// text/plain or form POST, or XML, gets 415 and reaches no handler), exactly one JSON value,
// no member named twice, no unknown member (400 invalid_json / unknown_json_field). Each
// refusal stores nothing and is audited with its code.
// Verifies: REQ-FND-017
func TestStrictJSONBodies(t *testing.T) {
	h := newLimitedHTTP(t, server.Config{})
	dev := h.RegisterDevice(t)
	deep := strings.Repeat("[", 40) + strings.Repeat("]", 40)
	cases := []struct {
		name, path, ctype, body string
		status                  int
		code                    string
	}{
		{"cross-site text/plain", "/api/v1/sites", "text/plain", `{"name":"Evil"}`, 415, "unsupported_media_type"},
		{"form", "/api/v1/sites", "application/x-www-form-urlencoded", `name=Evil`, 415, "unsupported_media_type"},
		{"no content type", "/api/v1/sites", "", `{"name":"Evil"}`, 415, "unsupported_media_type"},
		{"utf-16", "/api/v1/sites", "application/json; charset=utf-16", `{"name":"Evil"}`, 415, "unsupported_media_type"},
		{"two values", "/api/v1/sites", "application/json", `{"name":"A"} {"name":"B"}`, 400, "invalid_json"},
		{"trailing data", "/api/v1/sites", "application/json", `{"name":"A"}x`, 400, "invalid_json"},
		{"duplicate member", "/api/v1/sites", "application/json", `{"name":"A","name":"B"}`, 400, "invalid_json"},
		{"duplicate in another case", "/api/v1/sites", "application/json", `{"name":"A","NAME":"B"}`, 400, "invalid_json"},
		{"unknown member", "/api/v1/sites", "application/json", `{"name":"A","owner":"x"}`, 400, "unknown_json_field"},
		{"wrong type", "/api/v1/sites", "application/json", `{"name":7}`, 400, "invalid_json"},
		{"empty", "/api/v1/sites", "application/json", ``, 400, "invalid_json"},
		{"too deep", "/api/v1/sites", "application/json", `{"name":"A","x":` + deep + `}`, 400, "invalid_json"},
		{"device as XML", "/api/v1/devices", "application/xml", `<d><serial>S</serial><model>M</model><firmware>1</firmware></d>`, 415, "unsupported_media_type"},
		{"device with unknown member", "/api/v1/devices", "application/json", `{"serial":"S-9","model":"M","firmware":"1","owner":"x"}`, 400, "unknown_json_field"},
		{"device status with unknown member", "/api/v1/devices/" + dev.ID.String() + "/suspend", "application/json", `{"reason":"r","force":true}`, 400, "unknown_json_field"},
		{"device patient as form", "/api/v1/devices/" + dev.ID.String() + "/patient", "application/x-www-form-urlencoded", `patient_id=`, 415, "unsupported_media_type"},
	}
	sites := h.Count(t, `SELECT count(*) FROM core_sites`)
	registered := h.Count(t, `SELECT count(*) FROM devices_devices`)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			method := "POST"
			if strings.HasSuffix(tc.path, "/patient") {
				method = "PUT"
			}
			status, code, _, reqID := h.do(t, method, tc.path, "", tc.ctype, []byte(tc.body))
			if status != tc.status || code != tc.code {
				t.Fatalf("%s %s (%s) = %d %s, want %d %s", method, tc.path, tc.name, status, code, tc.status, tc.code)
			}
			if n := h.Count(t, `SELECT count(*) FROM audit_events WHERE request_id = $1 AND action = 'http.request.rejected' AND reason = $2`, reqID, tc.code); n != 1 {
				t.Errorf("audited rejections = %d, want 1", n)
			}
		})
	}
	if n := h.Count(t, `SELECT count(*) FROM core_sites`); n != sites {
		t.Errorf("sites = %d after refused bodies, want %d (nothing stored)", n, sites)
	}
	if n := h.Count(t, `SELECT count(*) FROM devices_devices`); n != registered {
		t.Errorf("devices = %d after refused bodies, want %d (nothing stored)", n, registered)
	}
	if n := h.Count(t, `SELECT count(*) FROM devices_devices WHERE status <> 'active'`); n != 0 {
		t.Errorf("devices not active = %d, want 0 (the refused suspension did nothing)", n)
	}

	// Well-formed bodies still work, optional ones may be absent.
	for _, tc := range []struct{ method, path, ctype, body string }{
		{"POST", "/api/v1/sites", "application/json; charset=UTF-8", `{"name":"Main"}`},
		{"POST", "/api/v1/devices", "application/json", ` {"serial":"S-10","model":"M","firmware":"1"} ` + "\n"},
		{"POST", "/api/v1/devices/" + dev.ID.String() + "/suspend", "", ``},
		{"POST", "/api/v1/devices/" + dev.ID.String() + "/reactivate", "application/json", `{"reason":"checked"}`},
	} {
		if status, code, _, _ := h.do(t, tc.method, tc.path, "", tc.ctype, []byte(tc.body)); status >= 300 {
			t.Errorf("%s %s %s = %d %s, want success", tc.method, tc.path, tc.body, status, code)
		}
	}
}

// Answers of the API carry PHI (patients, observations, alarms, audit payloads): none may be
// stored by a cache or content-sniffed by a browser, errors included.
// Verifies: REQ-FND-017
func TestNoStoreNoSniff(t *testing.T) {
	h := newLimitedHTTP(t, server.Config{})
	for _, path := range []string{"/api/v1/patients", "/api/v1/patients/" + h.Patient.String(), "/api/v1/patients/not-a-uuid", "/api/v1/nothing"} {
		resp, err := h.cl.Get(h.ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if cc, ns := resp.Header.Get("Cache-Control"), resp.Header.Get("X-Content-Type-Options"); cc != "no-store" || ns != "nosniff" {
			t.Errorf("GET %s: Cache-Control %q, X-Content-Type-Options %q; want no-store, nosniff", path, cc, ns)
		}
	}
}
