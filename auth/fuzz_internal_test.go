package auth

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// FuzzCredentialParsers feeds network-facing inputs to the parsers that see them before any
// database: the session cookie and bearer header extraction, the unverified issuer peek of an
// ID token, the PHC password hash decoder, TOTP matching and recovery-code normalization.
// None may panic; a malformed session or token is never accepted by shape.
// Verifies: REQ-ACC-005, REQ-ACC-007
func FuzzCredentialParsers(f *testing.F) {
	f.Add("vgs_"+strings.Repeat("A", 43), "Bearer vgt_abc", "eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0.", "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA", "123456")
	f.Add("", "bearer ", "a.b.c", "$argon2id$v=19$m=99999999,t=1,p=1$$", "12345 ")
	f.Fuzz(func(t *testing.T, cookie, authz, jwt, phcText, code string) {
		s := &Service{cfg: Config{Session: SessionConfig{CookieName: "__Host-vigil_session"}}}
		r := httptest.NewRequest(http.MethodPost, "/", nil)
		r.Header.Set("Cookie", "__Host-vigil_session="+cookie)
		r.Header.Set("Authorization", authz)
		c := s.CredentialsFrom(r, "", "")
		if c.BearerToken != "" && !strings.HasPrefix(strings.ToLower(authz), "bearer ") {
			t.Fatalf("bearer token %q read from %q", c.BearerToken, authz)
		}
		_ = unverifiedIssuer(jwt)
		if h, ok := parsePHC(phcText); ok && (h.m > 1<<20 || h.t > 16 || len(h.want) < 16) {
			t.Fatalf("parsePHC(%q) accepted out-of-bounds parameters", phcText)
		}
		_ = matchTOTP("JBSWY3DPEHPK3PXP", code, fixedTime)
		_ = normalizeRecovery(code)
		_ = CSRFToken(cookie)
	})
}

var fixedTime = mustTime("2026-03-10T12:00:00Z")

func mustTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}
