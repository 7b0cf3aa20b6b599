package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/internal/schema"
)

func addRunFlags(cmd *cobra.Command, rc *runConfig) {
	cmd.Flags().StringVar(&rc.Listen, "listen", envOr("VIGIL_LISTEN", "127.0.0.1:8080"), "address to listen on (env VIGIL_LISTEN)")
	cmd.Flags().StringVar(&rc.DataDir, "data-dir", envOr("VIGIL_DATA_DIR", "./.vigil"), "directory for local state: key ring, demo database (env VIGIL_DATA_DIR)")
	cmd.Flags().StringVar(&rc.TrillianAddr, "trillian-addr", envOr("VIGIL_TRILLIAN_ADDR", ""), "external Trillian log server host:port; empty runs Trillian embedded (env VIGIL_TRILLIAN_ADDR)")
	addLimitFlags(cmd, &rc.Limits)
	cmd.PreRunE = func(cmd *cobra.Command, _ []string) error { return rc.Limits.fromEnv(cmd) }
	cmd.Flags().Var(&rc.WebhookAllowNets, "webhook-allow-net", "let webhooks reach this network (CIDR or address; repeatable), although loopback, private, link-local and CGNAT addresses are refused by default; e.g. 10.20.0.0/16 for an internal receiver (env VIGIL_WEBHOOK_ALLOW_NETS, comma-separated, used when no flag is given)")
}

func newServeCmd() *cobra.Command {
	var rc runConfig
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the Vigil server against the database at VIGIL_DATABASE_URL",
		Long: `Run the Vigil server: the REST API, the device upload endpoint and the audit chain.

The database is the one at VIGIL_DATABASE_URL (environment only: it may carry a password);
the server opens up to 16 connections to it unless the URL sets ?pool_max_conns=N.
Its schema must be within this binary's compatibility window: every expand migration of
this binary applied ('vigil migrate --phase expand'; its contract migrations may still be
pending), and nothing applied by a newer binary that refuses it (a newer version's
contract migration). serve refuses to start outside the window and says why.

SIGINT or SIGTERM drains, then shuts down: /readyz answers 503 at once (the load balancer
takes the replica out), new requests get 503 draining with Retry-After: 1 for
--drain-delay, live streams end (clients resume on another replica), then the listener
closes, requests in flight (uploads being stored) finish (up to 15 s), and every service
stops. With N replicas behind one load balancer, --replicas N makes each enforce 1/N of the
rejected-request limits, so that together they hold them. Running Vigil with several
replicas and rolling upgrades: docs/operations.md.

Webhooks carry patient alerts, so they reach public addresses only: a connection to a
loopback, private (RFC 1918, fc00::/7), link-local (169.254.0.0/16, the cloud metadata
service), CGNAT (100.64.0.0/10), multicast or reserved address is refused when it is dialed,
whatever DNS says; redirects are never followed and no HTTP(S)_PROXY is used. Allow an
internal receiver's network with --webhook-allow-net (repeatable).

Every request but the probes, sign-in and the devices' signed uploads needs a session
(POST /api/v1/auth/sign-in: password and TOTP; the cookie is Secure, __Host-vigil_session)
or a service account's API token, and is authorized by the one policy (docs/access.md).
Create the first administrator with 'vigil user add EMAIL --admin'. Single sign-on through
the hospital's OpenID provider is on when VIGIL_OIDC_ISSUER is set, with
VIGIL_OIDC_CLIENT_ID, VIGIL_OIDC_CLIENT_SECRET (or _FILE), VIGIL_OIDC_REDIRECT_URL,
VIGIL_OIDC_ROLES_CLAIM, VIGIL_OIDC_ROLE_MAP (JSON) and VIGIL_OIDC_REQUIRE_AMR;
VIGIL_OIDC_NAME names the provider on the portal's "Sign in with …" button. Passkeys
(WebAuthn) are on when VIGIL_WEBAUTHN_RP_ID (the portal's host name) and
VIGIL_WEBAUTHN_ORIGINS (its origins, comma-separated) are set.
VIGIL_SESSION_INSECURE=true drops the Secure cookie attribute (plain HTTP on loopback only).

Several replicas may serve one database behind a load balancer (health check: GET /readyz):
each patient's rules run on one replica at a time (leases in the database, taken over within
about 8 s when a replica is lost, given back at once on SIGTERM), device changes and the
live stream reach every replica, and retention runs on one of them (docs/architecture.md).

FHIR R4 is served at /fhir/R4 (read and search; CapabilityStatement at /fhir/R4/metadata),
with the same sessions, tokens and policy as the API (docs/interop.md). FHIR Subscriptions
(R4 backport, rest-hook: new vital signs and alarms) are delivered as signed webhooks, so
--webhook-allow-net applies to their endpoints too.` + interopHelp,
		Example: `  VIGIL_DATABASE_URL=postgres://vigil@db:5432/vigil vigil migrate
  VIGIL_DATABASE_URL=postgres://vigil@db:5432/vigil vigil serve --listen 0.0.0.0:8080
  vigil serve --webhook-allow-net 10.20.0.0/16 --webhook-allow-net fd12:3456::/48
  vigil serve --replicas 2 --drain-delay 6s --trust-proxy-headers   # behind HAProxy`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rc.DatabaseURL = envOrCtx(cmd.Context(), "VIGIL_DATABASE_URL", "")
			return run(cmd.Context(), rc, nil)
		},
	}
	addRunFlags(cmd, &rc)
	return cmd
}

// run wires the system, listens, and serves until ctx ends. ready, if not nil, is called with
// the server's URL once it accepts connections.
func run(ctx context.Context, rc runConfig, ready func(ctx context.Context, url string, sys *system) error) error {
	sys, err := wire(ctx, rc)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := sys.Close(cctx); err != nil {
			slog.Error("shutdown", slog.String("error", err.Error()))
		}
	}()
	ln, err := net.Listen("tcp", rc.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", rc.Listen, err)
	}
	url := "http://" + ln.Addr().String()
	slog.InfoContext(ctx, "vigil is listening", slog.String("url", url), slog.String("version", version))
	// Registered as a running replica, so that `vigil migrate --phase contract` does not remove
	// what this binary needs while it runs.
	set := rc.Schema
	if set == nil {
		set = schema.Embedded()
	}
	reg, err := schema.RegisterReplica(ctx, sys.pool, schema.Replica{Listen: ln.Addr().String(), Version: version, Latest: set.Latest()})
	if err != nil {
		ln.Close()
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = reg.Close(cctx)
	}()
	if ready != nil {
		if err := ready(ctx, url, sys); err != nil {
			ln.Close()
			return err
		}
	}
	err = sys.server.Serve(ctx, ln, 15*time.Second)
	slog.InfoContext(ctx, "server stopped")
	return err
}
