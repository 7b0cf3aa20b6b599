// Command vigil is the one binary of Vigil: the server, the demo, migrations, and the tools of
// the audit chain and the quality system. Run `vigil --help` for the commands.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/internal/klogslog"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// exitError carries a specific exit code out of a command (e.g. 1 for "verify found a problem").
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return
	}
	fmt.Fprintln(os.Stderr, "vigil:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		os.Exit(ee.code)
	}
	os.Exit(2)
}

// subcommands is filled by each area's file (cmd/vigil/<area>.go) in an init function, so
// areas add commands without editing this file.
var subcommands []func() *cobra.Command

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "vigil",
		Short: "Vigil: signed telemetry from medical devices, clinical alerts, and a provable audit trail",
		Long: `Vigil takes signed telemetry from medical devices, watches patients and raises clinical
alerts, and writes every action it takes to a Trillian transparency log, so that an auditor
can prove at any time what the system did.

Configuration comes from flags and VIGIL_* environment variables; secrets (the database URL
with its password, Vault tokens, passphrases) come from the environment only, never flags.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().String("log-level", envOr("VIGIL_LOG_LEVEL", "info"), "log level: debug, info, warn, error (env VIGIL_LOG_LEVEL)")
	root.PersistentFlags().String("log-format", envOr("VIGIL_LOG_FORMAT", "text"), "log format: text or json (env VIGIL_LOG_FORMAT)")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		lvl, _ := cmd.Flags().GetString("log-level")
		format, _ := cmd.Flags().GetString("log-format")
		l, err := newLogger(lvl, format)
		if err != nil {
			return err
		}
		if fixedLogging(cmd.Context()) {
			return nil
		}
		slog.SetDefault(l)
		klogslog.Route(l) // Trillian logs through klog
		return nil
	}
	root.AddCommand(newServeCmd(), newDemoCmd(), newMigrateCmd(), newVersionCmd())
	for _, f := range subcommands {
		root.AddCommand(f())
	}
	return root
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of this binary and the schema version it carries",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "vigil %s (schema %d)\n", version, latestSchema())
			return nil
		},
	}
}
