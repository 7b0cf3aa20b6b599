package core_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/core"
)

// VerifyWebhook parses a header received from the network: it never panics, accepts exactly
// what SignWebhook produced for the same id and body, and rejects any other header.
// Verifies: REQ-CORE-013
func FuzzVerifyWebhook(f *testing.F) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	now := time.Unix(1_800_000_000, 0)
	f.Add("t=1800000000,v1=00", "id-1", []byte(`{"a":1}`))
	f.Add("", "", []byte{})
	f.Add("t=,v1=,v1=zz,=,,t=1", "x", []byte("y"))
	f.Add("t=99999999999999999999,v1=ab", "x", []byte("y"))
	f.Fuzz(func(t *testing.T, header, id string, body []byte) {
		if err := core.VerifyWebhook(secret, header, id, body, now, time.Minute); err == nil {
			if header != core.SignWebhook(secret, time.Unix(parseT(header), 0), id, body) && !containsValid(secret, header, id, body) {
				t.Fatalf("VerifyWebhook(%q) accepted a header SignWebhook did not make", header)
			}
		}
		good := core.SignWebhook(secret, now, id, body)
		if err := core.VerifyWebhook(secret, good, id, body, now, time.Minute); err != nil {
			t.Fatalf("VerifyWebhook(SignWebhook(...)) = %v, want nil", err)
		}
	})
}

// parseT and containsValid re-derive what VerifyWebhook may legitimately accept: a header
// that carries a timestamp and, among its v1 entries, the MAC of that timestamp, id and body.
func parseT(h string) int64 {
	var t int64 = -1
	for _, part := range strings.Split(h, ",") {
		if k, v, ok := strings.Cut(strings.TrimSpace(part), "="); ok && k == "t" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				n = -1
			}
			t = n
		}
	}
	return t
}

func containsValid(secret []byte, h, id string, body []byte) bool {
	want := core.SignWebhook(secret, time.Unix(parseT(h), 0), id, body)
	mac := want[strings.LastIndex(want, "v1=")+3:]
	for _, part := range strings.Split(h, ",") {
		if k, v, ok := strings.Cut(strings.TrimSpace(part), "="); ok && k == "v1" && strings.EqualFold(v, mac) {
			return true
		}
	}
	return false
}
