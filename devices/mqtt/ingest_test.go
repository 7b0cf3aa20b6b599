package mqtt_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/envelope"
	"github.com/vigilhealth/vigil/devices/mqtt"
	"github.com/vigilhealth/vigil/devices/mqttwire"
	"github.com/vigilhealth/vigil/devices/sdk"
	sdkmqtt "github.com/vigilhealth/vigil/devices/sdk/mqtt"
	"github.com/vigilhealth/vigil/devices/sim/simtest"
)

func brokerURL() string {
	if u := os.Getenv("VIGIL_TEST_MQTT_URL"); u != "" {
		return u
	}
	return "mqtt://127.0.0.1:1883"
}

// uniquePrefix keeps parallel tests (and earlier runs' retained state) apart.
func uniquePrefix(t *testing.T) string {
	return "vigiltest/" + strings.ReplaceAll(uuid.NewString()[:13], "-", "") + "/devices"
}

type rig struct {
	stack  *simtest.Stack
	in     *mqtt.Ingestor
	prefix string
}

func newRig(t *testing.T, tune func(*devices.Config)) *rig {
	t.Helper()
	st := simtest.New(t, tune)
	prefix := uniquePrefix(t)
	in, err := mqtt.Start(mqtt.Config{Broker: brokerURL(), Prefix: prefix, Accepter: st.Devices, Recorder: st.Rec,
		ShareGroup: "g" + strings.ReplaceAll(uuid.NewString()[:8], "-", ""), Workers: 8})
	if err != nil {
		t.Fatalf("mqtt.Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := in.Close(ctx); err != nil {
			t.Errorf("Ingestor.Close = %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := in.Ready(ctx); err != nil {
		t.Fatalf("Ready: %v (is a broker running at %s? .ci/ensure-mosquitto starts one)", err, brokerURL())
	}
	return &rig{stack: st, in: in, prefix: prefix}
}

func (r *rig) device(t *testing.T, id string) *sdkmqtt.Device {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := sdkmqtt.DialDevice(ctx, sdkmqtt.DeviceConfig{Broker: brokerURL(), DeviceID: id, Prefix: r.prefix})
	if err != nil {
		t.Fatalf("DialDevice: %v", err)
	}
	t.Cleanup(func() { _ = d.Close(context.Background()) })
	return d
}

func signed(t *testing.T, id sdk.Identity, seq uint64, sentAt time.Time) []byte {
	t.Helper()
	u := envelope.Upload{Device: id.DeviceID, KeyVersion: id.KeyVersion, Seq: seq, SentAt: sentAt.UnixMilli(),
		Samples: []envelope.Sample{{Code: "8867-4", Value: 72, Unit: "/min", T: sentAt.Add(-time.Second).UnixMilli()},
			{Code: "59408-5", Value: 97, Unit: "%", T: sentAt.Add(-time.Second).UnixMilli()}}}
	raw, _, err := envelope.Sign(&u, id.PrivateKey)
	if err != nil {
		t.Fatalf("envelope.Sign: %v", err)
	}
	return raw
}

func send(t *testing.T, d *sdkmqtt.Device, raw []byte) *mqtt.Reply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	r, err := d.Send(ctx, raw)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	return r
}

// An upload published over MQTT is verified, stored and answered with a receipt signed by
// the receipt-signing key; an exact re-send gets the same receipt back and stores nothing.
// Verifies: REQ-DEV-100, REQ-DEV-103
func TestMQTTUploadAcceptedWithReceipt(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	id := r.stack.Device(t)
	d := r.device(t, id.DeviceID)
	raw := signed(t, id, 1, time.Now())
	rep := send(t, d, raw)
	if rep.Status != mqtt.StatusAccepted {
		t.Fatalf("reply = %+v, want accepted", rep)
	}
	env, _ := envelope.ParseEnvelope(raw, envelope.Limits{})
	if _, err := sdk.VerifyReceipt(rep.Receipt, r.stack.ReceiptKey, false, id.DeviceID, 1, envelope.Hash(env.Body)); err != nil {
		t.Fatalf("VerifyReceipt(reply receipt) = %v, want ok", err)
	}
	again := send(t, d, raw)
	if again.Status != mqtt.StatusAccepted || !again.Replayed || string(again.Receipt) != string(rep.Receipt) {
		t.Errorf("re-send reply = %+v, want accepted, replayed, same receipt", again)
	}
	var uploads int
	if err := r.stack.Pool.QueryRow(context.Background(), `SELECT count(*) FROM core_uploads WHERE device_id = $1`, id.DeviceID).Scan(&uploads); err != nil {
		t.Fatal(err)
	}
	if uploads != 1 {
		t.Errorf("core_uploads rows for the device = %d, want 1", uploads)
	}
	if s := r.in.Stats(); s.Accepted != 2 || s.Replies != 2 {
		t.Errorf("Stats() = %+v, want 2 accepted, 2 replies", s)
	}
}

// Every rejection path over MQTT: a coded rejection on the receipts topic, the rejection
// audited, nothing stored.
// Verifies: REQ-DEV-100, REQ-DEV-101, REQ-AUD-031
func TestMQTTRejections(t *testing.T) {
	t.Parallel()
	var overloaded atomic.Bool
	r := newRig(t, func(c *devices.Config) {
		c.RatePerSecond, c.RateBurst = 0.001, 3
		c.Pushback = devices.AdmitFunc(func() error {
			if overloaded.Load() {
				return &audit.PushbackError{RetryAfter: 2 * time.Second}
			}
			return nil
		})
	})
	ctx := context.Background()
	now := time.Now()
	id := r.stack.Device(t)
	d := r.device(t, id.DeviceID)
	if rep := send(t, d, signed(t, id, 10, now)); rep.Status != mqtt.StatusAccepted {
		t.Fatalf("first upload: %+v, want accepted", rep)
	}
	other := r.stack.Device(t)
	third := r.stack.Device(t)
	_, strangerKey, _ := ed25519.GenerateKey(rand.Reader)
	badSig := signed(t, id, 11, now)
	badSig[len(badSig)-1] ^= 1
	wrongKV := id
	wrongKV.KeyVersion = 2
	unknown := sdk.Identity{DeviceID: uuid.NewString(), KeyVersion: 1, PrivateKey: strangerKey}

	cases := []tc{
		{name: "malformed", dev: id.DeviceID, raw: []byte("not cbor at all"), code: devices.CodeMalformed},
		{name: "too large", dev: id.DeviceID, raw: make([]byte, 300<<10), code: devices.CodeTooLarge},
		{name: "unknown device", dev: unknown.DeviceID, raw: signed(t, unknown, 1, now), code: devices.CodeUnknownDevice},
		{name: "bad signature", dev: id.DeviceID, raw: badSig, code: devices.CodeBadSignature},
		{name: "unknown key version", dev: id.DeviceID, raw: signed(t, wrongKV, 12, now), code: devices.CodeUnknownKey},
		{name: "replay", dev: id.DeviceID, raw: signed(t, id, 5, now), code: devices.CodeReplay},
		{name: "clock skew", dev: id.DeviceID, raw: signed(t, id, 13, now.Add(-2*time.Hour)), code: devices.CodeClockSkew},
		{name: "topic mismatch", dev: other.DeviceID, raw: signed(t, id, 14, now), code: mqtt.CodeTopicMismatch},
		// Refusals of the clinical core, each from a device of its own (a refused upload
		// spends its device's rate budget too).
		coreCase(t, r, "unknown code", envelope.Sample{Code: "99999-9", Value: 1, Unit: "/min"}, 0, "unknown_code"),
		coreCase(t, r, "wrong unit", envelope.Sample{Code: "8867-4", Value: 72, Unit: "kg"}, 0, "wrong_unit"),
		coreCase(t, r, "impossible value", envelope.Sample{Code: "8867-4", Value: -5, Unit: "/min"}, 0, "impossible_value"),
		coreCase(t, r, "future time", envelope.Sample{Code: "8867-4", Value: 72, Unit: "/min"}, time.Hour, "future_time"),
		{name: "backpressure", dev: id.DeviceID, raw: signed(t, id, 15, now), code: devices.CodeBackpressure,
			before: func() { overloaded.Store(true) }},
		{name: "rate limited", dev: id.DeviceID, raw: signed(t, id, 30, now), code: devices.CodeRateLimited,
			before: func() {
				overloaded.Store(false)
				for s := uint64(17); s < 19; s++ { // use up the burst of 3 (seq 10 took one)
					if rep := send(t, d, signed(t, id, s, now)); rep.Status != mqtt.StatusAccepted {
						t.Fatalf("upload %d within the burst: %+v, want accepted", s, rep)
					}
				}
			}},
		{name: "not assigned", dev: third.DeviceID, raw: signed(t, third, 1, now), code: devices.CodeNotAssigned,
			before: func() {
				if _, err := r.stack.Devices.AssignPatient(ctx, devices.Origin{Actor: adminActor}, uuid.MustParse(third.DeviceID), nil); err != nil {
					t.Fatalf("AssignPatient(nil): %v", err)
				}
			}},
		{name: "suspended", dev: id.DeviceID, raw: signed(t, id, 40, now), code: devices.CodeSuspended,
			before: func() {
				if _, err := r.stack.Devices.SetStatus(ctx, devices.Origin{Actor: adminActor}, uuid.MustParse(id.DeviceID), "suspended", "test"); err != nil {
					t.Fatalf("SetStatus: %v", err)
				}
			}},
		{name: "decommissioned", dev: other.DeviceID, raw: signed(t, other, 1, now), code: devices.CodeDecommissioned,
			before: func() {
				if _, err := r.stack.Devices.SetStatus(ctx, devices.Origin{Actor: adminActor}, uuid.MustParse(other.DeviceID), "decommissioned", "test"); err != nil {
					t.Fatalf("SetStatus: %v", err)
				}
			}},
	}
	devs := map[string]*sdkmqtt.Device{id.DeviceID: d}
	for _, c := range cases {
		if c.before != nil {
			c.before()
		}
		dd := devs[c.dev]
		if dd == nil {
			dd = r.device(t, c.dev)
			devs[c.dev] = dd
		}
		rep := awaitReply(t, dd, c.raw)
		if rep.Status != mqtt.StatusRejected || rep.Error == nil || rep.Error.Code != c.code {
			t.Errorf("%s: reply = %+v (error %+v), want rejected with code %s", c.name, rep, rep.Error, c.code)
			continue
		}
		if (c.code == devices.CodeBackpressure || c.code == devices.CodeRateLimited) && rep.Error.RetryAfterSeconds <= 0 {
			t.Errorf("%s: retry_after_s = %d, want > 0", c.name, rep.Error.RetryAfterSeconds)
		}
		var n int
		if err := r.stack.Pool.QueryRow(ctx, `SELECT count(*) FROM audit_events WHERE outcome = 'rejected' AND reason = $1`, c.code).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Errorf("%s: no rejected audit event with reason %s", c.name, c.code)
		}
	}
	// Every refusal carries a request id made by the server and the source.
	var bare int
	if err := r.stack.Pool.QueryRow(ctx, `SELECT count(*) FROM audit_events WHERE action = 'upload.rejected'
		AND (request_id IS NULL OR request_id NOT LIKE 'mqtt-%' OR source_addr IS NULL OR source_addr NOT LIKE 'mqtt:%')`).Scan(&bare); err != nil {
		t.Fatal(err)
	}
	if bare != 0 {
		t.Errorf("upload.rejected events without a request id or source = %d, want 0", bare)
	}
	var uploads int
	if err := r.stack.Pool.QueryRow(ctx, `SELECT count(*) FROM core_uploads`).Scan(&uploads); err != nil {
		t.Fatal(err)
	}
	if want := 3; uploads != want { // the first upload and the two that used up the burst
		t.Errorf("core_uploads = %d, want %d (rejections store nothing)", uploads, want)
	}
}

type tc struct {
	name   string
	dev    string // topic device
	raw    []byte
	code   string
	before func()
}

// coreCase is a rejection case: a new device's upload of one sample (taken ahead of now)
// that the clinical core refuses with code.
func coreCase(t *testing.T, r *rig, name string, smp envelope.Sample, ahead time.Duration, code string) tc {
	t.Helper()
	id := r.stack.Device(t)
	now := time.Now()
	smp.T = now.Add(ahead).UnixMilli()
	u := envelope.Upload{Device: id.DeviceID, KeyVersion: id.KeyVersion, Seq: 1, SentAt: now.UnixMilli(), Samples: []envelope.Sample{smp}}
	raw, _, err := envelope.Sign(&u, id.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return tc{name: name, dev: id.DeviceID, raw: raw, code: code}
}

var adminActor = audit.Actor{Kind: audit.ActorUser, ID: "admin-test", AuthMethod: "test"}

// awaitReply publishes raw (which may not be an envelope) and waits for the next reply on
// the device's receipts topic.
func awaitReply(t *testing.T, d *sdkmqtt.Device, raw []byte) *mqtt.Reply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := envelope.ParseEnvelope(raw, envelope.Limits{}); err == nil {
		if _, err := envelope.ParseUpload(mustBody(raw), envelope.Limits{}); err == nil {
			r, err := d.Send(ctx, raw)
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			return r
		}
	}
	r, err := d.SendRaw(ctx, raw)
	if err != nil {
		t.Fatalf("SendRaw: %v", err)
	}
	return r
}

func mustBody(raw []byte) []byte {
	env, err := envelope.ParseEnvelope(raw, envelope.Limits{})
	if err != nil {
		return nil
	}
	return env.Body
}

// A device played by the real mosquitto_pub: a test-vector envelope (for a device this
// installation does not know) is refused with unknown_device, and an envelope signed by an
// enrolled device, written to a file and published by mosquitto_pub, is accepted.
// Verifies: REQ-DEV-100
func TestMosquittoPubDevice(t *testing.T) {
	t.Parallel()
	pub, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		t.Fatalf("mosquitto_pub not installed (apt-get install mosquitto-clients; .ci/ensure-mosquitto does it): %v", err)
	}
	r := newRig(t, nil)
	var vectors []struct {
		Name        string `json:"name"`
		EnvelopeHex string `json:"envelope_hex"`
		Upload      struct {
			Device string `json:"device"`
		} `json:"upload"`
	}
	b, err := os.ReadFile(filepath.Join("..", "envelope", "testdata", "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &vectors); err != nil {
		t.Fatal(err)
	}
	v := vectors[0]
	vraw, err := hex.DecodeString(v.EnvelopeHex)
	if err != nil {
		t.Fatal(err)
	}
	id := r.stack.Device(t)
	fresh := signed(t, id, 1, time.Now())
	host, port := brokerHostPort(t)
	for _, c := range []struct {
		device, status, code string
		raw                  []byte
	}{
		{v.Upload.Device, mqtt.StatusRejected, devices.CodeUnknownDevice, vraw},
		{id.DeviceID, mqtt.StatusAccepted, "", fresh},
	} {
		d := r.device(t, c.device)
		file := filepath.Join(t.TempDir(), "envelope.cbor")
		if err := os.WriteFile(file, c.raw, 0o600); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		got := d.Expect(sdkmqtt.HashOf(c.raw))
		cmd := exec.CommandContext(ctx, pub, "-h", host, "-p", port, "-V", "mqttv311", "-q", "1",
			"-t", mqttwire.UpTopic(r.prefix, c.device), "-f", file)
		if out, err := cmd.CombinedOutput(); err != nil {
			cancel()
			t.Fatalf("mosquitto_pub: %v: %s", err, out)
		}
		var rep *mqtt.Reply
		select {
		case rep = <-got:
		case <-ctx.Done():
			cancel()
			t.Fatalf("no reply to the mosquitto_pub upload of %s", c.device)
		}
		cancel()
		if rep.Status != c.status || (c.code != "" && (rep.Error == nil || rep.Error.Code != c.code)) {
			t.Errorf("mosquitto_pub upload for %s: reply %+v, want %s %s", c.device, rep, c.status, c.code)
		}
	}
}

func brokerHostPort(t *testing.T) (string, string) {
	u := brokerURL()
	u = strings.TrimPrefix(strings.TrimPrefix(u, "mqtt://"), "tcp://")
	host, port, ok := strings.Cut(u, ":")
	if !ok {
		port = "1883"
	}
	if host == "" {
		t.Fatalf("bad broker URL %q", brokerURL())
	}
	return host, strings.TrimSuffix(port, "/")
}

// The SDK delivers over MQTT as over HTTP: sdk/mqtt.Device is its transport, receipts verify,
// buffered uploads go out in order, and a refusal is a RejectedError with the same code.
// Verifies: REQ-DEV-100, REQ-DEV-110
func TestSDKOverMQTT(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	id := r.stack.Device(t)
	d := r.device(t, id.DeviceID)
	c, err := sdk.New(sdk.Config{Identity: id, Transport: d, ReceiptKey: r.stack.ReceiptKey, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := range 3 {
		if err := c.Enqueue([]envelope.Sample{{Code: "8867-4", Value: 70 + float64(i), Unit: "/min", T: now.UnixMilli()}}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rcs, err := c.Flush(ctx)
	if err != nil || len(rcs) != 3 || c.Pending() != 0 {
		t.Fatalf("Flush over MQTT = %d receipts, %v, %d pending; want 3, nil, 0", len(rcs), err, c.Pending())
	}
	_, err = d.Upload(ctx, signed(t, id, 1, now))
	var re *sdk.RejectedError
	if !errors.As(err, &re) || re.Code != devices.CodeReplay || re.Temporary() {
		t.Errorf("Upload(replayed seq) over MQTT = %v, want RejectedError replay, not temporary", err)
	}
}

// A failure inside Vigil (here: a devices service without its ingester) is answered with
// internal_error and a retry delay, so the device sends the same upload again later.
// Verifies: REQ-DEV-100, REQ-DEV-102
func TestMQTTInternalError(t *testing.T) {
	t.Parallel()
	r := newRig(t, func(c *devices.Config) { c.Ingester = nil })
	id := r.stack.Device(t)
	d := r.device(t, id.DeviceID)
	rep := send(t, d, signed(t, id, 1, time.Now()))
	if rep.Status != mqtt.StatusRejected || rep.Error == nil || rep.Error.Code != mqtt.CodeInternal || rep.Error.RetryAfterSeconds <= 0 {
		t.Fatalf("reply = %+v (error %+v), want rejected internal_error with retry_after_s", rep, rep.Error)
	}
	if s := r.in.Stats(); s.Failed != 1 {
		t.Errorf("Stats().Failed = %d, want 1", s.Failed)
	}
}
