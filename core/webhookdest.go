package core

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sort"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/vigilhealth/vigil/audit"
)

// Webhook destination policy (SSRF). Webhooks carry patient alerts to URLs an administrator
// types in, so a stolen or careless admin session must not be able to point them at the
// cloud metadata service, at services listening on the Vigil host, or into the private
// network. Unless an address is inside WebhookConfig.AllowNets, a webhook never connects to:
//
//   - loopback (127.0.0.0/8, ::1), unspecified (0.0.0.0, ::) and "this network" 0.0.0.0/8;
//   - private (10/8, 172.16/12, 192.168/16, fc00::/7) and shared/CGNAT space 100.64.0.0/10;
//   - link-local (169.254.0.0/16 with the cloud metadata address 169.254.169.254, fe80::/10)
//     and the deprecated site-local fec0::/10;
//   - multicast and broadcast, and reserved space (192.0.0.0/24, 198.18.0.0/15, 240.0.0.0/4);
//   - any of these in IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d), NAT64
//     (64:ff9b::/96, 64:ff9b:1::/48) or 6to4 (2002::/16) form.
//
// The check runs where it cannot be bypassed: on the address the dialer is about to connect
// to (net.Dialer.Control), after DNS resolution, on every connection, so a name that resolves
// (or is re-bound) to a refused address is refused too. CreateWebhook checks early, without
// resolving DNS, what it can see in the URL: IP literals, "localhost" names, numeric hosts
// that are not canonical IP addresses, and user:password@ credentials. Redirects are never
// followed (a 3xx answer is a failed attempt) and no proxy from the environment is used.

// ErrWebhookDestination: a webhook's destination address is refused by the destination
// policy (at CreateWebhook, or when a delivery dials). errors.As gives a
// *WebhookDestinationError at dial time, a *WebhookError at CreateWebhook.
var ErrWebhookDestination = errors.New("webhook destination refused")

// Stable codes of a refused CreateWebhook (WebhookError.Code). A published code never
// changes meaning.
const (
	CodeInvalidWebhookURL         = "invalid_webhook_url"         // not an absolute http(s) URL with a host, or an ambiguous numeric host
	CodeWebhookURLCredentials     = "webhook_url_credentials"     // the URL carries user:password@ credentials
	CodeWebhookDestinationRefused = "webhook_destination_refused" // the host is loopback, private, link-local, … and not in WebhookConfig.AllowNets
	CodeInvalidWebhookEventTypes  = "invalid_webhook_event_types" // no event type given
)

// WebhookError refuses a CreateWebhook call; nothing is stored and the refusal is audited as
// "webhook.rejected" with Code as its reason. errors.Is(err, ErrInvalidRequest) holds, and
// errors.Is(err, ErrWebhookDestination) for CodeWebhookDestinationRefused.
type WebhookError struct {
	Code   string
	Detail string
}

func (e *WebhookError) Error() string { return "webhook refused: " + e.Code + ": " + e.Detail }

// ErrorCode returns the stable code.
func (e *WebhookError) ErrorCode() string { return e.Code }

// Is makes errors.Is(err, ErrInvalidRequest) hold, and ErrWebhookDestination for a refused
// destination.
func (e *WebhookError) Is(target error) bool {
	return target == ErrInvalidRequest || (target == ErrWebhookDestination && e.Code == CodeWebhookDestinationRefused)
}

// WebhookDestinationError is a connection a delivery refused to open: Addr is the resolved
// address, Class why it is refused ("loopback", "private", "link_local", …).
type WebhookDestinationError struct {
	Addr  netip.Addr
	Class string
}

func (e *WebhookDestinationError) Error() string {
	return fmt.Sprintf("webhook destination %s refused: %s address not in the allowed networks", e.Addr, e.Class)
}

// Is makes errors.Is(err, ErrWebhookDestination) hold.
func (e *WebhookDestinationError) Is(target error) bool { return target == ErrWebhookDestination }

var (
	pfxThisNetwork = netip.MustParsePrefix("0.0.0.0/8")
	pfxShared      = netip.MustParsePrefix("100.64.0.0/10")
	pfxV4Reserved  = []netip.Prefix{
		netip.MustParsePrefix("192.0.0.0/24"),  // IETF protocol assignments
		netip.MustParsePrefix("198.18.0.0/15"), // benchmarking
		netip.MustParsePrefix("240.0.0.0/4"),   // reserved, and broadcast 255.255.255.255
	}
	pfxSiteLocal  = netip.MustParsePrefix("fec0::/10")
	pfxV4Compat   = netip.MustParsePrefix("::/96")
	pfxNAT64      = netip.MustParsePrefix("64:ff9b::/96")
	pfxNAT64Local = netip.MustParsePrefix("64:ff9b:1::/48")
	pfx6to4       = netip.MustParsePrefix("2002::/16")
)

// WebhookDestinationClass returns why the destination policy refuses a, without any allowed
// networks: "loopback", "private", "link_local", "unspecified", "multicast",
// "shared_address_space", "this_network", "reserved", "site_local", or one of these prefixed
// by "embedded_" for an IPv4 address carried in an IPv6 form (IPv4-compatible, NAT64, 6to4).
// It returns "" for an address the policy allows. IPv4-mapped addresses are judged as the
// IPv4 address they carry.
func WebhookDestinationClass(a netip.Addr) string {
	a = a.WithZone("").Unmap()
	switch {
	case !a.IsValid():
		return "invalid"
	case a.IsUnspecified():
		return "unspecified"
	case a.IsLoopback():
		return "loopback"
	case a.IsPrivate():
		return "private"
	case a.IsLinkLocalUnicast():
		return "link_local"
	case a.IsMulticast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		return "multicast"
	}
	if a.Is4() {
		switch {
		case pfxThisNetwork.Contains(a):
			return "this_network"
		case pfxShared.Contains(a):
			return "shared_address_space"
		}
		for _, p := range pfxV4Reserved {
			if p.Contains(a) {
				return "reserved"
			}
		}
		return ""
	}
	if pfxSiteLocal.Contains(a) {
		return "site_local"
	}
	// IPv6 forms that carry an IPv4 address somewhere a gateway may deliver it.
	b := a.As16()
	var v4 netip.Addr
	switch {
	case pfxV4Compat.Contains(a):
		v4 = netip.AddrFrom4([4]byte(b[12:16]))
	case pfxNAT64.Contains(a), pfxNAT64Local.Contains(a):
		v4 = netip.AddrFrom4([4]byte(b[12:16]))
	case pfx6to4.Contains(a):
		v4 = netip.AddrFrom4([4]byte(b[2:6]))
	}
	if v4.IsValid() {
		if c := WebhookDestinationClass(v4); c != "" {
			return "embedded_" + c
		}
	}
	return ""
}

// destinationPolicy is the destination policy with the operator's allowed networks.
type destinationPolicy struct {
	allow []netip.Prefix
}

// check returns nil if a may be connected to, else a *WebhookDestinationError.
func (p destinationPolicy) check(a netip.Addr) error {
	a = a.WithZone("")
	for _, n := range p.allow {
		if n.Contains(a) || n.Contains(a.Unmap()) {
			return nil
		}
	}
	if c := WebhookDestinationClass(a); c != "" {
		return &WebhookDestinationError{Addr: a.Unmap(), Class: c}
	}
	return nil
}

// control is the net.Dialer Control function: it sees the address actually being connected
// to (after DNS resolution, for every address tried) and refuses it unless allowed.
func (p destinationPolicy) control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse dialed address %q (%s)", ErrWebhookDestination, address, network)
	}
	return p.check(ap.Addr())
}

// client returns the HTTP client of deliveries: connections checked by the policy at dial
// time, no proxy (a proxy would make the connection, and the policy would only see the
// proxy's address), redirects never followed.
func (p destinationPolicy) client(timeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second, Control: p.control}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           d.DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConns:          100,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// checkWebhookURL parses and checks a webhook URL as far as possible without DNS.
func (p destinationPolicy) checkWebhookURL(rawURL string) (*url.URL, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Opaque != "" {
		return nil, &WebhookError{Code: CodeInvalidWebhookURL, Detail: "URL must be absolute http(s) with a host"}
	}
	if u.User != nil {
		return u, &WebhookError{Code: CodeWebhookURLCredentials, Detail: "URL must not carry user:password@ credentials (authenticate receivers by the Vigil-Signature)"}
	}
	host := strings.ToLower(u.Hostname())
	if host == "" {
		return u, &WebhookError{Code: CodeInvalidWebhookURL, Detail: "URL has no host"}
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if err := p.check(a); err != nil {
			var de *WebhookDestinationError
			errors.As(err, &de)
			return u, &WebhookError{Code: CodeWebhookDestinationRefused,
				Detail: fmt.Sprintf("%s is a %s address (allow it with WebhookConfig.AllowNets / --webhook-allow-net)", de.Addr, de.Class)}
		}
		return u, nil
	}
	name := strings.TrimSuffix(host, ".")
	if name == "localhost" || strings.HasSuffix(name, ".localhost") {
		// RFC 6761: always loopback. Allowed only if the operator allows loopback.
		if p.check(netip.IPv6Loopback()) != nil && p.check(netip.AddrFrom4([4]byte{127, 0, 0, 1})) != nil {
			return u, &WebhookError{Code: CodeWebhookDestinationRefused,
				Detail: fmt.Sprintf("%q is a loopback name (allow loopback with WebhookConfig.AllowNets / --webhook-allow-net)", host)}
		}
		return u, nil
	}
	// A numeric last label is no DNS name: it is an IPv4 address in a non-canonical form
	// (127.1, 0x7f.1, 2130706433, 0177.0.0.1) that some resolvers accept. Refuse it rather
	// than guess what it reaches.
	if i := strings.LastIndexByte(name, '.'); isNumericLabel(name[i+1:]) {
		return u, &WebhookError{Code: CodeInvalidWebhookURL, Detail: fmt.Sprintf("host %q is neither a DNS name nor a canonical IP address", host)}
	}
	return u, nil
}

func isNumericLabel(l string) bool {
	if l == "" {
		return false
	}
	if strings.HasPrefix(l, "0x") {
		return true
	}
	for _, r := range l {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// auditURL is how a webhook URL goes into the audit trail, which can never be edited: the
// destination an auditor needs (scheme, host, port, path, and the names of the query
// parameters) without what may be a secret (user:password@, query values, fragment — a
// receiver's access token often travels as ?token=…), plus the SHA-256 of the URL as given
// so that a URL can still be matched to its record.
func auditURL(u *url.URL) map[string]any {
	full := sha256.Sum256([]byte(u.String()))
	safe := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}
	if q := u.Query(); len(q) > 0 {
		names := make([]string, 0, len(q))
		for k := range q {
			names = append(names, k)
		}
		sort.Strings(names)
		var b strings.Builder
		for i, k := range names {
			if i > 0 {
				b.WriteByte('&')
			}
			b.WriteString(url.QueryEscape(k))
			b.WriteString("=REDACTED")
		}
		safe.RawQuery = b.String()
	} else if u.RawQuery != "" {
		safe.RawQuery = "REDACTED"
	}
	return map[string]any{"url": truncateUTF8(safe.String(), 512), "url_sha256": hex.EncodeToString(full[:])}
}

// auditWebhookRejection records a refused CreateWebhook in its own transaction (nothing else
// is written): action "webhook.rejected", outcome rejected, the code as reason. The URL is
// recorded as auditURL gives it.
func (s *Service) auditWebhookRejection(ctx context.Context, by audit.Event, u *url.URL, eventTypes []string, cause error) {
	code := CodeInvalidWebhookURL
	var ce interface{ ErrorCode() string }
	if errors.As(cause, &ce) {
		code = ce.ErrorCode()
	}
	detail := map[string]any{"error": cause.Error(), "event_types": eventTypes}
	if u != nil {
		for k, v := range auditURL(u) {
			detail[k] = v
		}
		detail["host"] = truncateUTF8(u.Hostname(), 256)
	}
	ev := by
	ev.Time = s.cfg.Now().UTC()
	ev.Action = "webhook.rejected"
	ev.Object = audit.Object{Type: "webhook"}
	ev.Outcome = audit.OutcomeRejected
	ev.Reason = code
	ev.Payload = detail
	if ev.Actor.Kind == "" {
		ev.Actor = audit.Actor{Kind: audit.ActorService, ID: "core", AuthMethod: "internal"}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := s.cfg.Recorder.RecordNow(ctx, ev); err != nil {
		s.cfg.Logger.ErrorContext(ctx, "core: audit of rejected webhook failed", slog.String("code", code), slog.String("error", err.Error()))
	}
}

func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}
