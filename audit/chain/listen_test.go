package chain_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/trillian"

	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// The embedded Trillian's gRPC services (TrillianAdmin can create and delete trees, with no
// credentials) are reachable only through a Unix socket that only this user can open, in a
// private directory removed at Close; a network address is refused.
// Verifies: REQ-AUD-012
func TestAdminOnlyOnPrivateUnixSocket(t *testing.T) {
	_, url := testdb.NewWithURL(t)
	ctx := context.Background()
	for _, listen := range []string{"127.0.0.1:0", "0.0.0.0:8090", "[::1]:0"} {
		if s, err := chain.StartEmbedded(ctx, chain.EmbedConfig{DatabaseURL: url, Listen: listen, NoSequencer: true}); err == nil {
			s.Close(ctx)
			t.Errorf("Start(Listen %q) error = nil, want a refusal of network addresses", listen)
		}
	}

	s, err := chain.StartEmbedded(ctx, chain.EmbedConfig{DatabaseURL: url, NoSequencer: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	path, ok := strings.CutPrefix(s.Addr(), "unix:")
	if !ok {
		t.Fatalf("Addr() = %q, want unix:<path>", s.Addr())
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s mode = %v, want a socket with mode 0600", path, fi.Mode())
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("socket directory mode = %v, want 0700", di.Mode().Perm())
	}
	cc, err := s.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := trillian.NewTrillianAdminClient(cc).ListTrees(ctx, &trillian.ListTreesRequest{}); err != nil {
		t.Fatalf("ListTrees over the socket: %v", err)
	}
	cc.Close()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(path)); !os.IsNotExist(err) {
		t.Errorf("socket directory after Close: stat error = %v, want it removed", err)
	}

	// An explicit socket path (the restart of a log server at a known place).
	at := "unix:" + filepath.Join(t.TempDir(), "sub", "trillian.sock")
	s2, err := chain.StartEmbedded(ctx, chain.EmbedConfig{DatabaseURL: url, Listen: at, NoSequencer: true})
	if err != nil {
		t.Fatalf("Start(Listen %q) error = %v", at, err)
	}
	defer s2.Close(ctx)
	if s2.Addr() != at {
		t.Errorf("Addr() = %q, want %q", s2.Addr(), at)
	}
}
