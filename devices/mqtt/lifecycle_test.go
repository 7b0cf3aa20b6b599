package mqtt

import (
	"context"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/devices/envelope"
	sdkmqtt "github.com/vigilhealth/vigil/devices/sdk/mqtt"
	"github.com/vigilhealth/vigil/devices/sim/simtest"
)

func testBroker() string {
	if u := os.Getenv("VIGIL_TEST_MQTT_URL"); u != "" {
		return u
	}
	return "mqtt://127.0.0.1:1883"
}

// After the connection to the broker drops, the Ingestor reconnects, subscribes again and
// goes on accepting uploads; Close stops every goroutine it started (and those of the
// device client once that is closed). Not parallel: it counts goroutines.
// Verifies: REQ-DEV-103
func TestReconnectAndCloseLeavesNoGoroutine(t *testing.T) {
	st := simtest.New(t, nil)
	id := st.Device(t)
	prefix := "vigiltest/" + strings.ReplaceAll(uuid.NewString()[:13], "-", "") + "/devices"
	time.Sleep(100 * time.Millisecond) // let the stack's own background goroutines settle
	before := runtime.NumGoroutine()

	in, err := Start(Config{Broker: testBroker(), Prefix: prefix, Accepter: st.Devices, Recorder: st.Rec, Workers: 4,
		ReconnectBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := in.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	d, err := sdkmqtt.DialDevice(ctx, sdkmqtt.DeviceConfig{Broker: testBroker(), DeviceID: id.DeviceID, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	send := func(seq uint64) *Reply {
		u := envelope.Upload{Device: id.DeviceID, KeyVersion: id.KeyVersion, Seq: seq, SentAt: time.Now().UnixMilli(),
			Samples: []envelope.Sample{{Code: "8867-4", Value: 70, Unit: "/min", T: time.Now().UnixMilli()}}}
		raw, _, err := envelope.Sign(&u, id.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		r, err := d.Send(ctx, raw)
		if err != nil {
			t.Fatalf("Send(seq %d) = %v", seq, err)
		}
		return r
	}
	if r := send(1); r.Status != StatusAccepted {
		t.Fatalf("before the drop: %+v, want accepted", r)
	}
	in.cm.TerminateConnectionForTest()
	deadline := time.Now().Add(20 * time.Second)
	// Reconnected and subscribed again (an upload published between the two is not
	// delivered on a fresh session, and the device would wait for its reply in vain).
	for in.Stats().Subscriptions < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if st := in.Stats(); st.Connects < 2 || st.Subscriptions < 2 {
		t.Fatalf("Stats() = %d connects, %d subscriptions after the drop, want ≥ 2 each (reconnected, subscribed again)", st.Connects, st.Subscriptions)
	}
	// The subscription is restored (the session persisted or we subscribed again): the next
	// upload is answered.
	if r := send(2); r.Status != StatusAccepted {
		t.Fatalf("after reconnecting: %+v, want accepted", r)
	}
	if err := d.Close(context.Background()); err != nil {
		t.Errorf("Device.Close = %v", err)
	}
	if err := in.Close(context.Background()); err != nil {
		t.Errorf("Ingestor.Close = %v", err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if after := runtime.NumGoroutine(); after > before {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		t.Errorf("goroutines after Close = %d, before Start = %d\n%s", after, before, buf[:n])
	}
}
