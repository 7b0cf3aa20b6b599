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
// patient.moved, patient.readmitted, patient.discharged, patient.updated,
// patient.admission_cancelled, patient.discharge_cancelled; actor the message's sender,
// request id "hl7:<facility>:<control id>").
//
// It is idempotent twice over: a message whose request id is the one of the patient's last
// change was applied already (re-sent after a lost ACK) and changes nothing; and by state, an
// A01 for a patient already admitted on that ward, an A02 to the ward the patient is on, an
// A03 of a patient already discharged change nothing and are accepted.
//
// What does not fit the patient's state is refused with a *StateError (AE, its code in
// ERR-5): a transfer of a discharged patient (patient_discharged), a cancelled admission of a
// discharged patient (patient_discharged) or of one with observations stored since the
// admission (admission_has_observations), a cancelled discharge of an admitted patient
// (patient_not_discharged) or of a cancelled admission (admission_cancelled).
type CoreApplier struct {
	Core *core.Service
}

// StateError is an ADT event that does not fit the patient's state: it wraps
// ErrPatientState and carries the stable code the ACK's ERR segment reports.
type StateError struct {
	Code, Text string
}

func (e *StateError) Error() string { return e.Text + " (" + e.Code + ")" }

// Unwrap makes a StateError match ErrPatientState.
func (e *StateError) Unwrap() error { return ErrPatientState }

// stateErr turns core's refusal into a StateError (other errors pass unchanged).
func stateErr(err error) error {
	var se *core.StateError
	if errors.As(err, &se) {
		return &StateError{Code: se.Code, Text: se.Text}
	}
	return err
}

// ApplyADT implements ADTApplier.
func (a CoreApplier) ApplyADT(ctx context.Context, by audit.Actor, cmd hl7.ADT) error {
	ev := audit.Event{Actor: by, RequestID: "hl7:" + cmd.SendingFacility + ":" + cmd.ControlID}
	p, err := a.Core.PatientByMRN(ctx, cmd.Patient.MRN)
	known := err == nil
	if err != nil && !errors.Is(err, core.ErrNotFound) {
		return err
	}
	if known && cmd.ControlID != "" && p.LastRequestID == ev.RequestID {
		return nil // applied already: the message was re-sent after a lost ACK
	}
	phi := core.PatientPHI{MRN: cmd.Patient.MRN, GivenName: cmd.Patient.GivenName, FamilyName: cmd.Patient.FamilyName,
		BirthDate: cmd.Patient.BirthDate}
	switch cmd.Kind {
	case hl7.ADTAdmit:
		ward, err := a.ward(ctx, cmd.Location)
		if err != nil {
			return err
		}
		if !known {
			_, err := a.Core.CreatePatient(ctx, ev, phi, &ward)
			if errors.Is(err, core.ErrConflict) {
				return nil // admitted meanwhile by the same message
			}
			return err
		}
		if p.DischargedAt != nil {
			return stateErr(a.Core.ReadmitPatient(ctx, ev, p.ID, ward))
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
			return &StateError{Code: core.ErrPatientDischarged.Code, Text: "transfer of a discharged patient"}
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
		_, err := a.Core.UpdatePatientPHI(ctx, ev, p.ID, phi)
		if errors.Is(err, core.ErrInvalidRequest) {
			return &StateError{Code: "invalid_demographics", Text: err.Error()}
		}
		return err
	case hl7.ADTCancelAdmit:
		if !known {
			return ErrUnknownPatient
		}
		return stateErr(a.Core.CancelAdmission(ctx, ev, p.ID))
	case hl7.ADTCancelDischarge:
		if !known {
			return ErrUnknownPatient
		}
		return stateErr(a.Core.CancelDischarge(ctx, ev, p.ID))
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
