// Package simtest builds a real device path for tests of the device layer's edge (MQTT
// adapter, SDK, simulator): a private PostgreSQL database with every migration, a local key
// ring, the core service and the devices service, and helpers to provision and enroll
// devices through them. Nothing in it is a mock.
package simtest

import (
	"context"
	"crypto"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/sdk"
	"github.com/vigilhealth/vigil/devices/sim"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// Stack is the device path of one test.
type Stack struct {
	Pool       *pgxpool.Pool
	Rec        *audit.Outbox // the audit recorder every service of the stack records with
	Ring       *keys.Ring
	Core       *core.Service
	Devices    *devices.Service
	ReceiptKey crypto.PublicKey
	Prov       *sim.LocalProvisioner
}

var counter atomic.Int64

// New builds the stack; tune adjusts the devices configuration before the service starts.
// Everything is closed at the end of the test.
func New(t testing.TB, tune func(*devices.Config)) *Stack {
	t.Helper()
	ctx := context.Background()
	pool := testdb.New(t)
	ring := keystest.LocalRing(t, nil)
	rec := audittest.Recorder(t, pool, nil)
	signer, err := ring.Signer(ctx, keys.ReceiptSigning)
	if err != nil {
		t.Fatalf("receipt signer: %v", err)
	}
	cs, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: ring.PHI()})
	if err != nil {
		t.Fatalf("core.New: %v", err)
	}
	dc := devices.Config{Pool: pool, Recorder: rec, Ingester: cs, ReceiptSigner: signer}
	if tune != nil {
		tune(&dc)
	}
	ds, err := devices.New(dc)
	if err != nil {
		t.Fatalf("devices.New: %v", err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = ds.Close(cctx)
	})
	_, pub, err := ds.ReceiptKey()
	if err != nil {
		t.Fatalf("ReceiptKey: %v", err)
	}
	return &Stack{Pool: pool, Rec: rec, Ring: ring, Core: cs, Devices: ds, ReceiptKey: pub,
		Prov: &sim.LocalProvisioner{Core: cs, Devices: ds, Run: fmt.Sprintf("t%d", counter.Add(1))}}
}

// Device provisions a device assigned to a new synthetic patient and enrolls it through
// the SDK (in process), returning its identity.
func (s *Stack) Device(t testing.TB) sdk.Identity {
	t.Helper()
	ctx := context.Background()
	p := sim.NewPatient(1, int(counter.Add(1)), sim.Stable)
	tok, err := s.Prov.Provision(ctx, p)
	if err != nil {
		t.Fatalf("Provision: %v", err)
	}
	id, err := sdk.Enroll(ctx, sim.InProcess{Devices: s.Devices}, tok, sdk.EnrollOptions{})
	if err != nil {
		t.Fatalf("sdk.Enroll: %v", err)
	}
	return id
}
