package chain_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// trillianBin finds one of Trillian's own binaries in <module root>/bin (built by
// tools/trillian/build.sh). Without it the test skips, unless VIGIL_REQUIRE_TRILLIAN_BINS=1
// (set by `make test`), when it fails.
func trillianBin(t *testing.T, name string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("module root not found")
		}
		dir = parent
	}
	p := filepath.Join(dir, "bin", name)
	if _, err := os.Stat(p); err != nil {
		msg := "no " + p + ": run tools/trillian/build.sh"
		if os.Getenv("VIGIL_REQUIRE_TRILLIAN_BINS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startProcess runs a Trillian binary until the test ends.
func startProcess(t *testing.T, bin string, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(bin), out.String())
		}
	})
}

// With --trillian-addr Vigil talks to an external Trillian (Trillian's own log server and
// log signer, on the test database) through the same code as the embedded one.
// Verifies: REQ-AUD-004, REQ-AUD-007
func TestExternalTrillian(t *testing.T) {
	t.Parallel()
	server := trillianBin(t, "trillian_log_server")
	signer := trillianBin(t, "trillian_log_signer")
	pool, url := testdb.NewWithURL(t)
	trillURL := url + "&search_path=trillian"
	addr := freeAddr(t)
	startProcess(t, server, "--rpc_endpoint="+addr, "--http_endpoint=", "--storage_system=postgresql",
		"--postgresql_uri="+trillURL, "--quota_system=noop")
	startProcess(t, signer, "--rpc_endpoint="+freeAddr(t), "--http_endpoint=", "--storage_system=postgresql",
		"--postgresql_uri="+trillURL, "--quota_system=noop", "--force_master", "--sequencer_interval=20ms")

	ctx := context.Background()
	var svc *chain.Service
	rec := audittest.Recorder(t, pool, nil)
	deadline := time.Now().Add(30 * time.Second)
	for {
		octx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var err error
		svc, err = chain.OpenIdle(octx, chain.Config{Pool: pool, Recorder: rec, EventKeys: rec.EventKeys(), TrillianAddr: addr, Signer: newSigner(t), BatchSize: 4, Logger: quiet})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("OpenIdle(external %s) error = %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond) // waiting for the external server to listen
	}
	t.Cleanup(func() { _ = svc.Close(context.Background()) })
	if svc.TrillianAddr() != addr {
		t.Errorf("TrillianAddr() = %q, want %q", svc.TrillianAddr(), addr)
	}
	c := &rig{pool: pool, url: url, rec: rec, log: svc.Log(), shipper: svc.Shipper()}
	c.record(t, 10)
	c.shipAll(t)
	if _, err := svc.CheckpointNow(ctx); err != nil {
		t.Fatal(err)
	}
	if got := treeSize(t, c); got != 3 { // 10 events in batches of ≤ 4
		t.Errorf("external tree size = %d, want 3", got)
	}
	r := verify(t, svc)
	if !r.OK || r.ProvenEvents != 10 {
		t.Errorf("Verify() against external Trillian = ok %v, proven %d, findings %+v", r.OK, r.ProvenEvents, r.Findings)
	}
}
