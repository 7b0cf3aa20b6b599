package auth_test

import (
	"os"
	"strings"
	"testing"

	"github.com/vigilhealth/vigil/auth"
)

// Every auth error code is documented in docs/api.md, and no public message names a factor.
// Verifies: REQ-ACC-014
func TestErrorCodesDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range auth.Codes {
		if !strings.Contains(string(doc), "`"+e.Code+"`") {
			t.Errorf("code %s is not documented in docs/api.md", e.Code)
		}
		for _, word := range []string{"password", "totp", "user", "nonce", "issuer"} {
			if strings.Contains(strings.ToLower(e.Message), word) {
				t.Errorf("message of %s = %q names %q", e.Code, e.Message, word)
			}
		}
	}
}
