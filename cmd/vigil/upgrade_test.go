package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/devices/sdk"
	"github.com/vigilhealth/vigil/devices/sim"
	"github.com/vigilhealth/vigil/internal/schema"
	"github.com/vigilhealth/vigil/internal/schema/schematest"
	"github.com/vigilhealth/vigil/internal/testdb"
)

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

// A rolling upgrade from version N to N+1 under a fleet uploading through HAProxy (Debian's,
// with the repository's deploy/haproxy.cfg).
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
		rc.Limits.DrainDelay = 2 * time.Second // HAProxy's fall 2 × 300 ms, with a margin for a loaded machine
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
	// HAProxy with deploy/haproxy.cfg (health checks every 300 ms here: fall 2 is out of
	// rotation within the drain delay).
	lb := startDeployHAProxy(t, "300ms", "http://127.0.0.1:"+ports[0], "http://127.0.0.1:"+ports[1])
	inRotation := func(i int, within time.Duration) bool {
		for deadline := time.Now().Add(within); time.Now().Before(deadline); {
			if lb.up(t)[lb.names[i]] {
				return true
			}
			time.Sleep(100 * time.Millisecond) // polling HAProxy's view
		}
		return false
	}
	for i := range ports {
		if !inRotation(i, 20*time.Second) {
			for _, p := range ports {
				if resp, err := http.Get("http://127.0.0.1:" + p + "/readyz"); err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					t.Logf("readyz of %s: %d %s", p, resp.StatusCode, b)
				}
			}
			t.Fatalf("replica %d not in HAProxy's rotation after 20 s", i)
		}
	}

	prov, closeProv, err := simProvisioner(ctx, pool, reps[0].sys.rec, reps[0].sys.keys.PHI())
	if err != nil {
		t.Fatal(err)
	}
	defer closeProv()
	cfg := sim.Config{Patients: 6, Rate: 2, Duration: 24*time.Second + soak, Scenario: sim.Stable, Seed: 7, Provisioner: prov}
	if err := simTransport(ctx, &cfg, lb.URL, "", ""); err != nil {
		t.Fatal(err)
	}
	// The devices' HTTP client counts the answers they get through HAProxy.
	answers := &uploadAnswers{next: http.DefaultTransport}
	ht := &sdk.HTTPTransport{BaseURL: lb.URL, Client: &http.Client{Timeout: 15 * time.Second, Transport: answers}}
	cfg.Enroller = ht
	cfg.Transport = func(context.Context, sdk.Identity) (sdk.Transport, error) { return ht, nil }
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
		if !inRotation(i, 20*time.Second) { // HAProxy has it back in rotation
			t.Fatalf("replica %d (N+1) not back in HAProxy's rotation after 20 s", i)
		}
		step(fmt.Sprintf("replica %d (N+1) ready and in rotation", i))
		if i == 0 { // replica 1 still runs N: the contract phase must wait for it
			if _, err := next.Apply(ctx, pool, schema.PhaseContract); !errors.Is(err, schema.ErrPhaseOrder) {
				t.Errorf("contract phase with a replica of N running: %v, want ErrPhaseOrder", err)
			}
		}
	}
	at(20*time.Second + soak)
	applied, err = next.Apply(ctx, pool, schema.PhaseContract)
	if err != nil || len(applied) != 1 || applied[0].Version != 812 {
		t.Fatalf("contract phase: %v, %v", applied, err)
	}
	step("contract phase applied (00812) under two replicas of N+1")
	if time.Since(began) > cfg.Duration {
		t.Logf("the fleet stopped before the procedure ended (a slow machine): part of the procedure ran without load")
	}
	old := rcFor(0, nil)
	old.Listen = "127.0.0.1:0"
	if err := run(withEnv(ctx, env), old, nil); !errors.Is(err, schema.ErrSchemaAhead) {
		t.Errorf("N after the contract phase: %v, want ErrSchemaAhead", err)
	}

	out := <-fleet
	step("fleet done")
	res := out.res
	t.Logf("%s", res.Summary())
	answers.mu.Lock()
	clients, noRetry, errs := answers.answers, answers.noRetry, answers.errs
	answers.mu.Unlock()
	t.Logf("answers the devices got to uploads through HAProxy: %v; requests with no answer: %d %v", clients, len(errs), errs)
	if out.err != nil {
		t.Fatalf("fleet: %v", out.err)
	}
	if res.Uploads == 0 || res.Accepted != res.Uploads || res.Pending != 0 || len(res.Rejected) != 0 {
		t.Errorf("fleet: %d uploads, %d accepted, %d pending, refused %v; want every upload accepted", res.Uploads, res.Accepted, res.Pending, res.Rejected)
	}
	var answered, retryable int
	for a, n := range clients {
		answered += n
		switch {
		case a == "200" || a == "201":
		case strings.HasPrefix(a, "503"):
			retryable += n
		default:
			t.Errorf("%d upload(s) answered %q: only success or a retryable 503 is allowed during the upgrade", n, a)
		}
	}
	if noRetry > 0 {
		t.Errorf("%d 503 answer(s) without Retry-After", noRetry)
	}
	if answered == 0 {
		t.Fatal("no answer to an upload counted: the test shows nothing")
	}
	t.Logf("upgrade: %d answers to uploads, %d retryable 503 (%.2f %%), 0 other errors, %d without an answer", answered, retryable,
		100*float64(retryable)/float64(answered), len(errs))
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
