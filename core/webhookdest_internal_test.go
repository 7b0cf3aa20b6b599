package core

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"
)

// The delivery client uses no proxy (the environment's HTTP(S)_PROXY would make the proxy the
// dialed address, out of the policy's sight), checks every dial, and follows no redirect.
// Verifies: REQ-CORE-015
func TestWebhookClientNoProxyNoRedirect(t *testing.T) {
	t.Parallel()
	c := destinationPolicy{}.client(time.Second)
	tr, ok := c.Transport.(*http.Transport)
	if !ok {
		t.Fatalf("client transport = %T, want *http.Transport", c.Transport)
	}
	if tr.Proxy != nil {
		t.Error("client transport Proxy is set, want nil (no proxy for webhooks)")
	}
	if tr.DialContext == nil || tr.DialTLSContext != nil || tr.Dial != nil || tr.DialTLS != nil { //nolint:staticcheck // checking the deprecated hooks are unset
		t.Error("client transport dials other than through the policy's dialer")
	}
	if c.CheckRedirect == nil || c.CheckRedirect(nil, nil) != http.ErrUseLastResponse {
		t.Error("client CheckRedirect does not return http.ErrUseLastResponse")
	}
}

// The CreateWebhook URL check faces the API: it never panics, and a URL it accepts carries no
// credentials, is absolute http(s), and has no IP-literal or localhost host the policy refuses.
// Verifies: REQ-CORE-015
func FuzzCheckWebhookURL(f *testing.F) {
	for _, s := range []string{"https://hooks.example.org/vigil", "http://127.0.0.1:8080/", "http://[::ffff:169.254.169.254]/",
		"http://[fe80::1%25eth0]/", "http://u:p@x/", "http://127.1/", "http://LOCALHOST./", "http://0x7f000001/", "//x", "http://[::1", ""} {
		f.Add(s)
	}
	var p destinationPolicy
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := p.checkWebhookURL(raw)
		if err != nil {
			if _, ok := err.(*WebhookError); !ok {
				t.Fatalf("checkWebhookURL(%q) = %T %v, want a *WebhookError", raw, err, err)
			}
			return
		}
		if u.User != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
			t.Fatalf("checkWebhookURL(%q) accepted %#v", raw, u)
		}
		host := strings.ToLower(u.Hostname())
		if a, err := netip.ParseAddr(host); err == nil && WebhookDestinationClass(a) != "" {
			t.Fatalf("checkWebhookURL(%q) accepted refused address %s", raw, a)
		}
		if n := strings.TrimSuffix(host, "."); n == "localhost" || strings.HasSuffix(n, ".localhost") {
			t.Fatalf("checkWebhookURL(%q) accepted a localhost name", raw)
		}
	})
}

// What the audit trail keeps of a webhook URL: the destination, the names of the query
// parameters, the hash of the whole URL; never credentials, query values or fragments.
// Verifies: REQ-CORE-016
func TestAuditURLRedactsSecrets(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ in, want string }{
		{"https://hooks.example.org/vigil", "https://hooks.example.org/vigil"},
		{"https://hooks.example.org:8443/a/b?token=s3cret&b=2&b=3#frag-secret", "https://hooks.example.org:8443/a/b?b=REDACTED&token=REDACTED"},
		{"https://user:pw-secret@hooks.example.org/x?", "https://hooks.example.org/x"},
		{"https://hooks.example.org/x?s3cret-only", "https://hooks.example.org/x?s3cret-only=REDACTED"},
		{"https://hooks.example.org/x?%zz-secret", "https://hooks.example.org/x?REDACTED"},
		{"https://hooks.example.org/p%2Fq?a%20b=secret", "https://hooks.example.org/p%2Fq?a+b=REDACTED"},
	} {
		u, err := url.Parse(c.in)
		if err != nil {
			t.Fatal(err)
		}
		got := auditURL(u)
		if got["url"] != c.want {
			t.Errorf("auditURL(%q) url = %q, want %q", c.in, got["url"], c.want)
		}
		sum := sha256.Sum256([]byte(u.String()))
		if got["url_sha256"] != hex.EncodeToString(sum[:]) {
			t.Errorf("auditURL(%q) url_sha256 = %v, want the SHA-256 of %q", c.in, got["url_sha256"], u.String())
		}
		for _, v := range got {
			if strings.Contains(v.(string), "secret") {
				t.Errorf("auditURL(%q) keeps a secret: %q", c.in, v)
			}
		}
	}
}
