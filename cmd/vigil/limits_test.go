package main

import (
	"context"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/server"
)

// The server's limits are flags of serve and demo, each with a VIGIL_* variable used when the
// flag is not given; bad values are refused.
// Verifies: REQ-FND-001, REQ-FND-014
// Verifies: REQ-HA-024, REQ-HA-048
func TestLimitFlags(t *testing.T) {
	t.Parallel()
	for _, c := range []*cobra.Command{newServeCmd(), newDemoCmd()} {
		for name := range limitEnv {
			if c.Flags().Lookup(name) == nil || c.PreRunE == nil {
				t.Errorf("%s has no --%s (or does not read its variable)", c.Name(), name)
			}
		}
	}
	env := map[string]string{"VIGIL_MAX_STREAMS": "50", "VIGIL_REJECTED_PER_DEVICE": "off",
		"VIGIL_READ_TIMEOUT": "1h", // the flag wins
		"VIGIL_REPLICAS":     "3", "VIGIL_DRAIN_DELAY": "7s", "VIGIL_STREAM_COALESCE": "20ms"}
	var l serverLimits
	cmd := &cobra.Command{Use: "x"}
	cmd.SetContext(withEnv(context.Background(), env))
	addLimitFlags(cmd, &l)
	if err := cmd.Flags().Parse([]string{"--read-timeout", "5s", "--rejected-per-source", "10:0.25", "--trust-proxy-headers"}); err != nil {
		t.Fatal(err)
	}
	if err := l.fromEnv(cmd); err != nil {
		t.Fatal(err)
	}
	var got server.Config
	l.apply(&got)
	want := server.Config{ReadTimeout: 5 * time.Second, MaxStreams: 50, MaxStreamsPerCaller: server.DefaultMaxStreamsPerCaller,
		RejectedPerSource: server.Limit{Rate: 0.25, Burst: 10}, RejectedPerDevice: server.Limit{Rate: -1, Burst: 1},
		TrustProxyHeaders: true}
	if got.ReadTimeout != want.ReadTimeout || got.MaxStreams != want.MaxStreams || got.MaxStreamsPerCaller != want.MaxStreamsPerCaller ||
		got.RejectedPerSource != want.RejectedPerSource || got.RejectedPerDevice != want.RejectedPerDevice || !got.TrustProxyHeaders ||
		got.Replicas != 3 || got.DrainDelay != 7*time.Second || got.StreamCoalesce != 20*time.Millisecond {
		t.Errorf("limits applied = %+v, want %+v", got, want)
	}
	for _, bad := range []string{"10", "0:1", "10:0", "10:-1", "x:1", "10:abc"} {
		var f limitFlag
		if err := f.Set(bad); err == nil {
			t.Errorf("limitFlag.Set(%q) = nil, want an error", bad)
		}
	}
	for k, v := range map[string]string{"VIGIL_MAX_STREAMS": "many", "VIGIL_REPLICAS": "0", "VIGIL_DRAIN_DELAY": "-1s", "VIGIL_STREAM_COALESCE": "2s"} {
		cmd = &cobra.Command{Use: "x"}
		cmd.SetContext(withEnv(context.Background(), map[string]string{k: v}))
		addLimitFlags(cmd, &l)
		if err := l.fromEnv(cmd); err == nil {
			t.Errorf("%s=%s accepted, want an error", k, v)
		}
	}
	for _, c := range []struct {
		replicas, flag, want int
	}{{1, 0, 2}, {2, 0, 1}, {3, 0, 1}, {2, 3, 3}, {1, 1, 1}} {
		if got := (&serverLimits{Replicas: c.replicas, Committers: c.flag}).committers(); got != c.want {
			t.Errorf("committers (--replicas %d --committers %d) = %d, want %d", c.replicas, c.flag, got, c.want)
		}
	}
	for _, bad := range []string{"-1", "65"} {
		cmd = &cobra.Command{Use: "x"}
		cmd.SetContext(withEnv(context.Background(), map[string]string{"VIGIL_COMMITTERS": bad}))
		addLimitFlags(cmd, &l)
		if err := l.fromEnv(cmd); err == nil {
			t.Errorf("VIGIL_COMMITTERS=%s accepted, want an error", bad)
		}
	}
	if d := newDemoCmd().Flags().Lookup("drain-delay"); d == nil || d.DefValue != "0s" {
		t.Errorf("demo --drain-delay default = %v, want 0s (one process, no load balancer)", d)
	}
}
