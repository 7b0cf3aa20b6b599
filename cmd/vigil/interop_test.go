package main

import (
	"context"
	"crypto/rand"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/interop/hl7"
	"github.com/vigilhealth/vigil/interop/mllp"
)

// serve's and demo's --help document the FHIR API and the HL7 variables.
// Verifies: REQ-INT-029
func TestInteropHelp(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"serve", "demo"} {
		out, err := execute(t, cmd, "--help")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"/fhir/R4", "VIGIL_HL7_LISTEN", "VIGIL_HL7_ORU_DEST", "VIGIL_HL7_FACILITY"} {
			if !strings.Contains(out, want) {
				t.Errorf("vigil %s --help does not mention %s", cmd, want)
			}
		}
	}
}

// vigil serve with VIGIL_HL7_LISTEN and VIGIL_HL7_ORU_DEST: the FHIR CapabilityStatement is
// served, an ADT^A01 admits a patient on the named ward, and the patient's vitals leave as an
// ORU^R01 to the destination, which acknowledges it.
// Verifies: REQ-INT-029, REQ-INT-026, REQ-INT-027
func TestServeWiresInterop(t *testing.T) {
	t.Parallel()
	_, url := testdb.NewWithURL(t)
	env, dir := commandRing(t, url)

	// The destination: an MLLP receiver that acknowledges every message.
	var mu sync.Mutex
	var got [][]byte
	dest, err := mllp.NewServer(mllp.ServerConfig{Handler: mllp.HandlerFunc(func(_ context.Context, req mllp.Request) []byte {
		mu.Lock()
		got = append(got, append([]byte(nil), req.Message...))
		mu.Unlock()
		m, err := hl7.Parse(req.Message, hl7.Limits{})
		if err != nil {
			return nil
		}
		return hl7.Ack(m, hl7.AA, nil, hl7.AckOptions{SendingApplication: "DEST", ControlID: "A1", Now: time.Now()})
	})})
	if err != nil {
		t.Fatal(err)
	}
	dl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = dest.Serve(dl) }()
	t.Cleanup(func() { _ = dest.Close(context.Background()) })
	env["VIGIL_HL7_LISTEN"] = "127.0.0.1:0"
	env["VIGIL_HL7_ORU_DEST"] = dl.Addr().String()
	ctx, cancel := context.WithCancel(withEnv(context.Background(), env))
	defer cancel()
	rc := runConfig{Listen: "127.0.0.1:0", DataDir: dir, DatabaseURL: url}
	done := make(chan error, 1)
	checked := make(chan struct{})
	go func() {
		done <- run(ctx, rc, func(ctx context.Context, base string, sys *system) error {
			go func() {
				defer close(checked)
				checkInterop(t, ctx, base, sys, func() int { mu.Lock(); defer mu.Unlock(); return len(got) })
			}()
			return nil
		})
	}()
	select {
	case <-checked:
	case err := <-done:
		t.Fatalf("serve stopped: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("interop checks did not finish")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("serve = %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || !strings.Contains(string(got[0]), "ORU^R01") || !strings.Contains(string(got[0]), "SERVE-1") {
		t.Errorf("destination received %d messages %q, want one ORU^R01 of SERVE-1", len(got), got)
	}
}

func checkInterop(t *testing.T, ctx context.Context, base string, sys *system, received func() int) {
	resp, err := http.Get(base + "/fhir/R4/metadata")
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("GET /fhir/R4/metadata = %v %v", resp, err)
		return
	}
	resp.Body.Close()
	by := audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "test", AuthMethod: "internal"}, RequestID: "test"}
	site, err := sys.core.CreateSite(ctx, by, "General")
	if err != nil {
		t.Error(err)
		return
	}
	ward, err := sys.core.CreateWard(ctx, by, site.ID, "ICU")
	if err != nil {
		t.Error(err)
		return
	}
	cl, _ := mllp.NewClient(mllp.ClientConfig{Addr: sys.hl7Addr})
	defer cl.Close()
	a01 := "MSH|^~\\&|EPIC|GENHOSP|VIGIL|GENHOSP|20260102030405+0100||ADT^A01^ADT_A01|S1|P|2.5.1\r" +
		"PID|1||SERVE-1^^^GENHOSP^MR||Doe^Jane||19800215|F\rPV1|1|I|ICU^1^A\r"
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ack, err := cl.Send(sctx, []byte(a01))
	if err != nil || !strings.Contains(string(ack), "MSA|AA|S1") {
		t.Errorf("A01 = %q, %v; want AA", ack, err)
		return
	}
	p, err := sys.core.PatientByMRN(ctx, "SERVE-1")
	if err != nil || p.WardID == nil || *p.WardID != ward.ID {
		t.Errorf("admitted patient = %+v, %v", p, err)
		return
	}
	// The feed sends what commits after it has its cursor (it leads from its first step).
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var n int
		if err := sys.pool.QueryRow(ctx, `SELECT count(*) FROM interop_hl7_feed_cursors`).Scan(&n); err == nil && n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Error("the ORU feed did not start")
			return
		}
	}
	var h [32]byte
	_, _ = rand.Read(h[:])
	if _, err := sys.core.Ingest(ctx, core.Batch{PatientID: p.ID, Provenance: core.Provenance{DeviceID: uuid.NewString(), KeyID: "d/1",
		UploadHash: h, Sequence: 1, Transport: "http", ReceivedAt: time.Now()},
		Samples: []core.Sample{{Code: "8867-4", Value: 80, Unit: "/min", Time: time.Now().Add(-time.Second)}}}); err != nil {
		t.Error(err)
		return
	}
	for deadline := time.Now().Add(30 * time.Second); received() == 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
}
