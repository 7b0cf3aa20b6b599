// Package devicestest sets up, for tests, a real device ingestion stack: a private
// PostgreSQL database with every migration, the real core.Service, the real devices.Service,
// a controlled clock, a patient, and enrolled devices that sign uploads. Nothing in it is a
// mock of Vigil's own code: keys come from a local key ring in the test's temporary directory.
package devicestest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/envelope"
	"github.com/vigilhealth/vigil/internal/testclock"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// T0 is the controlled clock's start.
var T0 = testclock.T0

// Clock is the tests' controlled clock (internal/testclock).
type Clock = testclock.Clock

// NewClock returns a controlled clock set to t.
func NewClock(t time.Time) *Clock { return testclock.New(t) }

// Admin is the audit origin of registry changes made by tests.
var Admin = devices.Origin{Actor: audit.Actor{Kind: audit.ActorUser, ID: "admin-1", AuthMethod: "password+totp"}, RequestID: "test"}

// Env is a running ingestion stack.
type Env struct {
	Ctx     context.Context
	Pool    *pgxpool.Pool
	URL     string
	Clock   *Clock
	Rec     *audit.Outbox // the audit recorder every service of the stack records with
	Core    *core.Service
	Devices *devices.Service
	Ring    *keys.Ring
	Signer  *keys.KeySigner // receipt-signing
	Patient uuid.UUID
}

// New starts the stack on a fresh database; mod may adjust the devices configuration.
func New(t testing.TB, mod func(*devices.Config)) *Env {
	t.Helper()
	pool, url := testdb.NewWithURL(t)
	return NewOn(t, pool, url, NewClock(T0), mod)
}

// NewOn starts the stack on an existing database with the given clock.
func NewOn(t testing.TB, pool *pgxpool.Pool, url string, clk *Clock, mod func(*devices.Config)) *Env {
	t.Helper()
	ctx := context.Background()
	ring := keystest.LocalRing(t, nil)
	rec := audittest.Recorder(t, pool, nil)
	sg, err := ring.Signer(ctx, keys.ReceiptSigning)
	if err != nil {
		t.Fatalf("receipt signer = %v", err)
	}
	cs, err := core.New(core.Config{Pool: pool, Recorder: rec, Now: clk.Now, PHI: ring.PHI()})
	if err != nil {
		t.Fatal(err)
	}
	cfg := devices.Config{Pool: pool, Recorder: rec, Ingester: cs, ReceiptSigner: sg, Now: clk.Now}
	if mod != nil {
		mod(&cfg)
	}
	ds, err := devices.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := ds.Close(cctx); err != nil {
			t.Errorf("devices.Close = %v", err)
		}
	})
	e := &Env{Ctx: ctx, Pool: pool, URL: url, Clock: clk, Rec: rec, Core: cs, Devices: ds, Ring: ring, Signer: sg}
	e.Patient = e.NewPatient(t)
	return e
}

// NewPatient creates a patient in core.
func (e *Env) NewPatient(t testing.TB) uuid.UUID {
	t.Helper()
	p, err := e.Core.CreatePatient(e.Ctx, audit.Event{Actor: Admin.Actor, RequestID: "test"},
		core.PatientPHI{MRN: "MRN-" + uuid.NewString()[:13], GivenName: "Test", FamilyName: "Patient"}, nil)
	if err != nil {
		t.Fatalf("CreatePatient = %v", err)
	}
	return p.ID
}

// Device is an enrolled device that signs uploads.
type Device struct {
	ID  uuid.UUID
	Key ed25519.PrivateKey
	KV  uint64
	Seq uint64 // the last sequence number used

	mu sync.Mutex
}

// NewDevice registers, enrolls and assigns (to e.Patient) a new device.
func (e *Env) NewDevice(t testing.TB) *Device {
	t.Helper()
	d := e.RegisterDevice(t)
	e.Enroll(t, d)
	if _, err := e.Devices.AssignPatient(e.Ctx, Admin, d.ID, &e.Patient); err != nil {
		t.Fatalf("AssignPatient = %v", err)
	}
	return d
}

// RegisterDevice registers a device with a fresh key pair, not enrolled yet.
func (e *Env) RegisterDevice(t testing.TB) *Device {
	t.Helper()
	reg, err := e.Devices.Register(e.Ctx, Admin, devices.NewDevice{Serial: "SN-" + uuid.NewString(), Model: "VM-100", Firmware: "1.2.3"})
	if err != nil {
		t.Fatalf("Register = %v", err)
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	return &Device{ID: reg.ID, Key: priv}
}

// Enroll issues a token and enrolls d's key.
func (e *Env) Enroll(t testing.TB, d *Device) {
	t.Helper()
	tok, _, err := e.Devices.IssueEnrollmentToken(e.Ctx, Admin, d.ID)
	if err != nil {
		t.Fatalf("IssueEnrollmentToken = %v", err)
	}
	raw, err := envelope.SignEnroll(tok, d.Key, e.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.Devices.Enroll(e.Ctx, raw, devices.Meta{Transport: "http"})
	if err != nil {
		t.Fatalf("Enroll = %v", err)
	}
	d.KV = uint64(out.KeyVersion)
}

// Vitals returns n samples (heart rate, SpO2, respiratory rate, temperature, systolic BP
// in turn) at times ending at t, one second apart.
func Vitals(n int, t time.Time) []envelope.Sample {
	kinds := []envelope.Sample{
		{Code: "8867-4", Value: 72, Unit: "/min"},
		{Code: "59408-5", Value: 97, Unit: "%"},
		{Code: "9279-1", Value: 16, Unit: "/min"},
		{Code: "8310-5", Value: 36.9, Unit: "Cel"},
		{Code: "8480-6", Value: 121, Unit: "mm[Hg]"},
	}
	out := make([]envelope.Sample, n)
	for i := range out {
		s := kinds[i%len(kinds)]
		s.T = t.Add(-time.Duration(n-1-i) * time.Second).UnixMilli()
		out[i] = s
	}
	return out
}

// Upload signs the device's next upload (sequence number +1) of n vital-sign samples taken
// up to now, and returns its envelope bytes.
func (d *Device) Upload(t testing.TB, now time.Time, n int) []byte {
	t.Helper()
	d.mu.Lock()
	d.Seq++
	seq := d.Seq
	d.mu.Unlock()
	return d.Sign(t, &envelope.Upload{Device: d.ID.String(), KeyVersion: d.KV, Seq: seq, SentAt: now.UnixMilli(), Samples: Vitals(n, now)})
}

// Sign signs u with the device's key.
func (d *Device) Sign(t testing.TB, u *envelope.Upload) []byte {
	t.Helper()
	raw, _, err := envelope.Sign(u, d.Key)
	if err != nil {
		t.Fatalf("envelope.Sign = %v", err)
	}
	return raw
}

// Count runs a count query.
func (e *Env) Count(t testing.TB, q string, args ...any) int {
	t.Helper()
	var n int
	if err := e.Pool.QueryRow(e.Ctx, q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}
