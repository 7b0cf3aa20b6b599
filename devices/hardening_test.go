package devices_test

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/devicestest"
	"github.com/vigilhealth/vigil/devices/envelope"
)

// Re-send first: the exact re-send of an upload accepted before gets its original receipt
// even after a key rotation (unknown_key) and while the device is suspended or
// decommissioned; nothing is stored again, and anything else is still refused.
// Verifies: REQ-DEV-130
func TestResendFirstAfterRotationAndSuspension(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, nil)
	d := e.NewDevice(t)
	m := devices.Meta{Transport: "http", RequestID: "req-resend", SourceAddr: "192.0.2.7"}
	first := d.Upload(t, e.Clock.Now(), 3)
	orig, err := e.Devices.Accept(e.Ctx, first, m)
	if err != nil {
		t.Fatal(err)
	}
	// A forged re-send: the same body, a signature by another key.
	env, err := envelope.ParseEnvelope(first, envelope.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	_, stranger := devicestestKey(t)
	forged, err := (&envelope.Envelope{Body: env.Body, Sig: signWith(stranger, env.Body)}).Marshal()
	if err != nil {
		t.Fatal(err)
	}

	// Rotate the key: the old one is refused for new uploads, not for the re-send.
	_, newKey := devicestestKey(t)
	rraw, err := envelope.SignRotate(d.ID.String(), d.KV, d.Key, newKey, e.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Devices.RotateKey(e.Ctx, rraw, m); err != nil {
		t.Fatal(err)
	}
	obs := e.Count(t, `SELECT count(*) FROM core_observations`)
	check := func(state string) {
		t.Helper()
		rc, err := e.Devices.Accept(e.Ctx, first, m)
		if err != nil {
			t.Fatalf("Accept(re-send, %s) = %v, want the original receipt", state, err)
		}
		if !rc.Replayed || rc.Body.AuditEvent != orig.Body.AuditEvent || rc.Body.Seq != orig.Body.Seq ||
			!bytes.Equal(rc.Signed.Body, orig.Signed.Body) {
			t.Errorf("Accept(re-send, %s) = replayed %v event %s, want the original receipt (event %s)",
				state, rc.Replayed, rc.Body.AuditEvent, orig.Body.AuditEvent)
		}
		if err := envelope.VerifyReceipt(e.Signer.Public(), &rc.Signed); err != nil {
			t.Errorf("VerifyReceipt(re-send, %s) = %v", state, err)
		}
		if _, err := e.Devices.Accept(e.Ctx, forged, m); err == nil {
			t.Errorf("Accept(forged re-send, %s) = nil error, want a refusal", state)
		}
		if n := e.Count(t, `SELECT count(*) FROM core_observations`); n != obs {
			t.Errorf("observations after re-send (%s) = %d, want %d (nothing stored again)", state, n, obs)
		}
	}
	check("key rotated")
	if _, err := e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 1), m); !errors.Is(err, devices.ErrUnknownKey) {
		t.Errorf("Accept(new upload, old key) = %v, want ErrUnknownKey", err)
	}
	if _, err := e.Devices.SetStatus(e.Ctx, devicestest.Admin, d.ID, devices.StatusSuspended, "lost"); err != nil {
		t.Fatal(err)
	}
	check("suspended")
	d.Key, d.KV = newKey, d.KV+1
	if _, err := e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 1), m); !errors.Is(err, devices.ErrDeviceSuspended) {
		t.Errorf("Accept(new upload, suspended) = %v, want ErrDeviceSuspended", err)
	}
	if _, err := e.Devices.SetStatus(e.Ctx, devicestest.Admin, d.ID, devices.StatusDecommissioned, "retired"); err != nil {
		t.Fatal(err)
	}
	check("decommissioned")
}

// Key rotation is idempotent: the re-send of a rotation already applied (its answer lost)
// gets the same device and key version, marked replayed, whenever it comes (even past the
// skew window), and changes nothing; once a later rotation happened it is refused.
// Verifies: REQ-DEV-131
func TestRotationIdempotent(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, nil)
	d := e.NewDevice(t)
	m := devices.Meta{Transport: "http"}
	_, k2 := devicestestKey(t)
	rraw, err := envelope.SignRotate(d.ID.String(), d.KV, d.Key, k2, e.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.Devices.RotateKey(e.Ctx, rraw, m)
	if err != nil || out.Replayed {
		t.Fatalf("RotateKey = %+v, %v; want a fresh rotation", out, err)
	}
	keys := e.Count(t, `SELECT count(*) FROM devices_keys WHERE device_id = $1`, d.ID)
	e.Clock.Add(time.Hour) // far past the skew window
	again, err := e.Devices.RotateKey(e.Ctx, rraw, m)
	if err != nil {
		t.Fatalf("RotateKey(re-sent) = %v, want the same answer", err)
	}
	if !again.Replayed || again.KeyVersion != out.KeyVersion || again.DeviceID != out.DeviceID {
		t.Errorf("RotateKey(re-sent) = %+v, want %+v replayed", again, out)
	}
	if n := e.Count(t, `SELECT count(*) FROM devices_keys WHERE device_id = $1`, d.ID); n != keys {
		t.Errorf("device keys after re-sent rotation = %d, want %d", n, keys)
	}
	if n := e.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'device.key.rotated' AND object_id = $1`, d.ID.String()); n != 1 {
		t.Errorf("device.key.rotated events = %d, want 1", n)
	}
	// The new key works.
	d.Key, d.KV = k2, uint64(out.KeyVersion)
	if _, err := e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 1), m); err != nil {
		t.Fatalf("Accept(new key) = %v", err)
	}
	// A fresh rotation request past the skew window is still refused.
	_, k3 := devicestestKey(t)
	stale, _ := envelope.SignRotate(d.ID.String(), d.KV, d.Key, k3, e.Clock.Now().Add(-time.Hour))
	if _, err := e.Devices.RotateKey(e.Ctx, stale, m); !errors.Is(err, devices.ErrClockSkew) {
		t.Errorf("RotateKey(stale, not applied) = %v, want ErrClockSkew", err)
	}
	// After a later rotation, the first one's re-send is refused (its key is retired).
	r3, _ := envelope.SignRotate(d.ID.String(), d.KV, d.Key, k3, e.Clock.Now())
	if _, err := e.Devices.RotateKey(e.Ctx, r3, m); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Devices.RotateKey(e.Ctx, rraw, m); !errors.Is(err, devices.ErrUnknownKey) {
		t.Errorf("RotateKey(re-sent after a later rotation) = %v, want ErrUnknownKey", err)
	}
	// A request naming the new key but signed by a stranger is not a re-send.
	_, stranger := devicestestKey(t)
	d.Key, d.KV = k3, d.KV+1
	forged, _ := envelope.SignRotate(d.ID.String(), d.KV-1, stranger, k3, e.Clock.Now())
	if _, err := e.Devices.RotateKey(e.Ctx, forged, m); !errors.Is(err, devices.ErrUnknownKey) {
		t.Errorf("RotateKey(forged re-send) = %v, want ErrUnknownKey", err)
	}
}

// The enrollment request's time must be within the skew window; a refused request does not
// consume the token, is audited with its request id and source, and stores nothing.
// Verifies: REQ-DEV-133
func TestEnrollmentSkew(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, nil)
	d := e.RegisterDevice(t)
	tok, _, err := e.Devices.IssueEnrollmentToken(e.Ctx, devicestest.Admin, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	m := devices.Meta{Transport: "http", RequestID: "req-enroll-skew", SourceAddr: "192.0.2.9"}
	for _, off := range []time.Duration{-24 * time.Hour, -6 * time.Minute, 6 * time.Minute} {
		raw, _ := envelope.SignEnroll(tok, d.Key, e.Clock.Now().Add(off))
		_, err := e.Devices.Enroll(e.Ctx, raw, m)
		var re *devices.RejectError
		if !errors.Is(err, devices.ErrClockSkew) || !errors.As(err, &re) || re.Code != "clock_skew" {
			t.Errorf("Enroll(time %s off) = %v, want clock_skew", off, err)
		}
	}
	if n := e.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'device.enroll.rejected' AND reason = 'clock_skew'
		AND request_id = $1 AND source_addr = $2`, m.RequestID, m.SourceAddr); n != 3 {
		t.Errorf("device.enroll.rejected clock_skew events = %d, want 3", n)
	}
	if n := e.Count(t, `SELECT count(*) FROM devices_keys WHERE device_id = $1`, d.ID); n != 0 {
		t.Errorf("keys after refused enrollments = %d, want 0", n)
	}
	raw, _ := envelope.SignEnroll(tok, d.Key, e.Clock.Now().Add(-4*time.Minute))
	if _, err := e.Devices.Enroll(e.Ctx, raw, m); err != nil {
		t.Errorf("Enroll(within skew, token unused) = %v", err)
	}
}

// Refusals of the clinical core (unknown_code, wrong_unit, impossible_value, future_time)
// are audited as upload.rejected with the request's id and source address and core's code.
// Verifies: REQ-AUD-031
func TestCoreRefusalsAuditedWithRequest(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, nil)
	d := e.NewDevice(t)
	now := e.Clock.Now()
	cases := []struct {
		code string
		smp  envelope.Sample
	}{
		{"unknown_code", envelope.Sample{Code: "99999-9", Value: 1, Unit: "/min", T: now.UnixMilli()}},
		{"wrong_unit", envelope.Sample{Code: "8867-4", Value: 72, Unit: "kg", T: now.UnixMilli()}},
		{"impossible_value", envelope.Sample{Code: "8867-4", Value: -5, Unit: "/min", T: now.UnixMilli()}},
		{"future_time", envelope.Sample{Code: "8867-4", Value: 72, Unit: "/min", T: now.Add(time.Hour).UnixMilli()}},
	}
	for _, tc := range cases {
		d.Seq++
		raw := d.Sign(t, &envelope.Upload{Device: d.ID.String(), KeyVersion: d.KV, Seq: d.Seq, SentAt: now.UnixMilli(), Samples: []envelope.Sample{tc.smp}})
		m := devices.Meta{Transport: "mqtt", RequestID: "req-" + tc.code, SourceAddr: "mqtt:test"}
		_, err := e.Devices.Accept(e.Ctx, raw, m)
		if got := devices.ReasonOf(err); got != tc.code {
			t.Errorf("Accept(%s) = %v (code %s), want %s", tc.code, err, got, tc.code)
		}
		if n := e.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'upload.rejected' AND reason = $1
			AND request_id = $2 AND source_addr = $3 AND actor_id = $4`, tc.code, m.RequestID, m.SourceAddr, d.ID.String()); n != 1 {
			t.Errorf("upload.rejected %s events with request id and source = %d, want 1", tc.code, n)
		}
	}
	if n := e.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'upload.rejected' AND (request_id IS NULL OR request_id = '' OR source_addr IS NULL OR source_addr = '')`); n != 0 {
		t.Errorf("upload.rejected events without request id or source = %d, want 0", n)
	}
	if n := e.Count(t, `SELECT count(*) FROM core_observations`); n != 0 {
		t.Errorf("observations = %d, want 0", n)
	}
}

func signWith(k ed25519.PrivateKey, body []byte) []byte { return ed25519.Sign(k, body) }
