package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/devices/sim"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// TestMain lets the HA test start real `vigil serve` processes from this test binary (so
// that they can be killed with SIGKILL): with VIGIL_HA_CHILD set, the binary is vigil, its
// arguments in VIGIL_HA_ARGS.
func TestMain(m *testing.M) {
	if os.Getenv("VIGIL_HA_CHILD") == "1" {
		os.Args = append([]string{"vigil"}, strings.Fields(os.Getenv("VIGIL_HA_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// haReplica is one `vigil serve` process.
type haReplica struct {
	cmd  *exec.Cmd
	url  string
	done chan error
}

func startServeProcess(t *testing.T, env map[string]string, dataDir, name string) *haReplica {
	t.Helper()
	port := freePort(t)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "VIGIL_HA_CHILD=1",
		"VIGIL_HA_ARGS=serve --listen 127.0.0.1:"+fmt.Sprint(port)+" --data-dir "+dataDir)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	logf, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &haReplica{cmd: cmd, url: fmt.Sprintf("http://127.0.0.1:%d", port), done: make(chan error, 1)}
	exited := make(chan struct{})
	go func() { err := cmd.Wait(); logf.Close(); r.done <- err; close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	if err := waitProcessReady(r.url+"/readyz", 60*time.Second, r.done); err != nil {
		b, _ := os.ReadFile(logf.Name())
		t.Fatalf("replica %s not ready: %v\n%s", name, err, b)
	}
	return r
}

func waitProcessReady(url string, within time.Duration, exited <-chan error) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("exited: %v", err)
		default:
		}
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond) // polling a process's readiness
	}
	return fmt.Errorf("%s not ready within %s", url, within)
}

// startHAProxy runs Debian's haproxy in front of the replicas, health-checking /readyz.
func startHAProxy(t *testing.T, backends ...string) string {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/haproxy"); serr == nil {
			bin = "/usr/sbin/haproxy"
		} else {
			t.Fatalf("haproxy not installed (.ci/ensure-haproxy installs Debian's): %v", err)
		}
	}
	port := freePort(t)
	var servers strings.Builder
	for i, b := range backends {
		fmt.Fprintf(&servers, "  server r%d %s check inter 300ms fall 2 rise 2\n", i, strings.TrimPrefix(b, "http://"))
	}
	cfg := fmt.Sprintf(`global
  maxconn 2000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  retries 3
  option redispatch
frontend fe
  bind 127.0.0.1:%d
  default_backend be
backend be
  balance roundrobin
  option httpchk GET /readyz
  retry-on conn-failure empty-response response-timeout
%s`, port, servers.String())
	dir := t.TempDir()
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-db", "-f", path)
	logf, err := os.Create(filepath.Join(dir, "haproxy.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := waitProcessReady(url+"/readyz", 20*time.Second, done); err != nil {
		b, _ := os.ReadFile(logf.Name())
		t.Fatalf("haproxy: %v\n%s", err, b)
	}
	return url
}

// Two `vigil serve` replicas on one database behind HAProxy, a fleet uploading through it;
// one replica is killed with SIGKILL mid-load. Every upload that got a receipt is stored,
// audited and evaluated; no alarm condition has two alarms open; the killed replica's
// patients are taken over (fail-over time logged, docs/benchmarks.md); `vigil audit verify`
// passes afterwards.
// Verifies: REQ-HA-001, REQ-HA-003, REQ-HA-008, REQ-HA-010, REQ-HA-030
func TestHAKillReplicaUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two servers and haproxy for about a minute; run without -short")
	}
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	// A fresh local key ring: the first replica makes its keys (so that every audit event
	// is authenticated), the second opens them.
	const pass = "a passphrase for the HA test"
	dir := t.TempDir()
	cheapLocalRing(t, dir, pass)
	env := map[string]string{"VIGIL_DATABASE_URL": url, "VIGIL_KEYRING_PASSPHRASE": pass, "VIGIL_VAULT_ADDR": ""}
	ctx := context.Background()
	a := startServeProcess(t, env, dir, "a")
	b := startServeProcess(t, env, dir, "b")
	lb := startHAProxy(t, a.url, b.url)
	nameA := replicaName(t, pool, a.cmd.Process.Pid)

	// The fleet: provisioned in the database, uploading over HTTP through the load balancer.
	db, err := openDB(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ring, closeRing, err := openKeyRing(withEnv(ctx, env), dir, false, db.rec, false)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = closeRing(ctx) }()
	prov, closeProv, err := simProvisioner(ctx, db.pool, db.rec, ring.PHI())
	if err != nil {
		t.Fatal(err)
	}
	defer closeProv()
	sc, _ := sim.ParseScenario("mixed")
	cfg := sim.Config{Patients: 10, Rate: 2, Duration: 25 * time.Second, Scenario: sc, Seed: 7, Ramp: 8 * time.Second,
		OfflineAfter: time.Hour, OfflineFor: time.Minute, Provisioner: prov}
	if err := simTransport(ctx, &cfg, lb, "", ""); err != nil {
		t.Fatal(err)
	}
	var res sim.Result
	var simErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); res, simErr = sim.Run(ctx, cfg) }()

	time.Sleep(10 * time.Second) // mid-load
	killed := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Fail-over: until every bucket of the killed replica is held by the survivor.
	var failover time.Duration
	for failover == 0 {
		var left int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM rules_leases WHERE owner = $1`, nameA).Scan(&left); err != nil {
			t.Fatal(err)
		}
		if left == 0 {
			failover = time.Since(killed)
			break
		}
		if time.Since(killed) > 60*time.Second {
			t.Fatalf("the killed replica's buckets not taken over within 60 s")
		}
		time.Sleep(50 * time.Millisecond) // measuring the fail-over
	}
	t.Logf("fail-over: the killed replica's patients owned by the survivor %s after the kill", failover.Round(10*time.Millisecond))
	wg.Wait()
	if simErr != nil {
		t.Fatalf("sim.Run() = %v", simErr)
	}
	t.Logf("fleet: %s", strings.ReplaceAll(res.Summary(), "\n", "; "))
	if res.Accepted != res.Uploads || res.Pending != 0 || len(res.Rejected) != 0 {
		t.Errorf("fleet: %d uploads, %d with a receipt, %d pending, rejected %v; want every upload receipted", res.Uploads, res.Accepted, res.Pending, res.Rejected)
	}

	// The survivor stops gracefully (its last checkpoint written), then the database is checked.
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.done:
	case <-time.After(60 * time.Second):
		t.Fatal("the survivor did not stop within 60 s of SIGTERM")
	}
	count := func(q string, args ...any) int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, q, args...).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}
	if n := count(`SELECT count(*) FROM core_uploads`); n != res.Accepted {
		t.Errorf("uploads stored = %d, want %d (one per receipt)", n, res.Accepted)
	}
	if n := count(`SELECT count(*) FROM audit_events WHERE action = 'upload.accepted'`); n != res.Accepted {
		t.Errorf("upload.accepted audit events = %d, want %d", n, res.Accepted)
	}
	if n := count(`SELECT count(*) FROM rules_inbox`); n != 0 {
		t.Errorf("inbox rows never evaluated = %d, want 0", n)
	}
	// Evaluated: every patient's state is checkpointed through its newest observation.
	if n := count(`SELECT count(*) FROM (SELECT patient_id, max(effective_at) AS last FROM core_observations GROUP BY 1) o
		LEFT JOIN rules_patient_state s USING (patient_id) WHERE s.evaluated_through IS NULL OR s.evaluated_through < o.last`); n != 0 {
		t.Errorf("%d patients not evaluated through their newest observation", n)
	}
	if n := count(`SELECT count(*) FROM (SELECT 1 FROM alarms WHERE state <> 'resolved' GROUP BY patient_id, rule_id HAVING count(*) > 1) d`); n != 0 {
		t.Errorf("%d alarm conditions with more than one open alarm", n)
	}
	if n := count(`SELECT count(*) FROM alarms`); n == 0 {
		t.Errorf("no alarm raised by the mixed fleet: the test shows nothing")
	}

	// The audit trail written by both replicas, one of them killed mid-write, verifies:
	// every upload.accepted event is proven in the log.
	vout, err := executeEnv(t, env, "audit", "verify", "--json", "--data-dir", dir)
	var rep chain.Report
	if jerr := json.Unmarshal([]byte(vout), &rep); err != nil || jerr != nil || !rep.OK {
		t.Fatalf("vigil audit verify after the kill = %v\n%s", err, vout)
	}
	if n := count(`SELECT count(*) FROM audit_events WHERE action = 'upload.accepted'`); rep.ProvenEvents < int64(n) {
		t.Errorf("vigil audit verify: %d events proven in the log, want at least the %d upload.accepted events", rep.ProvenEvents, n)
	}
}

// replicaName is the lease replica name of the serve process with pid.
func replicaName(t *testing.T, pool *pgxpool.Pool, pid int) string {
	t.Helper()
	var name string
	if err := pool.QueryRow(context.Background(), `SELECT replica FROM rules_replicas WHERE replica LIKE '%-' || $1 || '-%'`, fmt.Sprint(pid)).Scan(&name); err != nil {
		t.Fatalf("replica of pid %d: %v", pid, err)
	}
	return name
}

// deployHAProxy is Debian's haproxy run with the repository's deploy/haproxy.cfg, changed
// only where a test on loopback must: it listens on a loopback port without TLS, its servers
// are the given replicas, the health checks run every inter instead of 2 s, maxconn fits a
// test's file limit, and a stats page tells the test which servers are in rotation.
type deployHAProxy struct {
	URL   string // the frontend
	stats string // the stats page, CSV
	names []string
}

func startDeployHAProxy(t *testing.T, inter string, backends ...string) *deployHAProxy {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/haproxy"); serr != nil {
			t.Fatalf("haproxy not installed (.ci/ensure-haproxy installs Debian's): %v", err)
		}
		bin = "/usr/sbin/haproxy"
	}
	raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	port, sport := freePort(t), freePort(t)
	hp := &deployHAProxy{URL: fmt.Sprintf("http://127.0.0.1:%d", port), stats: fmt.Sprintf("http://127.0.0.1:%d/stats;csv", sport)}
	var out []string
	replaced := map[string]bool{}
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) > 0 && f[0] == "bind":
			line, replaced["bind"] = fmt.Sprintf("    bind 127.0.0.1:%d", port), true
		case len(f) > 0 && f[0] == "maxconn":
			line, replaced["maxconn"] = "    maxconn 2000", true
		case len(f) > 0 && f[0] == "default-server":
			line, replaced["default-server"] = strings.Replace(line, "inter 2s", "inter "+inter, 1), strings.Contains(line, "inter 2s")
		case len(f) > 0 && f[0] == "server":
			if !replaced["server"] {
				for i, b := range backends {
					name := string(rune('a' + i))
					hp.names = append(hp.names, name)
					out = append(out, fmt.Sprintf("    server %s %s check", name, strings.TrimPrefix(b, "http://")))
				}
			}
			replaced["server"] = true
			continue
		}
		out = append(out, line)
	}
	for _, k := range []string{"bind", "maxconn", "default-server", "server"} {
		if !replaced[k] {
			t.Fatalf("deploy/haproxy.cfg: no %q line as the test expects; update startDeployHAProxy", k)
		}
	}
	out = append(out, "", "frontend stats", fmt.Sprintf("    bind 127.0.0.1:%d", sport), "    stats enable", "    stats uri /stats", "")
	dir := t.TempDir()
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(strings.Join(out, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-db", "-f", path)
	logf, err := os.Create(filepath.Join(dir, "haproxy.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	if err := waitProcessReady(hp.stats, 20*time.Second, done); err != nil {
		b, _ := os.ReadFile(logf.Name())
		t.Fatalf("haproxy: %v\n%s", err, b)
	}
	return hp
}

// up reports, for each server, whether HAProxy has it in rotation (status UP, not the
// transitions "UP 1/2" or "DOWN 1/2").
func (hp *deployHAProxy) up(t *testing.T) map[string]bool {
	t.Helper()
	resp, err := http.Get(hp.stats)
	if err != nil {
		t.Fatalf("haproxy stats: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	lines := strings.Split(strings.TrimSpace(string(body)), "\n")
	header := strings.Split(strings.TrimPrefix(lines[0], "# "), ",")
	col := slices.Index(header, "status")
	if col < 0 {
		t.Fatalf("haproxy stats without a status column: %s", lines[0])
	}
	out := map[string]bool{}
	for _, l := range lines[1:] {
		f := strings.Split(l, ",")
		if len(f) > col && f[0] == "vigil" && slices.Contains(hp.names, f[1]) {
			out[f[1]] = f[col] == "UP"
		}
	}
	return out
}

// uploadAnswers counts the answers the devices get to their uploads (a RoundTripper around
// the devices' HTTP client): "201", "503 draining", "503 " (HAProxy's own, no JSON), …
type uploadAnswers struct {
	next    http.RoundTripper
	mu      sync.Mutex
	answers map[string]int
	noRetry int      // 503s without Retry-After
	errs    []string // requests with no answer
}

func (u *uploadAnswers) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := u.next.RoundTrip(r)
	if r.URL.Path != "/api/v1/uploads" {
		return resp, err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.answers == nil {
		u.answers = map[string]int{}
	}
	if err != nil {
		u.errs = append(u.errs, err.Error())
		return resp, err
	}
	key := strconv.Itoa(resp.StatusCode)
	if resp.StatusCode >= 400 {
		b, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(b))
		if rerr != nil {
			u.errs = append(u.errs, rerr.Error())
		}
		var e struct {
			Error struct{ Code string } `json:"error"`
		}
		_ = json.Unmarshal(b, &e)
		key += " " + e.Error.Code
		if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
			u.noRetry++
		}
	}
	u.answers[key]++
	return resp, nil
}
