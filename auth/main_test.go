package auth_test

import (
	"flag"
	"io"
	"log/slog"
	"os"
	"testing"
)

// TestMain quiets the in-process OpenID provider, which logs every request through the default
// logger, unless the run is verbose.
func TestMain(m *testing.M) {
	flag.Parse()
	if !testing.Verbose() {
		slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	}
	os.Exit(m.Run())
}
