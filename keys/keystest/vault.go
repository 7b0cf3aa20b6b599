package keystest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// VaultServer is a Vault dev server started for a test: in memory, unsealed, on a free
// loopback port, with a random root token and the Transit engine mounted at "transit".
type VaultServer struct {
	Addr   string // http://127.0.0.1:<port>, or https:// for StartVaultTLS
	Token  string // root token
	CACert string // PEM file of the CA of the server's certificate (StartVaultTLS only)

	client *http.Client

	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len() > 1<<20 {
		return len(p), nil
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// VaultBinary finds the vault binary: $VIGIL_VAULT_BIN, else bin/vault in the module root
// (found by walking up from the working directory to go.mod; built by tools/vault/build.sh).
// It returns "" if there is none.
func VaultBinary() string {
	if p := os.Getenv("VIGIL_VAULT_BIN"); p != "" {
		return p
	}
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, "bin", "vault")
			if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
				return p
			}
			return ""
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// StartVault starts a Vault dev server for the test and stops it when the test ends. If there
// is no vault binary the test is skipped, unless VIGIL_REQUIRE_VAULT is set (as `make test`
// does), in which case it fails.
func StartVault(t testing.TB) *VaultServer {
	t.Helper()
	return start(t, false)
}

// StartVaultTLS is StartVault with TLS: the server has a certificate for 127.0.0.1 from a CA
// generated for it, whose PEM file is VaultServer.CACert.
func StartVaultTLS(t testing.TB) *VaultServer {
	t.Helper()
	return start(t, true)
}

func start(t testing.TB, useTLS bool) *VaultServer {
	t.Helper()
	bin := VaultBinary()
	if bin == "" {
		msg := "no vault binary: run tools/vault/build.sh (builds bin/vault) or set VIGIL_VAULT_BIN"
		if os.Getenv("VIGIL_REQUIRE_VAULT") != "" {
			t.Fatalf("VIGIL_REQUIRE_VAULT is set but %s", msg)
		}
		t.Skip(msg)
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ { // a free port may be taken meanwhile
		vs, err := startVault(t, bin, useTLS)
		if err == nil {
			return vs
		}
		lastErr = err
	}
	t.Fatalf("start vault dev server: %v", lastErr)
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startVault(t testing.TB, bin string, useTLS bool) (*VaultServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return nil, err
	}
	home := t.TempDir()
	vs := &VaultServer{
		Addr:  fmt.Sprintf("http://127.0.0.1:%d", port),
		Token: "root-" + hex.EncodeToString(tok),
		out:   &syncBuffer{},
		done:  make(chan struct{}),
	}
	args := []string{"server", "-dev",
		"-dev-listen-address=" + fmt.Sprintf("127.0.0.1:%d", port),
		"-dev-root-token-id=" + vs.Token,
		"-dev-no-store-token",
		"-log-level=warn"}
	vs.client = &http.Client{Timeout: 10 * time.Second}
	if useTLS {
		certDir := t.TempDir()
		args = append(args, "-dev-tls", "-dev-tls-cert-dir="+certDir)
		vs.Addr = fmt.Sprintf("https://127.0.0.1:%d", port)
		vs.CACert = filepath.Join(certDir, "vault-ca.pem")
	}
	cmd := exec.Command(bin, args...)
	env := []string{"HOME=" + home, "PATH=" + os.Getenv("PATH")}
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = vs.out, vs.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	vs.cmd = cmd
	go func() { _ = cmd.Wait(); close(vs.done) }()
	t.Cleanup(vs.stop)

	// Wait for it to answer (a readiness poll, not timing logic).
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		select {
		case <-vs.done:
			return nil, fmt.Errorf("vault exited early:\n%s", vs.out.String())
		case <-ctx.Done():
			vs.stop()
			return nil, fmt.Errorf("vault did not become ready:\n%s", vs.out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if useTLS && vs.client.Transport == nil {
			pemCA, err := os.ReadFile(vs.CACert)
			if err != nil {
				continue // not written yet
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pemCA) {
				continue
			}
			vs.client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
		}
		if vs.status(ctx, http.MethodGet, "/v1/sys/health", "") == http.StatusOK {
			break
		}
	}
	if code := vs.status(ctx, http.MethodPost, "/v1/sys/mounts/transit", `{"type":"transit"}`); code/100 != 2 {
		vs.stop()
		return nil, fmt.Errorf("enable transit: HTTP %d", code)
	}
	return vs, nil
}

func (vs *VaultServer) status(ctx context.Context, method, path, body string) int {
	req, err := http.NewRequestWithContext(ctx, method, vs.Addr+path, strings.NewReader(body))
	if err != nil {
		return 0
	}
	req.Header.Set("X-Vault-Token", vs.Token)
	resp, err := vs.client.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Do sends one request with the root token and decodes the JSON answer's "data" (for tests
// that set up policies, AppRole, or seal Vault). A non-2xx answer is an error.
func (vs *VaultServer) Do(ctx context.Context, method, path, body string) (map[string]any, error) {
	req, err := http.NewRequestWithContext(ctx, method, vs.Addr+path, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Vault-Token", vs.Token)
	resp, err := vs.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, raw)
	}
	var out struct {
		Data map[string]any `json:"data"`
	}
	if len(bytes.TrimSpace(raw)) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			return nil, fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	return out.Data, nil
}

// CreateToken makes a token with the given policies (and not the root policy).
func (vs *VaultServer) CreateToken(ctx context.Context, policies ...string) (string, error) {
	body, err := json.Marshal(map[string]any{"policies": policies, "no_default_policy": false, "ttl": "1h"})
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, vs.Addr+"/v1/auth/token/create", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("X-Vault-Token", vs.Token)
	resp, err := vs.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct {
		Auth struct {
			ClientToken string `json:"client_token"`
		} `json:"auth"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Auth.ClientToken == "" {
		return "", fmt.Errorf("create token: HTTP %d: %v", resp.StatusCode, err)
	}
	return out.Auth.ClientToken, nil
}

// Log returns what the server printed (for failure messages).
func (vs *VaultServer) Log() string { return vs.out.String() }

func (vs *VaultServer) stop() {
	if vs.cmd == nil || vs.cmd.Process == nil {
		return
	}
	select {
	case <-vs.done:
		return
	default:
	}
	_ = syscall.Kill(-vs.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-vs.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-vs.cmd.Process.Pid, syscall.SIGKILL)
		<-vs.done
	}
}
