package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/server"
)

// serverLimits are the server's resource limits and timeouts (docs/operations.md#limits):
// flags of serve and demo, each with a VIGIL_* variable used when the flag is not given.
type serverLimits struct {
	ReadTimeout         time.Duration
	MaxStreams          int
	MaxStreamsPerCaller int
	RejectedPerSource   limitFlag
	RejectedPerDevice   limitFlag
	TrustProxyHeaders   bool
	Replicas            int
	DrainDelay          time.Duration
	StreamCoalesce      time.Duration
	Committers          int
}

// limitEnv names the variable of each limit flag.
var limitEnv = map[string]string{
	"read-timeout":           "VIGIL_READ_TIMEOUT",
	"max-streams":            "VIGIL_MAX_STREAMS",
	"max-streams-per-caller": "VIGIL_MAX_STREAMS_PER_CALLER",
	"rejected-per-source":    "VIGIL_REJECTED_PER_SOURCE",
	"rejected-per-device":    "VIGIL_REJECTED_PER_DEVICE",
	"trust-proxy-headers":    "VIGIL_TRUST_PROXY_HEADERS",
	"replicas":               "VIGIL_REPLICAS",
	"drain-delay":            "VIGIL_DRAIN_DELAY",
	"stream-coalesce":        "VIGIL_STREAM_COALESCE",
	"committers":             "VIGIL_COMMITTERS",
}

// DefaultDrainDelay is the default of --drain-delay: two health checks of a load balancer
// checking every 2 s (deploy/haproxy.cfg), and a margin.
const DefaultDrainDelay = 5 * time.Second

func addLimitFlags(cmd *cobra.Command, l *serverLimits) {
	l.RejectedPerSource = limitFlag(server.DefaultRejectedPerSource)
	l.RejectedPerDevice = limitFlag(server.DefaultRejectedPerDevice)
	f := cmd.Flags()
	f.DurationVar(&l.ReadTimeout, "read-timeout", server.DefaultReadTimeout,
		"longest time a request's body may take to arrive; a late body gets 408 request_timeout (env VIGIL_READ_TIMEOUT)")
	f.IntVar(&l.MaxStreams, "max-streams", server.DefaultMaxStreams,
		"most live event streams (SSE) open at once; more get 503 too_many_streams (env VIGIL_MAX_STREAMS)")
	f.IntVar(&l.MaxStreamsPerCaller, "max-streams-per-caller", server.DefaultMaxStreamsPerCaller,
		"most live event streams of one signed-in person or service account (without one: one source address, IPv6 /64) (env VIGIL_MAX_STREAMS_PER_CALLER)")
	f.Var(&l.RejectedPerSource, "rejected-per-source",
		"rejected requests (4xx) one source address may make, as BURST:RATE (RATE per second), or off; past it the source is refused with 429 (env VIGIL_REJECTED_PER_SOURCE)")
	f.Var(&l.RejectedPerDevice, "rejected-per-device",
		"rejected uploads that may name one device, as BURST:RATE (RATE per second), or off; past it unverifiable uploads naming it get 429 (env VIGIL_REJECTED_PER_DEVICE)")
	f.BoolVar(&l.TrustProxyHeaders, "trust-proxy-headers", false,
		"take the source address from X-Forwarded-For when the TCP peer is a loopback or private-network proxy; set it behind a reverse proxy, never when clients connect directly (env VIGIL_TRUST_PROXY_HEADERS)")
	f.IntVar(&l.Replicas, "replicas", 1,
		"replicas behind the load balancer: each enforces 1/N of --rejected-per-source and --rejected-per-device, so that together they hold the limit (env VIGIL_REPLICAS)")
	f.DurationVar(&l.DrainDelay, "drain-delay", DefaultDrainDelay,
		"on SIGTERM, how long /readyz answers 503 and new requests get 503 draining (Retry-After) before the listener closes and requests in flight finish; at least the load balancer's time to take the replica out (env VIGIL_DRAIN_DELAY)")
	f.DurationVar(&l.StreamCoalesce, "stream-coalesce", server.DefaultStreamCoalesce,
		"longest a live stream holds a tile update (observations) to write it with those that follow, in one write; alarm events are never held; 0 or less writes each event at once (env VIGIL_STREAM_COALESCE)")
	f.IntVar(&l.Committers, "committers", 0,
		"group commits of uploads in flight at once on this replica; 0: 2 divided by --replicas (at least 1), so that the replicas together keep the database as busy as one (env VIGIL_COMMITTERS)")
}

// fromEnv sets each limit flag not given on the command line from its variable, if set.
func (l *serverLimits) fromEnv(cmd *cobra.Command) error {
	for flag, env := range limitEnv {
		v, ok := lookupEnvCtx(cmd.Context(), env)
		if !ok || v == "" || cmd.Flags().Changed(flag) {
			continue
		}
		if err := cmd.Flags().Set(flag, v); err != nil {
			return fmt.Errorf("%s=%q: %w", env, v, err)
		}
	}
	if l.Replicas < 1 || l.Replicas > 1000 {
		return fmt.Errorf("--replicas %d: want 1 to 1000", l.Replicas)
	}
	if l.StreamCoalesce > time.Second {
		return fmt.Errorf("--stream-coalesce %v: want at most 1s (a tile must not lag behind its upload by more)", l.StreamCoalesce)
	}
	if l.DrainDelay < 0 {
		return fmt.Errorf("--drain-delay %v: want a duration ≥ 0", l.DrainDelay)
	}
	if l.Committers < 0 || l.Committers > 64 {
		return fmt.Errorf("--committers %d: want 0 (automatic) to 64", l.Committers)
	}
	return nil
}

// DefaultCommitters is the group commits in flight of one replica alone (devices.Config).
const DefaultCommitters = 2

// committers is the devices' group commits in flight on this replica: --committers, else
// DefaultCommitters shared by the replicas — the commits of all replicas go to one database,
// and with each its own two, N replicas made N times more, smaller group commits at the same
// load (docs/benchmarks.md, HA).
func (l *serverLimits) committers() int {
	if l.Committers > 0 {
		return l.Committers
	}
	return max(1, DefaultCommitters/max(l.Replicas, 1))
}

// apply puts the limits into the server's configuration.
func (l *serverLimits) apply(cfg *server.Config) {
	cfg.ReadTimeout = l.ReadTimeout
	cfg.MaxStreams, cfg.MaxStreamsPerCaller = l.MaxStreams, l.MaxStreamsPerCaller
	cfg.RejectedPerSource, cfg.RejectedPerDevice = server.Limit(l.RejectedPerSource), server.Limit(l.RejectedPerDevice)
	cfg.TrustProxyHeaders = l.TrustProxyHeaders
	cfg.Replicas, cfg.DrainDelay = l.Replicas, l.DrainDelay
	cfg.StreamCoalesce = l.StreamCoalesce
	if cfg.StreamCoalesce <= 0 {
		cfg.StreamCoalesce = -1 // (server: a negative value turns holding off; 0 is its default)
	}
}

// limitFlag is a server.Limit on the command line: BURST:RATE (a whole burst, a rate per
// second), or off.
type limitFlag server.Limit

func (l *limitFlag) String() string {
	if l.Rate < 0 {
		return "off"
	}
	return strconv.Itoa(l.Burst) + ":" + strconv.FormatFloat(l.Rate, 'f', -1, 64)
}

func (l *limitFlag) Set(v string) error {
	if v == "off" {
		*l = limitFlag{Rate: -1, Burst: 1}
		return nil
	}
	b, r, ok := strings.Cut(v, ":")
	burst, berr := strconv.Atoi(b)
	rate, rerr := strconv.ParseFloat(r, 64)
	if !ok || berr != nil || rerr != nil || burst < 1 || !(rate > 0) || rate > 1e6 {
		return fmt.Errorf("%q: want BURST:RATE, a whole burst ≥ 1 and a rate per second > 0 (e.g. 60:1 or 30:0.5), or off", v)
	}
	*l = limitFlag{Rate: rate, Burst: burst}
	return nil
}

func (l *limitFlag) Type() string { return "BURST:RATE" }
