package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/envelope"
	"github.com/vigilhealth/vigil/devices/sdk"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// sseEvent is one event of GET /api/v1/stream as a client reads it.
type sseEvent struct {
	ID   uint64
	Type string
	Data string
}

// openSSE opens the live stream of base with an API token (and a Last-Event-ID when last >
// 0); events arrive on the channel, which is closed when the stream ends.
func openSSE(t *testing.T, base, token, query string, last uint64) (<-chan sseEvent, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/stream?"+query, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	if last > 0 {
		req.Header.Set("Last-Event-ID", strconv.FormatUint(last, 10))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s/api/v1/stream: %v", base, err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		cancel()
		resp.Body.Close()
		t.Fatalf("GET %s/api/v1/stream = %d %s", base, resp.StatusCode, b)
	}
	ch := make(chan sseEvent, 256)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.Type != "" {
					ch <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				ev.ID, _ = strconv.ParseUint(line[4:], 10, 64)
			case strings.HasPrefix(line, "event: "):
				ev.Type = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.Data = line[6:]
			}
		}
	}()
	return ch, func() { cancel(); resp.Body.Close(); <-done }
}

// nextSSE returns the next event of ch that satisfies want, and the events before it.
func nextSSE(t *testing.T, ch <-chan sseEvent, what string, want func(sseEvent) bool) (sseEvent, []sseEvent) {
	t.Helper()
	var before []sseEvent
	timeout := time.After(60 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("the stream ended before %s (got %+v)", what, before)
			}
			if want(ev) {
				return ev, before
			}
			before = append(before, ev)
		case <-timeout:
			t.Fatalf("no %s within 60 s (got %+v)", what, before)
		}
	}
}

var apiTokenRE = regexp.MustCompile(`vgt_[A-Za-z0-9_\-]+`)

// Two `vigil serve` processes on one database. A device uploads to replica A, which owns its
// patient's evaluation; a stream client on replica B sees the alarm A raised and the
// observations A stored (a chart on B). A device suspended through A's API has its next
// upload to B refused. Then B is killed (SIGKILL); an alarm transition happens on A while the
// client is away; the client reconnects to A with its Last-Event-ID and receives exactly the
// events after it: none missed, none twice. Each replica holds one listening connection for
// all its services, and after both are cut (before the upload) listens again on one.
// Verifies: REQ-HA-031, REQ-HA-032, REQ-HA-033, REQ-HA-005, REQ-HA-006, REQ-HA-007, REQ-HA-050
func TestHAStreamAndSuspensionAcrossReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two servers; run without -short")
	}
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	const pass = "a passphrase for the HA stream test"
	dir := t.TempDir()
	cheapLocalRing(t, dir, pass)
	env := map[string]string{"VIGIL_DATABASE_URL": url, "VIGIL_KEYRING_PASSPHRASE": pass, "VIGIL_VAULT_ADDR": ""}
	ctx := context.Background()
	a := startServeProcess(t, env, dir, "a")
	b := startServeProcess(t, env, dir, "b")
	nameA, nameB := replicaName(t, pool, a.cmd.Process.Pid), replicaName(t, pool, b.cmd.Process.Pid)
	// One listening connection per replica for all its services (devices, policy, hub relay,
	// rules inbox).
	listeners := wantListeners(t, pool, 2, nil)

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

	// The buckets shared between the two replicas.
	for i := 0; ; i++ {
		var na, nb int
		if err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE owner = $1), count(*) FILTER (WHERE owner = $2) FROM rules_leases`,
			nameA, nameB).Scan(&na, &nb); err != nil {
			t.Fatal(err)
		}
		if na == rules.Buckets/2 && nb == rules.Buckets/2 {
			break
		}
		if i == 300 {
			t.Fatalf("buckets not shared after 30 s: A %d, B %d", na, nb)
		}
		time.Sleep(100 * time.Millisecond) // waiting for the replicas' lease rounds
	}
	by := audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "ha-test", AuthMethod: "internal"}, RequestID: "ha-stream"}
	o := devices.Origin{Actor: by.Actor, RequestID: by.RequestID}
	site, err := prov.Core.CreateSite(ctx, by, "HA site")
	if err != nil {
		t.Fatal(err)
	}
	ward, err := prov.Core.CreateWard(ctx, by, site.ID, "HA ward")
	if err != nil {
		t.Fatal(err)
	}
	// A service account watching the ward (clinician) and managing devices.
	run := func(args ...string) string {
		t.Helper()
		out, err := executeEnv(t, env, append(args, "--data-dir", dir)...)
		if err != nil {
			t.Fatalf("vigil %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	run("user", "service", "add", "ha-watch")
	run("role", "grant", "svc:ha-watch", "clinician", "--ward", ward.ID.String())
	run("role", "grant", "svc:ha-watch", "device_technician")
	token := apiTokenRE.FindString(run("user", "service", "token", "ha-watch", "--name", "ha test"))
	if token == "" {
		t.Fatal("no API token printed")
	}

	// newPatient makes a patient in the ward, evaluated by owner (nameA or "" for any).
	newPatient := func(owner string) uuid.UUID {
		t.Helper()
		for i := range 200 {
			p, err := prov.Core.CreatePatient(ctx, by, core.PatientPHI{MRN: fmt.Sprintf("HA-%d-%s", i, uuid.NewString()[:6]), GivenName: "Synthetic", FamilyName: "HA"}, &ward.ID)
			if err != nil {
				t.Fatal(err)
			}
			var held string
			if err := pool.QueryRow(ctx, `SELECT owner FROM rules_leases WHERE bucket = $1`, rules.BucketOf(p.ID)).Scan(&held); err != nil {
				t.Fatal(err)
			}
			if owner == "" || held == owner {
				return p.ID
			}
		}
		t.Fatalf("no patient of %s's buckets in 200", owner)
		return uuid.Nil
	}
	_, receiptKey, err := (&sdk.HTTPTransport{BaseURL: a.url}).ReceiptKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// newDevice registers a device for patient, enrolls it and returns its client uploading to base.
	newDevice := func(patient uuid.UUID, base string) (*sdk.Client, uuid.UUID) {
		t.Helper()
		d, err := prov.Devices.Register(ctx, o, devices.NewDevice{Serial: "HA-" + uuid.NewString()[:8], Model: "HA monitor", Firmware: "1"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := prov.Devices.AssignPatient(ctx, o, d.ID, &patient); err != nil {
			t.Fatal(err)
		}
		tok, _, err := prov.Devices.IssueEnrollmentToken(ctx, o, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		ht := &sdk.HTTPTransport{BaseURL: base}
		id, err := sdk.Enroll(ctx, ht, tok, sdk.EnrollOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cl, err := sdk.New(sdk.Config{Identity: id, Transport: ht, ReceiptKey: receiptKey, MaxAttempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Close() })
		return cl, d.ID
	}
	hr := func(v float64, at ...time.Time) []envelope.Sample {
		var out []envelope.Sample
		for _, x := range at {
			out = append(out, envelope.Sample{Code: core.LOINCHeartRate, Value: v, Unit: "/min", T: x.UnixMilli()})
		}
		return out
	}

	// The patient A evaluates; its monitor uploads to A; the client watches it on B.
	p := newPatient(nameA)
	monitor, _ := newDevice(p, a.url)
	// The grants made by `vigil role` reach each replica's policy as they commit (NOTIFY; the
	// periodic refresh, 5 s, is the fallback).
	for _, base := range []string{a.url, b.url} {
		for i := 0; ; i++ {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/patients/"+p.String()+"/latest", nil)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
			if i == 150 {
				t.Fatalf("GET %s/…/latest = %d 15 s after the grant, want 200", base, resp.StatusCode)
			}
			time.Sleep(100 * time.Millisecond) // the replicas' policy follow
		}
	}
	// Both listening connections lost: each replica listens again on one connection, and
	// everything below (observations and alarms relayed, the suspension) is announced after.
	if _, err := pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM unnest($1::int4[]) pid`, listeners); err != nil {
		t.Fatal(err)
	}
	wantListeners(t, pool, 2, listeners)
	alarmsOnB, closeAlarms := openSSE(t, b.url, token, "patient_id="+p.String(), 0)
	chartOnB, closeChart := openSSE(t, b.url, token, "type=observations&patient_id="+p.String(), 0)
	defer closeChart()
	now := time.Now()
	// 40 s above 120 /min: hr-high opens at once (its minimum duration is 30 s).
	if _, err := monitor.Send(ctx, hr(130, now.Add(-40*time.Second), now.Add(-20*time.Second), now)); err != nil {
		t.Fatalf("monitor's upload to A: %v", err)
	}
	obsEv, _ := nextSSE(t, chartOnB, "the observations stored on A, on B's chart stream", func(e sseEvent) bool { return e.Type == core.TypeObservations })
	var chart struct {
		PatientID uuid.UUID `json:"patient_id"`
		Data      struct {
			Observations []core.Observation `json:"observations"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(obsEv.Data), &chart); err != nil || chart.PatientID != p || len(chart.Data.Observations) != 3 || chart.Data.Observations[0].Value != 130 {
		t.Errorf("chart event on B = %s (%v), want the 3 heart rates of 130 /min stored on A", obsEv.Data, err)
	}
	opened, seen := nextSSE(t, alarmsOnB, "A's hr-high alarm on B's stream", func(e sseEvent) bool {
		return e.Type == "alarm.opened" && strings.Contains(e.Data, `"hr-high"`)
	})
	seen = append(seen, opened)
	t.Logf("B's stream: A's alarm.opened as event %d", opened.ID)

	// Suspension on A refuses the device's next upload on B.
	other, otherID := newDevice(newPatient(""), b.url)
	if _, err := other.Send(ctx, hr(80, time.Now())); err != nil {
		t.Fatalf("upload to B before the suspension: %v", err)
	}
	body, _ := json.Marshal(map[string]string{"reason": "HA test"})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, a.url+"/api/v1/devices/"+otherID.String()+"/suspend", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST A/devices/…/suspend = %d, want 200", resp.StatusCode)
	}
	var rej *sdk.RejectedError
	if _, err := other.Send(ctx, hr(81, time.Now())); !errors.As(err, &rej) || rej.Status != http.StatusForbidden || rej.Code != "device_suspended" {
		t.Errorf("upload to B after the suspension on A = %v, want 403 device_suspended", err)
	}
	var stored int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM core_uploads WHERE device_id = $1`, otherID.String()).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored != 1 {
		t.Errorf("uploads stored of the suspended device = %d, want 1 (the one before)", stored)
	}

	// B dies; the client saw every event up to last.
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for ev := range alarmsOnB { // the stream ends with B
		seen = append(seen, ev)
	}
	closeAlarms()
	last := seen[len(seen)-1].ID
	// While the client is away, A escalates the alarm (145 /min: high).
	if _, err := monitor.Send(ctx, hr(150, time.Now())); err != nil {
		t.Fatalf("monitor's upload to A after B's death: %v", err)
	}
	for i := 0; ; i++ {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM core_hub_events WHERE patient_id = $1 AND type = 'alarm.severity_escalated'`, p).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			break
		}
		if i == 300 {
			t.Fatal("A did not escalate the alarm within 30 s")
		}
		time.Sleep(100 * time.Millisecond) // waiting for A's evaluation
	}
	resumed, closeResumed := openSSE(t, a.url, token, "patient_id="+p.String(), last)
	defer closeResumed()
	esc, got := nextSSE(t, resumed, "the escalation on the stream resumed on A", func(e sseEvent) bool { return e.Type == "alarm.severity_escalated" })
	got = append(got, esc)
	var want []uint64
	rows, err := pool.Query(ctx, `SELECT id FROM core_hub_events WHERE patient_id = $1 AND id > $2 AND id <= $3 ORDER BY id`, p, last, esc.ID)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id uint64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	var gotIDs []uint64
	for _, ev := range got {
		if ev.Type == "reset" {
			t.Errorf("the resumed stream asked for a reset: the events after %d were not all kept", last)
		}
		gotIDs = append(gotIDs, ev.ID)
	}
	t.Logf("resumed on A after event %d: events %v", last, gotIDs)
	if fmt.Sprint(gotIDs) != fmt.Sprint(want) {
		t.Errorf("resumed on A after event %d: got events %v, want exactly %v (none missed, none twice)", last, gotIDs, want)
	}
}
