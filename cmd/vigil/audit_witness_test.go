package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/witness"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// `vigil audit witness` keeps its key in a file (the same key on every start), prints its
// verifier key, serves C2SP add-checkpoint (an unknown log is 404) and stops with its
// context; witness specs are checked.
// Verifies: REQ-AUD-046
func TestAuditWitnessCommand(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	out1, err := execute(t, "audit", "witness", "--name", "witness.test", "--key-file", keyFile, "--print-key")
	if err != nil {
		t.Fatal(err)
	}
	out2, err := execute(t, "audit", "witness", "--name", "witness.test", "--key-file", keyFile, "--print-key")
	if err != nil || out1 != out2 {
		t.Fatalf("--print-key twice = %q, %q (%v); want the same key", out1, out2, err)
	}
	vkey := strings.TrimSpace(out1)
	if _, err := witness.NewVerifier(vkey); err != nil {
		t.Fatalf("printed key %q: %v", vkey, err)
	}
	if ws, err := parseWitnesses([]string{vkey + "@http://w.example", vkey}); err != nil || len(ws) != 2 || ws[0].URL != "http://w.example" || ws[1].URL != "" {
		t.Errorf("parseWitnesses() = %+v, %v", ws, err)
	}
	if _, err := parseWitnesses([]string{"not-a-key@http://x"}); err == nil {
		t.Error("parseWitnesses(bad key) error = nil")
	}

	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	logKey, err := chain.VerifierKey("vigil.audit/x", pub)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	root := newRoot()
	var out syncBuffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"audit", "witness", "--name", "witness.test", "--key-file", keyFile, "--listen", "127.0.0.1:0",
		"--state", filepath.Join(dir, "state.json"),
		"--log", "vigil.audit/x=" + logKey})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	re := regexp.MustCompile(`listening on (\S+)`)
	var addr string
	for deadline := time.Now().Add(10 * time.Second); addr == "" && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			addr = m[1]
		}
	}
	if addr == "" {
		cancel()
		t.Fatalf("witness did not start: %s %v", out.String(), <-done)
	}
	resp, err := http.Post("http://"+addr+"/add-checkpoint", "text/plain", strings.NewReader("old 0\n\nsomeone.else/log\n1\nAAAA\n\n— x y\n"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("add-checkpoint of an unknown log = %d, want 404", resp.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("witness after cancel: %v", err)
	}
}
