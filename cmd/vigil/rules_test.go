package main

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/core/rules/rulestest"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// sealer is an in-process AES-GCM PHISealer for tests (the keys area provides the real one).
type sealer struct {
	aead cipher.AEAD
	mac  []byte
}

func newSealer(t *testing.T) *sealer {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	b, err := aes.NewCipher(k)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := cipher.NewGCM(b)
	m := make([]byte, 32)
	_, _ = rand.Read(m)
	return &sealer{aead: a, mac: m}
}

func (s *sealer) Seal(_ context.Context, p, aad []byte) ([]byte, error) {
	n := make([]byte, s.aead.NonceSize())
	_, _ = rand.Read(n)
	return s.aead.Seal(n, n, p, aad), nil
}

func (s *sealer) Open(_ context.Context, c, aad []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	if len(c) < ns {
		return nil, errors.New("short ciphertext")
	}
	return s.aead.Open(nil, c[:ns], c[ns:], aad)
}

func (s *sealer) BlindIndex(_ context.Context, v []byte) ([]byte, error) {
	h := hmac.New(sha256.New, s.mac)
	h.Write(v)
	return h.Sum(nil), nil
}

var nurse = audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "nurse-1", AuthMethod: "password+totp"}}

// Core's storage meets the History contract the rules engine rebuilds its state from.
// Verifies: REQ-CORE-107
func TestCoreHistoryConformance(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	svc, err := core.New(core.Config{Pool: pool, Recorder: audittest.Recorder(t, pool, nil), PHI: newSealer(t)})
	if err != nil {
		t.Fatal(err)
	}
	newPatient := func(t *testing.T) uuid.UUID {
		p, err := svc.CreatePatient(ctx, nurse, core.PatientPHI{MRN: "MRN-" + uuid.NewString()[:8], GivenName: "A", FamilyName: "B"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return p.ID
	}
	seq := uint64(0)
	store := func(t *testing.T, obs []rules.Observation) {
		seq++
		b := core.Batch{PatientID: obs[0].PatientID, Provenance: core.Provenance{DeviceID: "dev-1", KeyID: "k1", Sequence: seq,
			ReceivedAt: time.Now(), Transport: "http"}}
		b.Provenance.UploadHash[0], b.Provenance.UploadHash[1] = byte(seq), byte(seq>>8)
		for _, o := range obs {
			b.Samples = append(b.Samples, core.Sample{Code: o.Code, Value: o.Value, Unit: o.Unit, Time: o.EffectiveAt})
		}
		if _, err := svc.Ingest(ctx, b); err != nil {
			t.Fatalf("Ingest() error %v", err)
		}
	}
	rulestest.TestHistory(t, svc, newPatient, store)
}

// End to end through the real wiring: an upload ingested by core runs the rules, opens an
// alarm (audited) and the transition reaches core's notification hub; after a restart of the
// engine the same alarm is continued.
// Verifies: REQ-CORE-102, REQ-CORE-107, REQ-CORE-117
func TestIngestToAlarm(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	link := newClinicalLink(slog.Default())
	rec := audittest.Recorder(t, pool, nil)
	svc, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: newSealer(t), Handoff: link.handoff, Release: link})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := startClinical(ctx, pool, rec, svc, link, nil, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	sub := svc.Hub().Subscribe(core.Filter{})
	defer sub.Close()
	p, err := svc.CreatePatient(ctx, nurse, core.PatientPHI{MRN: "MRN-e2e", GivenName: "A", FamilyName: "B"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().UTC().Truncate(time.Second).Add(-2 * time.Minute)
	upload := func(seq uint64, at time.Duration, spo2 float64) {
		t.Helper()
		b := core.Batch{PatientID: p.ID, Provenance: core.Provenance{DeviceID: "dev-1", KeyID: "k1", Sequence: seq, ReceivedAt: time.Now(), Transport: "http"},
			Samples: []core.Sample{{Code: rules.CodeSpO2, Value: spo2, Unit: "%", Time: start.Add(at)}}}
		b.Provenance.UploadHash[0] = byte(seq)
		if _, err := svc.Ingest(ctx, b); err != nil {
			t.Fatalf("Ingest() error %v", err)
		}
	}
	upload(1, 0, 87)
	upload(2, 40*time.Second, 87) // 40 s below 88: spo2-low high
	var opened core.Event
	deadline := time.After(10 * time.Second)
	for opened.Type != "alarm.opened" {
		select {
		case ev := <-sub.C:
			opened = ev
		case <-deadline:
			t.Fatal("no alarm.opened event on the hub within 10 s")
		}
	}
	if opened.PatientID != p.ID {
		t.Errorf("hub event patient %s, want %s", opened.PatientID, p.ID)
	}
	if err := link.handoff.Flush(ctx); err != nil { // the engine has evaluated every upload
		t.Fatal(err)
	}
	all, err := cl.alarms.OpenAlarms(ctx, p.ID)
	var open []alarms.Alarm
	for _, a := range all { // besides the partial NEWS2 (SpO2 87 alone scores 3)
		if a.RuleID == "spo2-low" {
			open = append(open, a)
		}
	}
	if err != nil || len(open) != 1 || open[0].Severity != alarms.SeverityHigh {
		t.Fatalf("OpenAlarms() = %+v, %v; want one spo2-low high", all, err)
	}
	// Restart the clinical services; the next upload escalates the same alarm.
	if err := cl.Close(ctx); err != nil {
		t.Fatal(err)
	}
	link.eng.Store(nil)
	cl, err = startClinical(ctx, pool, rec, svc, link, nil, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cl.Close(ctx) }()
	upload(3, 50*time.Second, 83)
	if err := link.handoff.Flush(ctx); err != nil { // the engine has evaluated it
		t.Fatal(err)
	}
	a, err := cl.alarms.Get(ctx, open[0].ID)
	if err != nil || a.Severity != alarms.SeverityCritical || a.State != alarms.StateActive {
		t.Fatalf("after restart: %+v, %v; want the same alarm, critical", a, err)
	}
	all, _ = cl.alarms.List(ctx, alarms.Filter{PatientID: p.ID, RuleID: "spo2-low"})
	if len(all) != 1 {
		t.Errorf("spo2-low alarms of patient = %d, want 1", len(all))
	}
}
