package sim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/devices"
)

// Provisioner prepares the simulated monitor of one patient: the patient exists, a device is
// registered and assigned to it, and an enrollment token is issued for the device to enroll
// with (as an administrator would do for a real monitor).
type Provisioner interface {
	// Provision MUST return a one-time enrollment token of a device assigned to a patient
	// created for p, or an error; it MUST NOT return an empty token without error.
	Provision(ctx context.Context, p *Patient) (token string, err error)
}

// LocalProvisioner provisions through the core and devices services of this process (the
// path `vigil demo` and `vigil sim` take; an administrator does the same through the API).
// Synthetic patients get an MRN "SIM-<run>-<index>" and a made-up name: no real person.
type LocalProvisioner struct {
	Core    *core.Service
	Devices *devices.Service
	// Run distinguishes this run's patients and devices from an earlier run's. Default: random.
	// Provision is called concurrently: Run is settled once, before the first call's use.
	Run string

	once sync.Once
}

var simActor = audit.Actor{Kind: audit.ActorService, ID: "vigil-sim", AuthMethod: "internal"}

// Provision implements Provisioner.
func (lp *LocalProvisioner) Provision(ctx context.Context, p *Patient) (string, error) {
	lp.once.Do(func() {
		if lp.Run == "" {
			var b [4]byte
			_, _ = rand.Read(b[:])
			lp.Run = hex.EncodeToString(b[:])
		}
	})
	name := fmt.Sprintf("SIM-%s-%04d", lp.Run, p.Index)
	by := audit.Event{Actor: simActor, RequestID: "sim-" + lp.Run}
	pat, err := lp.Core.CreatePatient(ctx, by, core.PatientPHI{
		MRN: name, GivenName: "Synthetic", FamilyName: fmt.Sprintf("Patient %d (%s)", p.Index, p.Scenario),
	}, nil)
	if err != nil {
		return "", fmt.Errorf("provision patient %d: %w", p.Index, err)
	}
	o := devices.Origin{Actor: simActor, RequestID: "sim-" + lp.Run}
	d, err := lp.Devices.Register(ctx, o, devices.NewDevice{Serial: name, Model: "Vigil SIM bedside monitor", Firmware: "sim-1"})
	if err != nil {
		return "", fmt.Errorf("provision device %d: %w", p.Index, err)
	}
	pid := pat.ID
	if _, err := lp.Devices.AssignPatient(ctx, o, d.ID, &pid); err != nil {
		return "", fmt.Errorf("provision device %d: assign: %w", p.Index, err)
	}
	tok, _, err := lp.Devices.IssueEnrollmentToken(ctx, o, d.ID)
	if err != nil {
		return "", fmt.Errorf("provision device %d: token: %w", p.Index, err)
	}
	return tok, nil
}

// PatientOf is a helper for callers that need the patient a device was assigned to.
func PatientOf(ctx context.Context, svc *devices.Service, device uuid.UUID) (uuid.UUID, error) {
	d, err := svc.Get(ctx, device)
	if err != nil {
		return uuid.Nil, err
	}
	if d.PatientID == nil {
		return uuid.Nil, fmt.Errorf("device %s: %w", device, devices.ErrNotAssigned)
	}
	return *d.PatientID, nil
}
