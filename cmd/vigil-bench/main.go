// Command vigil-bench holds Vigil's load generators, kept out of the shipped vigil binary:
// `vigil-bench uploads` (signed uploads end to end over HTTP, through the real rules engine),
// `vigil-bench audit` (the audit chain from Record to integration in the transparency log)
// and `vigil-bench streams` (portal live sessions held while devices upload: upload → stream
// latency, missed events). Each creates a throwaway database on the PostgreSQL server of VIGIL_DATABASE_URL and
// drops it afterwards. docs/benchmarks.md gives the figures and the commands that reproduce
// them.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/internal/klogslog"
	"github.com/vigilhealth/vigil/keys"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRoot().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "vigil-bench:", err)
		os.Exit(2)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "vigil-bench",
		Short: "Vigil's load generators (not part of the shipped vigil binary)",
		Long: `Load generators for Vigil's performance figures (docs/benchmarks.md). Each runs the real
stack in this process against a throwaway database it creates on the PostgreSQL server of
VIGIL_DATABASE_URL (which must allow CREATE DATABASE) and drops afterwards.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().String("log-level", envOr("VIGIL_LOG_LEVEL", "warn"), "log level: debug, info, warn, error (env VIGIL_LOG_LEVEL)")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		lvl, _ := cmd.Flags().GetString("log-level")
		var lv slog.Level
		if err := lv.UnmarshalText([]byte(lvl)); err != nil {
			return fmt.Errorf("--log-level %q: want debug, info, warn or error", lvl)
		}
		l := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
		slog.SetDefault(l)
		klogslog.Route(l) // the embedded Trillian logs through klog
		return nil
	}
	root.AddCommand(newUploadsCmd(), newAuditCmd(), newStreamsCmd())
	return root
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

func adminURL() (string, error) {
	admin := envOr("VIGIL_DATABASE_URL", "")
	if admin == "" {
		return "", errors.New("VIGIL_DATABASE_URL is not set (a server where the benchmark may CREATE DATABASE)")
	}
	return admin, nil
}

func adminSQL(ctx context.Context, url, sql string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparseable)"
	}
	return u.Redacted()
}

// benchRing opens a local key ring in a temporary directory with every key Vigil uses.
func benchRing(ctx context.Context) (_ *keys.Ring, closeRing func(), err error) {
	dir, err := os.MkdirTemp("", "vigil-bench-keys-")
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	local, err := keys.NewLocal(keys.LocalConfig{Dir: dir, Passphrase: []byte("vigil bench"), ScryptN: 1 << 12})
	if err != nil {
		return nil, nil, err
	}
	ring, err := keys.NewRing(keys.Config{Backend: local})
	if err != nil {
		return nil, nil, err
	}
	if _, err := ring.EnsureKeys(ctx); err != nil {
		ring.Close()
		return nil, nil, err
	}
	return ring, func() { ring.Close(); os.RemoveAll(dir) }, nil
}
