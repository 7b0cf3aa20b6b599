package server

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
)

// Passkeys over HTTP with a software authenticator (real P-256 keys): a signed-in user
// registers one, then signs in with it alone (no name, no password) and gets a webauthn
// session; a replayed answer and a registration without a session are refused.
// Verifies: REQ-ACC-045
func TestPasskeyRoutes(t *testing.T) {
	t.Parallel()
	f := newWardsFixture(t, 1, func(c *Config) {
		pk, err := c.Auth.NewPasskeys(auth.WebAuthnConfig{RPID: "vigil.test", Origins: []string{"https://vigil.test"}})
		if err != nil {
			t.Fatal(err)
		}
		c.Passkeys = pk
	})
	url := f.ts.URL + "/api/v1/auth/passkeys/"
	post := func(cl *http.Client, path string, body any) (*http.Response, []byte) {
		t.Helper()
		b, _ := json.Marshal(body)
		req, _ := http.NewRequest(http.MethodPost, url+path, bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp, out
	}
	type ceremony struct {
		Ceremony string `json:"ceremony"`
		Options  struct {
			PublicKey struct {
				Challenge string `json:"challenge"`
				User      struct {
					ID string `json:"id"`
				} `json:"user"`
			} `json:"publicKey"`
		} `json:"options"`
	}
	a := &authtest.SoftAuthenticator{RPID: "vigil.test", Origin: "https://vigil.test"}

	// Without a session, no registration.
	if resp, _ := post(http.DefaultClient, "register/begin", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("register/begin without a session = %d, want 401", resp.StatusCode)
	}
	resp, body := post(f.clinA, "register/begin", nil)
	var rc ceremony
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &rc) != nil || rc.Ceremony == "" || rc.Options.PublicKey.Challenge == "" {
		t.Fatalf("register/begin = %d %s, want the ceremony and its options", resp.StatusCode, body)
	}
	handle, err := base64.RawURLEncoding.DecodeString(rc.Options.PublicKey.User.ID)
	if err != nil || !bytes.Equal(handle, f.clinAUser.ID[:]) {
		t.Fatalf("registration's user handle = %x, %v; want the user id %x", handle, err, f.clinAUser.ID[:])
	}
	cred := json.RawMessage(a.Create(t, rc.Options.PublicKey.Challenge, handle))
	if resp, body := post(f.clinA, "register/finish", map[string]any{"ceremony": rc.Ceremony, "credential": cred}); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("register/finish = %d %s, want 204", resp.StatusCode, body)
	}
	if n := f.count(t, `SELECT count(*) FROM audit_events WHERE action = 'user.passkey_added' AND actor_id = $1`, f.clinAUser.ID.String()); n != 1 {
		t.Fatalf("user.passkey_added events = %d, want 1", n)
	}

	// Passwordless sign-in by a client with no session.
	anon := &http.Client{}
	resp, body = post(anon, "sign-in/begin", nil)
	var lc ceremony
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &lc) != nil || lc.Ceremony == "" {
		t.Fatalf("sign-in/begin = %d %s", resp.StatusCode, body)
	}
	assertion := json.RawMessage(a.Get(t, lc.Options.PublicKey.Challenge, a.Key, authtest.FlagUP|authtest.FlagUV))
	resp, body = post(anon, "sign-in/finish", map[string]any{"ceremony": lc.Ceremony, "credential": assertion})
	var sess sessionAnswer
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &sess) != nil || sess.UserID != f.clinAUser.ID || sess.AuthMethod != auth.MethodWebAuthn {
		t.Fatalf("sign-in/finish = %d %s, want a webauthn session of %s", resp.StatusCode, body, f.clinAUser.ID)
	}
	var cookie *http.Cookie
	for _, ck := range resp.Cookies() {
		cookie = ck
	}
	if cookie == nil {
		t.Fatal("sign-in/finish set no session cookie")
	}
	req, _ := http.NewRequest(http.MethodGet, f.ts.URL+"/api/v1/auth/me", nil)
	req.AddCookie(&http.Cookie{Name: cookie.Name, Value: cookie.Value})
	me, err := anon.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	me.Body.Close()
	if me.StatusCode != http.StatusOK {
		t.Fatalf("GET /auth/me with the passkey session = %d, want 200", me.StatusCode)
	}

	// The same answer again: the ceremony was used.
	resp, body = post(anon, "sign-in/finish", map[string]any{"ceremony": lc.Ceremony, "credential": assertion})
	var e errorBody
	_ = json.Unmarshal(body, &e)
	if resp.StatusCode != http.StatusUnauthorized || e.Error.Code != "invalid_credentials" {
		t.Fatalf("sign-in/finish replayed = %d %s, want 401 invalid_credentials", resp.StatusCode, body)
	}
	// Malformed: no credential.
	if resp, _ := post(anon, "sign-in/finish", map[string]any{"ceremony": lc.Ceremony}); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("sign-in/finish without a credential = %d, want 400", resp.StatusCode)
	}
}
