package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
)

// allowNets is the repeatable --webhook-allow-net flag: networks (CIDR, or one address)
// that webhooks may reach although the destination policy refuses them by default.
type allowNets []netip.Prefix

func (a *allowNets) String() string {
	s := make([]string, len(*a))
	for i, p := range *a {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

func (a *allowNets) Set(v string) error {
	ps, err := parseAllowNets(v)
	if err != nil {
		return err
	}
	*a = append(*a, ps...)
	return nil
}

func (a *allowNets) Type() string { return "CIDR" }

// parseAllowNets parses a comma- or space-separated list of prefixes (10.20.0.0/16,
// fd00::/8) or single addresses (10.20.0.5 is 10.20.0.5/32). IPv4-mapped IPv6 prefixes are
// taken as the IPv4 prefix they map.
func parseAllowNets(v string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' }) {
		var p netip.Prefix
		if strings.Contains(f, "/") {
			var err error
			if p, err = netip.ParsePrefix(f); err != nil {
				return nil, fmt.Errorf("webhook allowed network %q: want a CIDR prefix such as 10.20.0.0/16", f)
			}
		} else {
			a, err := netip.ParseAddr(f)
			if err != nil || a.Zone() != "" {
				return nil, fmt.Errorf("webhook allowed network %q: want a CIDR prefix such as 10.20.0.0/16 or an IP address", f)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// webhookAllowNets is the operator's allow-list: the --webhook-allow-net flags, or else
// VIGIL_WEBHOOK_ALLOW_NETS.
func webhookAllowNets(ctx context.Context, rc runConfig) ([]netip.Prefix, error) {
	if len(rc.WebhookAllowNets) > 0 {
		return rc.WebhookAllowNets, nil
	}
	nets, err := parseAllowNets(envOrCtx(ctx, "VIGIL_WEBHOOK_ALLOW_NETS", ""))
	if err != nil {
		return nil, fmt.Errorf("VIGIL_WEBHOOK_ALLOW_NETS: %w", err)
	}
	return nets, nil
}
