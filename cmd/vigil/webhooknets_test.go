package main

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// --webhook-allow-net is repeatable, takes prefixes or single addresses, and
// VIGIL_WEBHOOK_ALLOW_NETS is used only when no flag is given; bad values are refused.
// Verifies: REQ-CORE-015
func TestWebhookAllowNetFlag(t *testing.T) {
	t.Parallel()
	cmd := newServeCmd()
	if err := cmd.ParseFlags([]string{"--webhook-allow-net", "10.20.0.0/16", "--webhook-allow-net", "fd12:3456::/48,192.168.7.9", "--webhook-allow-net", "::ffff:172.16.0.0/108"}); err != nil {
		t.Fatal(err)
	}
	f := cmd.Flags().Lookup("webhook-allow-net")
	if f == nil || !strings.Contains(f.Usage, "repeatable") {
		t.Fatalf("serve --webhook-allow-net = %+v, want a documented repeatable flag", f)
	}
	got := *f.Value.(*allowNets)
	want := []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16"), netip.MustParsePrefix("fd12:3456::/48"),
		netip.MustParsePrefix("192.168.7.9/32"), netip.MustParsePrefix("172.16.0.0/12")}
	if !slices.Equal(got, want) {
		t.Errorf("--webhook-allow-net values = %v, want %v", got, want)
	}
	if err := cmd.ParseFlags([]string{"--webhook-allow-net", "10.0.0.0/33"}); err == nil {
		t.Error("--webhook-allow-net 10.0.0.0/33 accepted, want an error")
	}
	if err := cmd.ParseFlags([]string{"--webhook-allow-net", "intranet"}); err == nil {
		t.Error("--webhook-allow-net intranet accepted, want an error")
	}

	ctx := withEnv(context.Background(), map[string]string{"VIGIL_WEBHOOK_ALLOW_NETS": "10.1.0.0/16, 127.0.0.1"})
	nets, err := webhookAllowNets(ctx, runConfig{})
	if want := []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("127.0.0.1/32")}; err != nil || !slices.Equal(nets, want) {
		t.Errorf("webhookAllowNets(env) = %v, %v; want %v", nets, err, want)
	}
	if nets, err := webhookAllowNets(ctx, runConfig{WebhookAllowNets: allowNets{netip.MustParsePrefix("10.9.0.0/16")}}); err != nil || len(nets) != 1 {
		t.Errorf("webhookAllowNets(flag and env) = %v, %v; want the flag's only", nets, err)
	}
	bad := withEnv(context.Background(), map[string]string{"VIGIL_WEBHOOK_ALLOW_NETS": "10.1.0.0/16,nope"})
	if _, err := webhookAllowNets(bad, runConfig{}); err == nil {
		t.Error("webhookAllowNets(bad env) = nil error, want an error")
	}
}
