package inbound

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/interop/hl7"
)

// CoreApplier applies ADT commands to the clinical core's patients. Each change is one
// core call in its own transaction with its own audit event (patient.created,
// patient.moved, patient.discharged, actor the message's sender, request id
// "hl7:<facility>:<control id>"). It is idempotent by state: an A01 for a patient already
// admitted on that ward, an A02 to the ward the patient is on, an A03 of a patient already
// discharged change nothing and are accepted (a message re-sent after a lost ACK).
//
// What core cannot do yet is refused with ErrPatientState (AE): re-admitting a discharged
// patient, cancelling an admit or a discharge. An A08 of a known patient is accepted and
// changes nothing (core has no demographics update yet); of an unknown one, ErrUnknownPatient.
type CoreApplier struct {
	Core *core.Service
}

// ApplyADT implements ADTApplier.
func (a CoreApplier) ApplyADT(ctx context.Context, by audit.Actor, cmd hl7.ADT) error {
	ev := audit.Event{Actor: by, RequestID: "hl7:" + cmd.SendingFacility + ":" + cmd.ControlID}
	p, err := a.Core.PatientByMRN(ctx, cmd.Patient.MRN)
	known := err == nil
	if err != nil && !errors.Is(err, core.ErrNotFound) {
		return err
	}
	switch cmd.Kind {
	case hl7.ADTAdmit:
		ward, err := a.ward(ctx, cmd.Location)
		if err != nil {
			return err
		}
		if !known {
			_, err := a.Core.CreatePatient(ctx, ev, core.PatientPHI{MRN: cmd.Patient.MRN, GivenName: cmd.Patient.GivenName,
				FamilyName: cmd.Patient.FamilyName, BirthDate: cmd.Patient.BirthDate}, &ward)
			if errors.Is(err, core.ErrConflict) {
				return nil // admitted meanwhile by the same message
			}
			return err
		}
		if p.DischargedAt != nil {
			return fmt.Errorf("%w: re-admission of a discharged patient is not supported yet", ErrPatientState)
		}
		if p.WardID != nil && *p.WardID == ward {
			return nil
		}
		return a.Core.MovePatient(ctx, ev, p.ID, ward)
	case hl7.ADTTransfer:
		if !known {
			return ErrUnknownPatient
		}
		if p.DischargedAt != nil {
			return fmt.Errorf("%w: transfer of a discharged patient", ErrPatientState)
		}
		ward, err := a.ward(ctx, cmd.Location)
		if err != nil {
			return err
		}
		if p.WardID != nil && *p.WardID == ward {
			return nil
		}
		return a.Core.MovePatient(ctx, ev, p.ID, ward)
	case hl7.ADTDischarge:
		if !known {
			return ErrUnknownPatient
		}
		if p.DischargedAt != nil {
			return nil
		}
		err := a.Core.DischargePatient(ctx, ev, p.ID)
		if errors.Is(err, core.ErrConflict) {
			return nil
		}
		return err
	case hl7.ADTUpdate:
		if !known {
			return ErrUnknownPatient
		}
		return nil
	case hl7.ADTCancelAdmit, hl7.ADTCancelDischarge:
		if !known {
			return ErrUnknownPatient
		}
		return fmt.Errorf("%w: %s is not supported yet", ErrPatientState, cmd.Event)
	}
	return fmt.Errorf("%w: event %s", ErrPatientState, cmd.Event)
}

// ward finds the ward named by the point of care (case-insensitive), in the site named by
// the location's facility when it names one of Vigil's sites.
func (a CoreApplier) ward(ctx context.Context, loc hl7.Location) (uuid.UUID, error) {
	sites, err := a.Core.Sites(ctx)
	if err != nil {
		return uuid.Nil, err
	}
	var found []uuid.UUID
	for _, s := range sites {
		if loc.Facility != "" && !strings.EqualFold(s.Name, loc.Facility) && len(sites) > 1 {
			continue
		}
		wards, err := a.Core.Wards(ctx, s.ID)
		if err != nil {
			return uuid.Nil, err
		}
		for _, w := range wards {
			if strings.EqualFold(w.Name, loc.PointOfCare) {
				found = append(found, w.ID)
			}
		}
	}
	if len(found) != 1 {
		return uuid.Nil, fmt.Errorf("%w: %q", ErrUnknownLocation, loc.PointOfCare)
	}
	return found[0], nil
}
