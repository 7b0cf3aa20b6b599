package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/devices/sim"
	"github.com/vigilhealth/vigil/internal/schema"
	"github.com/vigilhealth/vigil/internal/schema/schematest"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// rollingLB is the test's load balancer, doing what deploy/haproxy.cfg asks of HAProxy: a
// health check of GET /readyz on every backend (every 200 ms; out of rotation after two
// failures in a row, back after two successes: fall 2, rise 2), round robin over the healthy ones, and a request whose
// connection fails or that is answered 503 redispatched, three attempts in all (`retries 2`,
// `retry-on conn-failure empty-response 503`, `option redispatch`); when every attempt is
// refused, the last answer (a 503 draining) reaches the client unchanged. It counts every backend's
// answers to uploads by status and code, and the answers the devices got.
type rollingLB struct {
	backends []string
	healthy  []atomic.Bool
	next     atomic.Uint64
	tr       *http.Transport

	mu      sync.Mutex
	answers map[string]int // backends' answers to POST /api/v1/uploads: "201", "503 draining", …
	clients map[string]int // the answers the devices got
	noRetry int            // backends' 503s without Retry-After
	errs    []string       // connections that failed
}

func newRollingLB(ctx context.Context, backends ...string) *rollingLB {
	lb := &rollingLB{backends: backends, healthy: make([]atomic.Bool, len(backends)),
		tr: &http.Transport{MaxIdleConnsPerHost: 16}, answers: map[string]int{}, clients: map[string]int{}}
	go func() {
		cl := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		streak := make([]int, len(lb.backends)) // > 0: successes in a row; < 0: failures
		for {
			for i, b := range lb.backends {
				resp, err := cl.Get(b + "/readyz")
				ok := err == nil && resp.StatusCode == http.StatusOK
				if err == nil {
					resp.Body.Close()
				}
				switch {
				case ok && streak[i] < 0, !ok && streak[i] > 0:
					streak[i] = 0
				}
				if ok {
					streak[i]++
				} else {
					streak[i]--
				}
				switch { // fall 2, rise 2
				case streak[i] >= 2:
					lb.healthy[i].Store(true)
				case streak[i] <= -2:
					lb.healthy[i].Store(false)
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return lb
}

func (lb *rollingLB) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	n := len(lb.backends)
	start := int(lb.next.Add(1))
	const attempts = 3 // HAProxy: retries 2
	tries := 0
	for i := 0; i < 2*n && tries < attempts; i++ {
		k := (start + i) % n
		if !lb.healthy[k].Load() {
			continue
		}
		tries++
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, lb.backends[k]+r.URL.RequestURI(), bytes.NewReader(body))
		req.Header = r.Header.Clone()
		resp, err := lb.tr.RoundTrip(req)
		if err != nil {
			lb.mu.Lock()
			lb.errs = append(lb.errs, fmt.Sprintf("%s: %v", lb.backends[k], err))
			lb.mu.Unlock()
			continue // connection refused or reset: redispatch; the health checks decide who is down
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		upload := r.URL.Path == "/api/v1/uploads"
		if upload {
			lb.count(lb.answers, resp.StatusCode, resp.Header.Get("Retry-After"), b)
		}
		if resp.StatusCode == http.StatusServiceUnavailable && tries < attempts {
			continue // retry-on 503: redispatch
		}
		if upload {
			lb.count(lb.clients, resp.StatusCode, resp.Header.Get("Retry-After"), b)
		}
		for h, v := range resp.Header {
			w.Header()[h] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = w.Write(b)
		return
	}
	// No backend answered: HAProxy's own 503 (Retry-After added by deploy/haproxy.cfg).
	if r.URL.Path == "/api/v1/uploads" {
		lb.count(lb.clients, http.StatusServiceUnavailable, "1", []byte(`{"error":{"code":"no_backend"}}`))
	}
	w.Header().Set("Retry-After", "1")
	http.Error(w, `{"error":{"code":"service_unavailable","message":"no server available"}}`, http.StatusServiceUnavailable)
}

func (lb *rollingLB) count(into map[string]int, status int, retryAfter string, body []byte) {
	key := strconv.Itoa(status)
	if status >= 400 {
		var e struct {
			Error struct{ Code string } `json:"error"`
		}
		_ = json.Unmarshal(body, &e)
		key += " " + e.Error.Code
	}
	lb.mu.Lock()
	defer lb.mu.Unlock()
	into[key]++
	if status == http.StatusServiceUnavailable && retryAfter == "" {
		lb.noRetry++
	}
}

func waitReady(t *testing.T, base string) {
	t.Helper()
	var last string
	for range 100 {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s not ready after 10 s: %s", base, last)
}

// replica is one `vigil serve` of the test, on a fixed port (a restart takes the same one, as
// a replaced binary behind a load balancer does).
type replica struct {
	cancel context.CancelFunc
	done   chan error
	sys    *system
}

func startReplica(t *testing.T, env map[string]string, rc runConfig) *replica {
	t.Helper()
	ctx, cancel := context.WithCancel(withEnv(context.Background(), env))
	r := &replica{cancel: cancel, done: make(chan error, 1)}
	up := make(chan struct{})
	go func() {
		r.done <- run(ctx, rc, func(_ context.Context, _ string, sys *system) error { r.sys = sys; close(up); return nil })
	}()
	select {
	case <-up:
	case err := <-r.done:
		cancel()
		t.Fatalf("replica on %s did not start: %v", rc.Listen, err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatalf("replica on %s did not start in 60 s", rc.Listen)
	}
	return r
}

// stop sends the replica SIGTERM's equivalent (its context ends) and waits for it to drain
// and exit.
func (r *replica) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("replica exit: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("replica did not exit in 60 s")
	}
}

// A rolling upgrade from version N to N+1 under a fleet uploading through a load balancer.
// N is this tree's binary; N+1 is the same code with the next version's migrations
// (internal/schema/schematest: 00811 expand, 00812 contract), which is what a schema change
// between versions is to `vigil serve`. Two replicas of N serve; the expand phase is applied
// under them; each replica in turn drains (SIGTERM) and is replaced by N+1 on the same port
// (the contract phase is refused while a replica of N still runs); the contract phase is
// applied; then N refuses to start. The fleet's every upload is stored
// with a verified receipt, none is refused but with a retryable 503 and Retry-After, and the
// uploads' p99 latency is logged. The long soak variant: VIGIL_UPGRADE_SOAK=10m (docs/operations.md).
// Verifies: REQ-HA-021
// Verifies: REQ-HA-023
// Verifies: REQ-HA-025
func TestRollingUpgradeUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("starts four servers; run without -short")
	}
	soak := 0 * time.Second
	if v := os.Getenv("VIGIL_UPGRADE_SOAK"); v != "" { // the long variant, documented
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("VIGIL_UPGRADE_SOAK=%q: %v", v, err)
		}
		soak = d
	}
	pool, url := testdb.NewWithURL(t)
	// The local key ring, its keys created by the first replica. (Not by `vigil keys init`
	// beforehand: the key.create events of that command's audit session were refused by the
	// serving replica's shipper as unauthenticated, an audit_incident that keeps readiness
	// red — an issue of the keys/audit areas, reported, not worked on here.)
	const pass = "a passphrase for the rolling upgrade"
	dir := t.TempDir()
	cheapLocalRing(t, dir, pass)
	env := map[string]string{"VIGIL_DATABASE_URL": url, "VIGIL_KEYRING_PASSPHRASE": pass, "VIGIL_VAULT_ADDR": ""}
	next, err := schema.Embedded().Plus(schematest.Next())
	if err != nil {
		t.Fatal(err)
	}
	ports := []string{freeTestPort(t), freeTestPort(t)}
	rcFor := func(i int, set *schema.Set) runConfig {
		rc := runConfig{Listen: "127.0.0.1:" + ports[i], DataDir: dir, DatabaseURL: url, Schema: set}
		rc.Limits.DrainDelay = time.Second // the balancer's fall 2 × 200 ms, with a margin for a loaded machine
		rc.Limits.Replicas = 2
		return rc
	}
	// The first replica creates the audit log; the second starts once it is ready.
	reps := []*replica{startReplica(t, env, rcFor(0, nil))}
	waitReady(t, "http://127.0.0.1:"+ports[0])
	reps = append(reps, startReplica(t, env, rcFor(1, nil)))
	defer func() {
		for _, r := range reps {
			r.cancel()
			<-r.done
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lb := newRollingLB(ctx, "http://127.0.0.1:"+ports[0], "http://127.0.0.1:"+ports[1])
	front := httptest.NewServer(lb)
	defer front.Close()
	for i := 0; !lb.healthy[0].Load() || !lb.healthy[1].Load(); i++ {
		if i == 100 {
			for _, p := range ports {
				if resp, err := http.Get("http://127.0.0.1:" + p + "/readyz"); err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					t.Logf("readyz of %s: %d %s", p, resp.StatusCode, b)
				}
			}
			t.Fatal("the replicas are not ready after 10 s")
		}
		time.Sleep(100 * time.Millisecond)
	}

	prov, closeProv, err := simProvisioner(ctx, pool, reps[0].sys.rec, reps[0].sys.keys.PHI())
	if err != nil {
		t.Fatal(err)
	}
	defer closeProv()
	cfg := sim.Config{Patients: 6, Rate: 2, Duration: 16*time.Second + soak, Scenario: sim.Stable, Seed: 7, Provisioner: prov}
	if err := simTransport(ctx, &cfg, front.URL, "", ""); err != nil {
		t.Fatal(err)
	}
	type outcome struct {
		res sim.Result
		err error
	}
	fleet := make(chan outcome, 1)
	began := time.Now()
	go func() {
		res, err := sim.Run(ctx, cfg)
		fleet <- outcome{res, err}
	}()
	at := func(d time.Duration) { time.Sleep(time.Until(began.Add(d))) }
	step := func(what string) { t.Logf("%5.1fs %s", time.Since(began).Seconds(), what) }

	at(2*time.Second + soak/4)
	applied, err := next.Apply(ctx, pool, schema.PhaseExpand)
	if err != nil || len(applied) != 1 || applied[0].Version != 811 {
		t.Fatalf("expand phase: %v, %v", applied, err)
	}
	step("expand phase applied (00811) under two replicas of N")
	for i := range reps {
		at(time.Duration(4+4*i)*time.Second + soak*time.Duration(2+i)/4)
		reps[i].stop(t)
		step(fmt.Sprintf("replica %d (N) drained and exited", i))
		reps[i] = startReplica(t, env, rcFor(i, next))
		for k := 0; !lb.healthy[i].Load(); k++ { // the balancer has it back in rotation
			if k == 200 {
				t.Fatalf("replica %d (N+1) not back in rotation after 20 s", i)
			}
			time.Sleep(100 * time.Millisecond)
		}
		step(fmt.Sprintf("replica %d (N+1) ready and in rotation", i))
		if i == 0 { // replica 1 still runs N: the contract phase must wait for it
			if _, err := next.Apply(ctx, pool, schema.PhaseContract); !errors.Is(err, schema.ErrPhaseOrder) {
				t.Errorf("contract phase with a replica of N running: %v, want ErrPhaseOrder", err)
			}
		}
	}
	at(12*time.Second + soak)
	applied, err = next.Apply(ctx, pool, schema.PhaseContract)
	if err != nil || len(applied) != 1 || applied[0].Version != 812 {
		t.Fatalf("contract phase: %v, %v", applied, err)
	}
	step("contract phase applied (00812) under two replicas of N+1")
	old := rcFor(0, nil)
	old.Listen = "127.0.0.1:0"
	if err := run(withEnv(ctx, env), old, nil); !errors.Is(err, schema.ErrSchemaAhead) {
		t.Errorf("N after the contract phase: %v, want ErrSchemaAhead", err)
	}

	out := <-fleet
	step("fleet done")
	res := out.res
	t.Logf("%s", res.Summary())
	lb.mu.Lock()
	answers, clients, noRetry := lb.answers, lb.clients, lb.noRetry
	lb.mu.Unlock()
	t.Logf("replicas' answers to uploads: %v; answers the devices got: %v; failed connections: %d %v", answers, clients, len(lb.errs), lb.errs)
	if out.err != nil {
		t.Fatalf("fleet: %v", out.err)
	}
	if res.Uploads == 0 || res.Accepted != res.Uploads || res.Pending != 0 || len(res.Rejected) != 0 {
		t.Errorf("fleet: %d uploads, %d accepted, %d pending, refused %v; want every upload accepted", res.Uploads, res.Accepted, res.Pending, res.Rejected)
	}
	for _, m := range []map[string]int{answers, clients} {
		for a, n := range m {
			if a != "200" && a != "201" && a != "503 draining" && a != "503 no_backend" {
				t.Errorf("%d upload(s) answered %q: only success or a retryable 503 is allowed during the upgrade", n, a)
			}
		}
	}
	if noRetry > 0 {
		t.Errorf("%d 503 answer(s) without Retry-After", noRetry)
	}
	var stored int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM devices_uploads").Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored != res.Accepted {
		t.Errorf("%d uploads stored, %d receipts verified by the fleet; want the same", stored, res.Accepted)
	}
	t.Logf("upgrade: %d uploads, p50 %v, p99 %v, %d failed attempts retried", res.Uploads, res.P50, res.P99, res.Failed)

	// The audit trail across the four processes verifies: every upload.accepted event logged.
	for _, r := range reps {
		r.stop(t)
	}
	reps = nil
	vout, err := executeEnv(t, env, "audit", "verify", "--json", "--data-dir", dir)
	var rep chain.Report
	if err != nil || json.Unmarshal([]byte(vout), &rep) != nil || !rep.OK {
		t.Fatalf("vigil audit verify after the upgrade = %v\n%s", err, vout)
	}
	var accepted int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM audit_events WHERE action = 'upload.accepted'").Scan(&accepted); err != nil {
		t.Fatal(err)
	}
	if accepted != res.Accepted || rep.ProvenEvents < int64(accepted) {
		t.Errorf("%d upload.accepted events, %d proven in the log; want %d accepted uploads audited and proven", accepted, rep.ProvenEvents, res.Accepted)
	}
}
