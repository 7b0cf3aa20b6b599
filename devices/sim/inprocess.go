package sim

import (
	"context"
	"errors"

	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/sdk"
)

// InProcess is an sdk.Transport, sdk.Enroller and sdk.Rotator that calls the devices service of this
// process directly instead of going through HTTP: the same verification and storage, without
// the network. Refusals come back as *sdk.RejectedError with the service's codes.
type InProcess struct {
	Devices *devices.Service
}

// Upload implements sdk.Transport.
func (p InProcess) Upload(ctx context.Context, raw []byte) ([]byte, error) {
	rc, err := p.Devices.Accept(ctx, raw, devices.Meta{Transport: "inprocess", SourceAddr: "sim"})
	if err != nil {
		return nil, asRejected(err)
	}
	return rc.Wire, nil
}

// Enroll implements sdk.Enroller.
func (p InProcess) Enroll(ctx context.Context, raw []byte) (string, uint64, error) {
	e, err := p.Devices.Enroll(ctx, raw, devices.Meta{Transport: "inprocess", SourceAddr: "sim"})
	if err != nil {
		return "", 0, asRejected(err)
	}
	return e.DeviceID.String(), uint64(e.KeyVersion), nil
}

func asRejected(err error) error {
	var re *devices.RejectError
	if errors.As(err, &re) {
		return &sdk.RejectedError{Code: re.Code, Message: re.Error(), RetryAfter: re.RetryAfter}
	}
	return err
}

// Rotate implements sdk.Rotator.
func (p InProcess) Rotate(ctx context.Context, raw []byte) (string, uint64, error) {
	e, err := p.Devices.RotateKey(ctx, raw, devices.Meta{Transport: "inprocess", SourceAddr: "sim"})
	if err != nil {
		return "", 0, asRejected(err)
	}
	return e.DeviceID.String(), uint64(e.KeyVersion), nil
}
