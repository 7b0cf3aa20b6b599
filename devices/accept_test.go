package devices_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/obs"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/devicestest"
	"github.com/vigilhealth/vigil/devices/envelope"
)

// Verifies: REQ-DEV-020, REQ-DEV-023, REQ-DEV-030
func TestAcceptStoresAndReceipts(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, nil)
	d := e.NewDevice(t)
	raw := d.Upload(t, e.Clock.Now(), 10)
	rc, err := e.Devices.Accept(e.Ctx, raw, devices.Meta{Transport: "http", RequestID: "r1"})
	if err != nil {
		t.Fatalf("Accept = %v, want nil", err)
	}
	if rc.Replayed || rc.Body.Seq != 1 || rc.Body.Device != d.ID.String() {
		t.Errorf("Accept receipt = %+v, want seq 1 of %s, not replayed", rc.Body, d.ID)
	}
	if err := envelope.VerifyReceipt(e.Signer.Public(), &rc.Signed); err != nil {
		t.Errorf("VerifyReceipt = %v, want nil", err)
	}
	env, _ := envelope.ParseEnvelope(raw, envelope.Limits{})
	if h := envelope.Hash(env.Body); !bytes.Equal(rc.Body.Upload, h[:]) {
		t.Errorf("receipt upload hash = %x, want %x", rc.Body.Upload, h)
	}
	if n := e.Count(t, `SELECT count(*) FROM core_observations WHERE patient_id = $1`, e.Patient); n != 10 {
		t.Errorf("observations stored = %d, want 10", n)
	}
	if n := e.Count(t, `SELECT count(*) FROM audit_events WHERE id = $1 AND action = 'upload.accepted'`, uuid.MustParse(rc.Body.AuditEvent)); n != 1 {
		t.Errorf("upload.accepted events with the receipt's id = %d, want 1", n)
	}
	if n := e.Count(t, `SELECT last_seq FROM devices_devices WHERE id = $1`, d.ID); n != 1 {
		t.Errorf("last_seq = %d, want 1", n)
	}

	// An exact re-send returns the original receipt and stores nothing.
	again, err := e.Devices.Accept(e.Ctx, raw, devices.Meta{Transport: "mqtt"})
	if err != nil {
		t.Fatalf("Accept(re-send) = %v, want nil", err)
	}
	if !again.Replayed || !bytes.Equal(again.Signed.Body, rc.Signed.Body) {
		t.Errorf("Accept(re-send) = replayed %v body %x, want the original receipt %x", again.Replayed, again.Signed.Body, rc.Signed.Body)
	}
	if n := e.Count(t, `SELECT count(*) FROM core_uploads`); n != 1 {
		t.Errorf("core uploads after re-send = %d, want 1", n)
	}
	// Even after the skew window has passed.
	e.Clock.Add(time.Hour)
	if late, err := e.Devices.Accept(e.Ctx, raw, devices.Meta{Transport: "http"}); err != nil || !late.Replayed {
		t.Errorf("Accept(late re-send) = %v, %v; want the original receipt", late, err)
	}
}

// rejectCase is one way an upload is refused.
type rejectCase struct {
	name   string
	make   func(t *testing.T, e *devicestest.Env) []byte
	want   error
	code   string
	device bool // whether the event's actor is the (claimed) device
}

// RejectCases are every rejection path of Accept, shared with the HTTP tests.
func rejectCases() []rejectCase {
	return []rejectCase{
		{name: "malformed", want: devices.ErrMalformed, code: "malformed_upload",
			make: func(t *testing.T, e *devicestest.Env) []byte { return []byte("not cbor at all") }},
		{name: "non-canonical body", want: devices.ErrMalformed, code: "malformed_upload",
			make: func(t *testing.T, e *devicestest.Env) []byte {
				d := e.NewDevice(t)
				raw := d.Upload(t, e.Clock.Now(), 1)
				env, _ := envelope.ParseEnvelope(raw, envelope.Limits{})
				body := bytes.Replace(env.Body, []byte{0xf9, 0x54, 0x80}, []byte{0x18, 0x48}, 1) // 72.0 as an integer
				out, _ := (&envelope.Envelope{Body: body, Sig: envelopeSign(d, body)}).Marshal()
				return out
			}},
		{name: "too large", want: devices.ErrTooLarge, code: "upload_too_large",
			make: func(t *testing.T, e *devicestest.Env) []byte {
				return make([]byte, envelope.DefaultLimits.MaxEnvelopeBytes+1)
			}},
		{name: "too many samples", want: devices.ErrTooLarge, code: "upload_too_large",
			make: func(t *testing.T, e *devicestest.Env) []byte {
				d := e.NewDevice(t)
				d.Seq++
				body, err := envelope.Canonical(&envelope.Upload{Type: envelope.TypeUpload, Device: d.ID.String(), KeyVersion: d.KV, Seq: d.Seq,
					SentAt: e.Clock.Now().UnixMilli(), Samples: devicestest.Vitals(envelope.DefaultLimits.MaxSamples+1, e.Clock.Now())})
				if err != nil {
					t.Fatal(err)
				}
				out, _ := (&envelope.Envelope{Body: body, Sig: envelopeSign(d, body)}).Marshal()
				return out
			}},
		{name: "unknown device", want: devices.ErrUnknownDevice, code: "unknown_device", device: true,
			make: func(t *testing.T, e *devicestest.Env) []byte {
				d := e.NewDevice(t)
				d.ID = uuid.New()
				return d.Upload(t, e.Clock.Now(), 2)
			}},
		{name: "bad signature", want: devices.ErrBadSignature, code: "invalid_signature", device: true,
			make: func(t *testing.T, e *devicestest.Env) []byte {
				d := e.NewDevice(t)
				other := e.RegisterDevice(t)
				d.Key = other.Key
				return d.Upload(t, e.Clock.Now(), 2)
			}},
		{name: "unknown key version", want: devices.ErrUnknownKey, code: "unknown_key", device: true,
			make: func(t *testing.T, e *devicestest.Env) []byte {
				d := e.NewDevice(t)
				d.KV = 2
				return d.Upload(t, e.Clock.Now(), 2)
			}},
		{name: "not enrolled", want: devices.ErrUnknownKey, code: "unknown_key", device: true,
			make: func(t *testing.T, e *devicestest.Env) []byte {
				d := e.RegisterDevice(t)
				d.KV = 1
				return d.Upload(t, e.Clock.Now(), 2)
			}},
		{name: "suspended", want: devices.ErrDeviceSuspended, code: "device_suspended", device: true,
			make: func(t *testing.T, e *devicestest.Env) []byte {
				d := e.NewDevice(t)
				if _, err := e.Devices.SetStatus(e.Ctx, devicestest.Admin, d.ID, devices.StatusSuspended, "lost"); err != nil {
					t.Fatal(err)
				}
				return d.Upload(t, e.Clock.Now(), 2)
			}},
		{name: "decommissioned", want: devices.ErrDeviceDecommissioned, code: "device_decommissioned", device: true,
			make: func(t *testing.T, e *devicestest.Env) []byte {
				d := e.NewDevice(t)
				if _, err := e.Devices.SetStatus(e.Ctx, devicestest.Admin, d.ID, devices.StatusDecommissioned, "retired"); err != nil {
					t.Fatal(err)
				}
				return d.Upload(t, e.Clock.Now(), 2)
			}},
		{name: "replay", want: devices.ErrReplay, code: "replay", device: true,
			make: func(t *testing.T, e *devicestest.Env) []byte {
				d := e.NewDevice(t)
				d.Seq = 10
				if _, err := e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 2), devices.Meta{Transport: "http"}); err != nil {
					t.Fatal(err)
				}
				d.Seq = 5 // below the accepted 11, different bytes
				return d.Upload(t, e.Clock.Now(), 3)
			}},
		{name: "same sequence, different bytes", want: devices.ErrReplay, code: "replay", device: true,
			make: func(t *testing.T, e *devicestest.Env) []byte {
				d := e.NewDevice(t)
				if _, err := e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 2), devices.Meta{Transport: "http"}); err != nil {
					t.Fatal(err)
				}
				d.Seq = 0
				return d.Upload(t, e.Clock.Now(), 3)
			}},
		{name: "clock skew ahead", want: devices.ErrClockSkew, code: "clock_skew", device: true,
			make: func(t *testing.T, e *devicestest.Env) []byte {
				return e.NewDevice(t).Upload(t, e.Clock.Now().Add(6*time.Minute), 2)
			}},
		{name: "clock skew behind", want: devices.ErrClockSkew, code: "clock_skew", device: true,
			make: func(t *testing.T, e *devicestest.Env) []byte {
				return e.NewDevice(t).Upload(t, e.Clock.Now().Add(-6*time.Minute), 2)
			}},
		{name: "no patient", want: devices.ErrNotAssigned, code: "device_not_assigned", device: true,
			make: func(t *testing.T, e *devicestest.Env) []byte {
				d := e.RegisterDevice(t)
				e.Enroll(t, d)
				return d.Upload(t, e.Clock.Now(), 2)
			}},
	}
}

func envelopeSign(d *devicestest.Device, body []byte) []byte { return ed25519.Sign(d.Key, body) }

func devicestestKey(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// Verifies: REQ-DEV-021, REQ-DEV-022, REQ-DEV-023, REQ-DEV-024, REQ-DEV-025, REQ-DEV-026
func TestAcceptRejections(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, nil)
	for _, tc := range rejectCases() {
		t.Run(tc.name, func(t *testing.T) {
			raw := tc.make(t, e)
			obs := e.Count(t, `SELECT count(*) FROM core_observations`)
			ups := e.Count(t, `SELECT count(*) FROM devices_uploads`)
			rej := e.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'upload.rejected' AND reason = $1`, tc.code)
			_, err := e.Devices.Accept(e.Ctx, raw, devices.Meta{Transport: "http", RequestID: "req-" + tc.name})
			if !errors.Is(err, tc.want) {
				t.Fatalf("Accept = %v, want %v", err, tc.want)
			}
			var re *devices.RejectError
			if !errors.As(err, &re) || re.Code != tc.code {
				t.Errorf("Accept code = %v, want %s", err, tc.code)
			}
			if n := e.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'upload.rejected' AND reason = $1 AND outcome = 'rejected'`, tc.code); n != rej+1 {
				t.Errorf("upload.rejected events with reason %s = %d, want %d", tc.code, n, rej+1)
			}
			if n := e.Count(t, `SELECT count(*) FROM core_observations`); n != obs {
				t.Errorf("observations = %d after rejection, want %d (nothing stored)", n, obs)
			}
			if n := e.Count(t, `SELECT count(*) FROM devices_uploads`); n != ups {
				t.Errorf("uploads = %d after rejection, want %d (nothing stored)", n, ups)
			}
		})
	}
}

// Verifies: REQ-DEV-040
func TestRateLimitAndQuota(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, func(c *devices.Config) { c.RatePerSecond = 1; c.RateBurst = 2; c.SampleQuotaPerHour = 25 })
	d := e.NewDevice(t)
	for i := 0; i < 2; i++ {
		if _, err := e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 5), devices.Meta{Transport: "http"}); err != nil {
			t.Fatalf("Accept %d = %v", i, err)
		}
	}
	_, err := e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 5), devices.Meta{Transport: "http"})
	var re *devices.RejectError
	if !errors.Is(err, devices.ErrRateLimited) || !errors.As(err, &re) || re.RetryAfterSeconds() != 1 {
		t.Fatalf("Accept(3rd in burst) = %v, want ErrRateLimited with Retry-After 1", err)
	}
	e.Clock.Add(time.Second)
	if _, err := e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 5), devices.Meta{Transport: "http"}); err != nil {
		t.Fatalf("Accept(after refill) = %v, want nil", err)
	}
	// 15 of 25 samples used (plus a trickle of refill); 20 more do not fit.
	e.Clock.Add(2 * time.Second)
	_, err = e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 20), devices.Meta{Transport: "http"})
	if !errors.Is(err, devices.ErrQuotaExceeded) || !errors.As(err, &re) || re.RetryAfter <= 0 {
		t.Fatalf("Accept(over quota) = %v, want ErrQuotaExceeded with Retry-After", err)
	}
	if n := e.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'upload.rejected' AND reason IN ('rate_limited','quota_exceeded')`); n != 2 {
		t.Errorf("rate/quota rejections audited = %d, want 2", n)
	}
}

// Verifies: REQ-DEV-041
func TestBackpressure(t *testing.T) {
	t.Parallel()
	var over bool
	var mu sync.Mutex
	e := devicestest.New(t, func(c *devices.Config) {
		c.Pushback = devices.AdmitFunc(func() error {
			mu.Lock()
			defer mu.Unlock()
			if over {
				return &audit.PushbackError{RetryAfter: 7 * time.Second}
			}
			return nil
		})
	})
	d := e.NewDevice(t)
	mu.Lock()
	over = true
	mu.Unlock()
	_, err := e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 5), devices.Meta{Transport: "http"})
	var re *devices.RejectError
	if !errors.Is(err, devices.ErrBackpressure) || !errors.As(err, &re) || re.RetryAfterSeconds() != 7 {
		t.Fatalf("Accept(overloaded) = %v, want ErrBackpressure with Retry-After 7", err)
	}
	mu.Lock()
	over = false
	mu.Unlock()
	// The refused upload did not use up its sequence number.
	d.Seq--
	if _, err := e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 5), devices.Meta{Transport: "http"}); err != nil {
		t.Fatalf("Accept(after back-pressure) = %v, want nil", err)
	}
}

// Verifies: REQ-DEV-004, REQ-DEV-005
func TestSuspendRotateTakeEffectAtOnce(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, nil)
	d := e.NewDevice(t)
	m := devices.Meta{Transport: "http"}
	if _, err := e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 2), m); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Devices.SetStatus(e.Ctx, devicestest.Admin, d.ID, devices.StatusSuspended, "investigation"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 2), m); !errors.Is(err, devices.ErrDeviceSuspended) {
		t.Fatalf("Accept(suspended) = %v, want ErrDeviceSuspended", err)
	}
	if _, err := e.Devices.SetStatus(e.Ctx, devicestest.Admin, d.ID, devices.StatusActive, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 2), m); err != nil {
		t.Fatalf("Accept(reactivated) = %v, want nil", err)
	}
	// Rotate: the new key signed by the old; from then on only the new key.
	oldKey := d.Key
	_, newKey := devicestestKey(t)
	rraw, err := envelope.SignRotate(d.ID.String(), d.KV, oldKey, newKey, e.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.Devices.RotateKey(e.Ctx, rraw, m)
	if err != nil || out.KeyVersion != 2 {
		t.Fatalf("RotateKey = %+v, %v; want key version 2", out, err)
	}
	if _, err := e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 2), m); !errors.Is(err, devices.ErrUnknownKey) {
		t.Fatalf("Accept(old key after rotation) = %v, want ErrUnknownKey", err)
	}
	d.Key, d.KV = newKey, 2
	if _, err := e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 2), m); err != nil {
		t.Fatalf("Accept(new key) = %v, want nil", err)
	}
	// A re-sent rotation (its answer lost) gets the same answer and changes nothing.
	if again, err := e.Devices.RotateKey(e.Ctx, rraw, m); err != nil || !again.Replayed || again.KeyVersion != 2 {
		t.Errorf("RotateKey(re-sent) = %+v, %v; want key version 2, replayed", again, err)
	}
	// A rotation not signed by the current key is refused.
	_, k3 := devicestestKey(t)
	_, stranger := devicestestKey(t)
	bad, _ := envelope.SignRotate(d.ID.String(), d.KV, stranger, k3, e.Clock.Now())
	if _, err := e.Devices.RotateKey(e.Ctx, bad, m); !errors.Is(err, devices.ErrBadSignature) {
		t.Errorf("RotateKey(signed by a stranger) = %v, want ErrBadSignature", err)
	}
	if n := e.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'device.key.rotate.rejected'`); n != 1 {
		t.Errorf("rotate rejections audited = %d, want 1", n)
	}
}

// Verifies: REQ-DEV-002, REQ-DEV-003, REQ-DEV-136
func TestEnrollment(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, func(c *devices.Config) { c.EnrollmentTokenTTL = time.Hour })
	m := devices.Meta{Transport: "http"}
	d := e.RegisterDevice(t)
	tok, exp, err := e.Devices.IssueEnrollmentToken(e.Ctx, devicestest.Admin, d.ID)
	if err != nil || !exp.Equal(e.Clock.Now().Add(time.Hour)) {
		t.Fatalf("IssueEnrollmentToken = %v, %v", exp, err)
	}
	raw, _ := envelope.SignEnroll(tok, d.Key, e.Clock.Now())
	if out, err := e.Devices.Enroll(e.Ctx, raw, m); err != nil || out.KeyVersion != 1 || out.DeviceID != d.ID {
		t.Fatalf("Enroll = %+v, %v; want key version 1 for %s", out, err, d.ID)
	}
	// One-time: the re-send of the same request (its answer lost) gets the same answer and
	// changes nothing; the used token with any other key is refused.
	if again, err := e.Devices.Enroll(e.Ctx, raw, m); err != nil || !again.Replayed || again.KeyVersion != 1 || again.DeviceID != d.ID {
		t.Errorf("Enroll(re-send) = %+v, %v; want the original answer, replayed", again, err)
	}
	if n := e.Count(t, `SELECT count(*) FROM devices_keys WHERE device_id = '`+d.ID.String()+`'`); n != 1 {
		t.Errorf("keys after a re-sent enrollment = %d, want 1", n)
	}
	if n := e.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'device.enrolled'`); n != 1 {
		t.Errorf("device.enrolled events after a re-sent enrollment = %d, want 1", n)
	}
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	rawOther, _ := envelope.SignEnroll(tok, otherKey, e.Clock.Now())
	if _, err := e.Devices.Enroll(e.Ctx, rawOther, m); !errors.Is(err, devices.ErrInvalidToken) {
		t.Errorf("Enroll(used token, another key) = %v, want ErrInvalidToken", err)
	}
	// Expiring.
	d2 := e.RegisterDevice(t)
	tok2, _, _ := e.Devices.IssueEnrollmentToken(e.Ctx, devicestest.Admin, d2.ID)
	e.Clock.Add(time.Hour)
	raw2, _ := envelope.SignEnroll(tok2, d2.Key, e.Clock.Now())
	if _, err := e.Devices.Enroll(e.Ctx, raw2, m); !errors.Is(err, devices.ErrInvalidToken) {
		t.Errorf("Enroll(expired token) = %v, want ErrInvalidToken", err)
	}
	// Unknown token.
	raw3, _ := envelope.SignEnroll("vet_nope", d2.Key, e.Clock.Now())
	if _, err := e.Devices.Enroll(e.Ctx, raw3, m); !errors.Is(err, devices.ErrInvalidToken) {
		t.Errorf("Enroll(unknown token) = %v, want ErrInvalidToken", err)
	}
	// A key already registered to another device.
	tok4, _, _ := e.Devices.IssueEnrollmentToken(e.Ctx, devicestest.Admin, d2.ID)
	raw4, _ := envelope.SignEnroll(tok4, d.Key, e.Clock.Now())
	if _, err := e.Devices.Enroll(e.Ctx, raw4, m); !errors.Is(err, devices.ErrConflict) {
		t.Errorf("Enroll(key of another device) = %v, want ErrConflict", err)
	}
	if n := e.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'device.enroll.rejected'`); n != 4 {
		t.Errorf("enroll rejections audited = %d, want 4", n)
	}
	if n := e.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'device.enrolled' AND object_id = $1`, d.ID.String()); n != 1 {
		t.Errorf("device.enrolled events = %d, want 1", n)
	}
}

// Verifies: REQ-DEV-001, REQ-DEV-006
func TestRegistryAdmin(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, nil)
	d := e.NewDevice(t)
	p2 := e.NewPatient(t)
	if _, err := e.Devices.AssignPatient(e.Ctx, devicestest.Admin, d.ID, &p2); err != nil {
		t.Fatal(err)
	}
	as, err := e.Devices.Assignments(e.Ctx, d.ID)
	if err != nil || len(as) != 2 || as[0].EndedAt == nil || *as[1].PatientID != p2 || as[1].EndedAt != nil {
		t.Fatalf("Assignments = %+v, %v; want two, the first ended, the second open for %s", as, err, p2)
	}
	// Uploads now go to p2.
	if _, err := e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 3), devices.Meta{Transport: "http"}); err != nil {
		t.Fatal(err)
	}
	if n := e.Count(t, `SELECT count(*) FROM core_observations WHERE patient_id = $1`, p2); n != 3 {
		t.Errorf("observations of the new patient = %d, want 3", n)
	}
	bogus := uuid.New()
	if _, err := e.Devices.AssignPatient(e.Ctx, devicestest.Admin, d.ID, &bogus); !errors.Is(err, devices.ErrInvalidInput) {
		t.Errorf("AssignPatient(unknown patient) = %v, want ErrInvalidInput", err)
	}
	if _, err := e.Devices.Register(e.Ctx, devicestest.Admin, devices.NewDevice{Serial: "x", Model: "", Firmware: "1"}); !errors.Is(err, devices.ErrInvalidInput) {
		t.Errorf("Register(empty model) = %v, want ErrInvalidInput", err)
	}
	got, _ := e.Devices.Get(e.Ctx, d.ID)
	if _, err := e.Devices.Register(e.Ctx, devicestest.Admin, devices.NewDevice{Serial: got.Serial, Model: "m", Firmware: "1"}); !errors.Is(err, devices.ErrConflict) {
		t.Errorf("Register(duplicate serial) = %v, want ErrConflict", err)
	}
	if _, err := e.Devices.SetStatus(e.Ctx, devicestest.Admin, d.ID, devices.StatusDecommissioned, "end of life"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Devices.SetStatus(e.Ctx, devicestest.Admin, d.ID, devices.StatusActive, ""); !errors.Is(err, devices.ErrConflict) {
		t.Errorf("SetStatus(decommissioned → active) = %v, want ErrConflict", err)
	}
	ks, _ := e.Devices.Keys(e.Ctx, d.ID)
	if len(ks) != 1 || ks[0].RetiredAt == nil {
		t.Errorf("Keys after decommission = %+v, want the key retired", ks)
	}
	if _, err := e.Devices.Get(e.Ctx, uuid.New()); !errors.Is(err, devices.ErrNotFound) {
		t.Errorf("Get(unknown) = %v, want ErrNotFound", err)
	}
	list, err := e.Devices.List(e.Ctx, devices.StatusDecommissioned, uuid.Nil, 10)
	if err != nil || len(list) != 1 || list[0].ID != d.ID {
		t.Errorf("List(decommissioned) = %v, %v; want [%s]", list, err, d.ID)
	}
}

// Verifies: REQ-DEV-020, REQ-DEV-042
func TestConcurrentGroupCommit(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, func(c *devices.Config) { c.BatchMaxWait = 5 * time.Millisecond })
	const nDev, perDev = 20, 15
	devs := make([]*devicestest.Device, nDev)
	for i := range devs {
		devs[i] = e.NewDevice(t)
	}
	var wg sync.WaitGroup
	errs := make(chan error, nDev*perDev)
	for _, d := range devs {
		wg.Add(1)
		go func(d *devicestest.Device) {
			defer wg.Done()
			// Each device sends sequentially (as a device does); devices run concurrently.
			for j := 0; j < perDev; j++ {
				rc, err := e.Devices.Accept(e.Ctx, d.Upload(t, e.Clock.Now().Add(time.Duration(j)*time.Millisecond), 1), devices.Meta{Transport: "http"})
				if err != nil {
					errs <- fmt.Errorf("device %s upload %d: %w", d.ID, j, err)
					continue
				}
				// Receipts of a group are signed together (keys.BatchSigner): each must verify.
				if err := envelope.VerifyReceipt(e.Signer.Public(), &rc.Signed); err != nil || rc.Body.Device != d.ID.String() {
					errs <- fmt.Errorf("device %s upload %d: receipt %+v: %v", d.ID, j, rc.Body, err)
				}
			}
		}(d)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := e.Count(t, `SELECT count(*) FROM devices_uploads`); n != nDev*perDev {
		t.Errorf("uploads stored = %d, want %d", n, nDev*perDev)
	}
	if n := e.Count(t, `SELECT count(*) FROM devices_devices WHERE last_seq = $1`, perDev); n != nDev {
		t.Errorf("devices with last_seq %d = %d, want %d", perDev, n, nDev)
	}
	if st := e.Devices.Stats(); st.Groups >= st.Accepted {
		t.Errorf("Stats = %+v: every commit held one upload, want shared group commits", st)
	}
}

// Verifies: REQ-DEV-010, REQ-DEV-020
func TestWaveformsStored(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, nil)
	d := e.NewDevice(t)
	now := e.Clock.Now()
	wf := []envelope.Waveform{{Code: "131328", Unit: "mV", T0: now.Add(-time.Second).UnixMilli(), Hz: 250, Scale: 0.005, Data: []int64{0, 12, 40, 160, -30}}}
	for i, samples := range [][]envelope.Sample{devicestest.Vitals(2, now), {}} {
		d.Seq++
		raw := d.Sign(t, &envelope.Upload{Device: d.ID.String(), KeyVersion: d.KV, Seq: d.Seq, SentAt: now.UnixMilli(), Samples: samples, Waveforms: wf})
		rc, err := e.Devices.Accept(e.Ctx, raw, devices.Meta{Transport: "http"})
		if err != nil {
			t.Fatalf("Accept(upload %d with a waveform) = %v, want nil", i, err)
		}
		var stored []byte
		if err := e.Pool.QueryRow(e.Ctx, `SELECT waveforms FROM devices_uploads WHERE hash = $1`, rc.UploadHash[:]).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		want, _ := envelope.Canonical(wf)
		if !bytes.Equal(stored, want) {
			t.Errorf("stored waveforms = %x, want %x", stored, want)
		}
	}
}

// An upload verified and admitted before its device is suspended, but not yet committed, is
// refused at commit: the suspension takes effect for everything that commits after it.
// Verifies: REQ-DEV-005
func TestSuspendCatchesPendingUpload(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, func(c *devices.Config) { c.BatchMaxWait = 3 * time.Second })
	d := e.NewDevice(t)
	raw := d.Upload(t, e.Clock.Now(), 2)
	done := make(chan error, 1)
	go func() {
		_, err := e.Devices.Accept(e.Ctx, raw, devices.Meta{Transport: "http"})
		done <- err
	}()
	// Wait until it is admitted (the committer then waits up to BatchMaxWait for more).
	for e.Devices.Stats().Pending == 0 {
		select {
		case err := <-done:
			t.Fatalf("Accept returned before the suspension: %v", err)
		default:
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := e.Devices.SetStatus(e.Ctx, devicestest.Admin, d.ID, devices.StatusSuspended, "stolen"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, devices.ErrDeviceSuspended) {
		t.Fatalf("Accept(suspended while pending) = %v, want ErrDeviceSuspended", err)
	}
	if n := e.Count(t, `SELECT count(*) FROM core_observations`); n != 0 {
		t.Errorf("observations = %d, want 0", n)
	}
	if n := e.Count(t, `SELECT count(*) FROM audit_events WHERE action = 'upload.rejected' AND reason = 'device_suspended'`); n != 1 {
		t.Errorf("device_suspended rejections audited = %d, want 1", n)
	}
}

// A suspension made by one server reaches the device cache of another at once (PostgreSQL
// notification), so the other refuses at verification, not only at commit.
// Verifies: REQ-DEV-005
func TestSuspensionReachesOtherServers(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, nil)
	other, err := devices.New(devices.Config{Pool: e.Pool, Recorder: e.Rec, Ingester: e.Core, ReceiptSigner: e.Signer, Now: e.Clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Close(context.Background()) })
	d := e.NewDevice(t)
	if _, err := other.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 2), devices.Meta{Transport: "http"}); err != nil {
		t.Fatalf("other.Accept = %v", err) // the device is now cached by the other server
	}
	if _, err := e.Devices.SetStatus(e.Ctx, devicestest.Admin, d.ID, devices.StatusSuspended, "stolen"); err != nil {
		t.Fatal(err)
	}
	raw := d.Upload(t, e.Clock.Now(), 2)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err = other.Verify(e.Ctx, raw)
		if errors.Is(err, devices.ErrDeviceSuspended) || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond) // the notification is asynchronous
	}
	if !errors.Is(err, devices.ErrDeviceSuspended) {
		t.Fatalf("other.Verify after suspension elsewhere = %v, want ErrDeviceSuspended", err)
	}
}

// A receipt never waits for the rules: uploads are committed and answered while the rules
// engine is stuck — the third even while its committer waits to hand its observations over —
// and once the engine moves again it receives every upload's observations, in order.
// Verifies: REQ-DEV-043, REQ-CORE-017
func TestReceiptDoesNotWaitForRules(t *testing.T) {
	t.Parallel()
	e := devicestest.New(t, nil)
	handoff := obs.NewHandoff(obs.HandoffConfig{Shards: 1, Capacity: 1})
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	var mu sync.Mutex
	var got []obs.Committed
	if err := handoff.Start(func(_ context.Context, c obs.Committed) error {
		<-release // the engine is stuck (a slow alarm transaction, say)
		mu.Lock()
		defer mu.Unlock()
		got = append(got, c)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	cs, err := core.New(core.Config{Pool: e.Pool, Recorder: e.Rec, Now: e.Clock.Now, Handoff: handoff})
	if err != nil {
		t.Fatal(err)
	}
	ds, err := devices.New(devices.Config{Pool: e.Pool, Recorder: e.Rec, Ingester: cs, ReceiptSigner: e.Signer, Now: e.Clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unblock()
		_ = ds.Close(context.Background())
		_ = handoff.Stop(context.Background())
	})
	d := e.NewDevice(t)
	var seqs []uint64
	for i := 0; i < 3; i++ {
		e.Clock.Add(10 * time.Second) // new samples each time
		rc, err := ds.Accept(e.Ctx, d.Upload(t, e.Clock.Now(), 5), devices.Meta{Transport: "http"})
		if err != nil {
			t.Fatalf("Accept(%d) while the rules are stuck = %v, want a receipt", i, err)
		}
		seqs = append(seqs, rc.Body.Seq)
	}
	if n := e.Count(t, `SELECT count(*) FROM core_observations`); n != 15 {
		t.Fatalf("observations committed = %d, want 15", n)
	}
	unblock()
	if err := handoff.Flush(e.Ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 3 {
		t.Fatalf("batches the rules received = %d, want 3 (one per upload, none dropped)", len(got))
	}
	for i, c := range got {
		if c.PatientID != e.Patient || len(c.Observations) != 5 || (i > 0 && !c.Observations[0].EffectiveAt.After(got[i-1].Observations[4].EffectiveAt)) {
			t.Errorf("batch %d = %d observations of %s, want the uploads' 5 of %s in order (receipts %v)", i, len(c.Observations), c.PatientID, e.Patient, seqs)
		}
	}
}
