package sdk_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/envelope"
	"github.com/vigilhealth/vigil/devices/sdk"
	"github.com/vigilhealth/vigil/devices/sim"
	"github.com/vigilhealth/vigil/devices/sim/simtest"
)

func vitals(t time.Time, hr float64) []envelope.Sample {
	return []envelope.Sample{
		{Code: "8867-4", Value: hr, Unit: "/min", T: t.UnixMilli()},
		{Code: "59408-5", Value: 97, Unit: "%", T: t.UnixMilli()},
	}
}

// deadTransport is an HTTP transport to an address where nothing listens: the network is down.
func deadTransport(t *testing.T) *sdk.HTTPTransport {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return &sdk.HTTPTransport{BaseURL: "http://" + addr}
}

func instant(context.Context, time.Duration) error { return nil }

func uploadsOf(t *testing.T, st *simtest.Stack, device string) int {
	var n int
	if err := st.Pool.QueryRow(context.Background(), `SELECT count(*) FROM core_uploads WHERE device_id = $1`, device).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Uploads made while the network is down are buffered on disk; after a restart of the device
// process (a new Client on the same directory) they are all delivered, in order, with
// verified receipts; nothing is lost and nothing is stored twice.
// Verifies: REQ-DEV-111, REQ-DEV-110
func TestOfflineBufferSurvivesRestart(t *testing.T) {
	t.Parallel()
	st := simtest.New(t, nil)
	id := st.Device(t)
	dir := t.TempDir()
	ctx := context.Background()
	c1, err := sdk.New(sdk.Config{Identity: id, Transport: deadTransport(t), ReceiptKey: st.ReceiptKey, Dir: dir,
		MaxAttempts: 2, Sleep: instant})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := range 5 {
		if _, err := c1.Send(ctx, vitals(now.Add(time.Duration(i)*time.Second), 70+float64(i))); err == nil {
			t.Fatalf("Send with the network down = nil error, want a delivery error")
		}
	}
	if got := c1.Pending(); got != 5 {
		t.Fatalf("Pending() = %d, want 5", got)
	}
	_ = c1.Close()

	c2, err := sdk.New(sdk.Config{Identity: id, Transport: sim.InProcess{Devices: st.Devices}, ReceiptKey: st.ReceiptKey, Dir: dir, Sleep: instant})
	if err != nil {
		t.Fatal(err)
	}
	if got := c2.Pending(); got != 5 {
		t.Fatalf("after restart Pending() = %d, want 5", got)
	}
	rcs, err := c2.Flush(ctx)
	if err != nil {
		t.Fatalf("Flush = %v", err)
	}
	if len(rcs) != 5 || c2.Pending() != 0 {
		t.Fatalf("Flush delivered %d, %d pending, want 5 and 0", len(rcs), c2.Pending())
	}
	for i := 1; i < len(rcs); i++ {
		if rcs[i].Seq <= rcs[i-1].Seq {
			t.Errorf("receipt %d seq %d not above %d: out of order", i, rcs[i].Seq, rcs[i-1].Seq)
		}
	}
	if n := uploadsOf(t, st, id.DeviceID); n != 5 {
		t.Errorf("stored uploads = %d, want 5", n)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "queue"))
	if len(ents) != 0 {
		t.Errorf("queue directory holds %d files after delivery, want 0", len(ents))
	}
}

// lossy delivers the upload but loses the first answer (a connection cut after the
// request reached Vigil): the SDK must re-send the same bytes and get the original receipt.
type lossy struct {
	sdk.Transport
	lost atomic.Int32
	seen [][]byte
}

func (l *lossy) Upload(ctx context.Context, raw []byte) ([]byte, error) {
	l.seen = append(l.seen, raw)
	b, err := l.Transport.Upload(ctx, raw)
	if err == nil && l.lost.Add(1) == 1 {
		return nil, errors.New("connection reset by peer")
	}
	return b, err
}

// Verifies: REQ-DEV-110
func TestRetryIsIdempotent(t *testing.T) {
	t.Parallel()
	st := simtest.New(t, nil)
	id := st.Device(t)
	tr := &lossy{Transport: sim.InProcess{Devices: st.Devices}}
	c, err := sdk.New(sdk.Config{Identity: id, Transport: tr, ReceiptKey: st.ReceiptKey, Sleep: instant})
	if err != nil {
		t.Fatal(err)
	}
	rcs, err := c.Send(context.Background(), vitals(time.Now(), 80))
	if err != nil || len(rcs) != 1 {
		t.Fatalf("Send = %d receipts, %v, want 1, nil", len(rcs), err)
	}
	if len(tr.seen) != 2 || string(tr.seen[0]) != string(tr.seen[1]) {
		t.Errorf("attempts = %d, same bytes = %v, want 2 identical attempts", len(tr.seen), len(tr.seen) == 2 && string(tr.seen[0]) == string(tr.seen[1]))
	}
	if n := uploadsOf(t, st, id.DeviceID); n != 1 {
		t.Errorf("stored uploads = %d, want 1", n)
	}
}

// A receipt that does not verify under the configured key is refused and the upload stays
// buffered; with the right key it is accepted.
// Verifies: REQ-DEV-112
func TestReceiptVerification(t *testing.T) {
	t.Parallel()
	st := simtest.New(t, nil)
	id := st.Device(t)
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	ctx := context.Background()
	dir := t.TempDir()
	c, err := sdk.New(sdk.Config{Identity: id, Transport: sim.InProcess{Devices: st.Devices}, ReceiptKey: other, Dir: dir, Sleep: instant})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(ctx, vitals(time.Now(), 75)); !errors.Is(err, sdk.ErrBadReceipt) {
		t.Fatalf("Send with the wrong receipt key = %v, want ErrBadReceipt", err)
	}
	if c.Pending() != 1 {
		t.Fatalf("Pending() = %d after a bad receipt, want 1", c.Pending())
	}
	good, _ := sdk.New(sdk.Config{Identity: id, Transport: sim.InProcess{Devices: st.Devices}, ReceiptKey: st.ReceiptKey, Dir: dir, Sleep: instant})
	if rcs, err := good.Send(ctx, vitals(time.Now(), 76)); err != nil || len(rcs) != 2 {
		t.Fatalf("Send with the right key = %d receipts, %v, want 2 (the buffered one and the new one)", len(rcs), err)
	}
	// A receipt for another upload is refused even when its signature is good.
	rcs, _ := good.Send(ctx, vitals(time.Now(), 77))
	if len(rcs) != 1 {
		t.Fatalf("want one receipt")
	}
	if _, err := sdk.VerifyReceipt(rcs[0].Wire, st.ReceiptKey, false, id.DeviceID, rcs[0].Seq+1, rcs[0].Hash); !errors.Is(err, sdk.ErrBadReceipt) {
		t.Errorf("VerifyReceipt(wrong seq) = %v, want ErrBadReceipt", err)
	}
}

// An upload signed long ago (the device went offline right after signing) is refused for
// clock skew; the SDK signs it again with a fresh time and it is accepted. An upload refused
// for good is set aside in the rejected directory and delivery goes on.
// Verifies: REQ-DEV-110
func TestResignOnSkewAndQuarantine(t *testing.T) {
	t.Parallel()
	st := simtest.New(t, nil)
	id := st.Device(t)
	dir := t.TempDir()
	ctx := context.Background()
	past := func() time.Time { return time.Now().Add(-2 * time.Hour) }
	c1, _ := sdk.New(sdk.Config{Identity: id, Transport: deadTransport(t), ReceiptKey: st.ReceiptKey, Dir: dir, MaxAttempts: 1, Now: past})
	if _, err := c1.Send(ctx, vitals(time.Now(), 70)); err == nil {
		t.Fatal("Send with the network down = nil error")
	}
	c2, _ := sdk.New(sdk.Config{Identity: id, Transport: sim.InProcess{Devices: st.Devices}, ReceiptKey: st.ReceiptKey, Dir: dir, Sleep: instant})
	rcs, err := c2.Flush(ctx)
	if err != nil || len(rcs) != 1 {
		t.Fatalf("Flush after skew = %d receipts, %v, want 1, nil", len(rcs), err)
	}
	if n := uploadsOf(t, st, id.DeviceID); n != 1 {
		t.Errorf("stored uploads = %d, want 1", n)
	}
	// Suspend the device: the next upload is refused for good.
	if _, err := st.Devices.SetStatus(ctx, devices.Origin{Actor: audit.Actor{Kind: audit.ActorUser, ID: "admin", AuthMethod: "test"}}, uuid.MustParse(id.DeviceID), "suspended", "test"); err != nil {
		t.Fatal(err)
	}
	_, err = c2.Send(ctx, vitals(time.Now(), 71))
	var re *sdk.RejectedError
	if !errors.As(err, &re) || re.Code != devices.CodeSuspended {
		t.Fatalf("Send to a suspended device = %v, want RejectedError %s", err, devices.CodeSuspended)
	}
	if c2.Pending() != 0 {
		t.Errorf("Pending() = %d, want 0 (set aside)", c2.Pending())
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "rejected"))
	if len(ents) != 2 { // the upload and its reason
		t.Errorf("rejected directory holds %d files, want 2", len(ents))
	}
}

// Enrollment generates a key on the device and proves possession; the identity saved to
// disk is readable by its owner only and loads back identically; a used token is refused.
// Verifies: REQ-DEV-113
func TestEnrollAndIdentityFile(t *testing.T) {
	t.Parallel()
	st := simtest.New(t, nil)
	ctx := context.Background()
	tok, err := st.Prov.Provision(ctx, sim.NewPatient(1, 900, sim.Stable))
	if err != nil {
		t.Fatal(err)
	}
	id, err := sdk.Enroll(ctx, sim.InProcess{Devices: st.Devices}, tok, sdk.EnrollOptions{})
	if err != nil {
		t.Fatalf("Enroll = %v", err)
	}
	if id.KeyVersion != 1 {
		t.Errorf("KeyVersion = %d, want 1", id.KeyVersion)
	}
	keys, err := st.Devices.Keys(ctx, uuid.MustParse(id.DeviceID))
	if err != nil || len(keys) != 1 || string(keys[0].PublicKey) != string(id.PublicKey()) {
		t.Errorf("registered keys = %v, %v, want the device's public key", keys, err)
	}
	if _, err := sdk.Enroll(ctx, sim.InProcess{Devices: st.Devices}, tok, sdk.EnrollOptions{}); err == nil {
		t.Errorf("second Enroll with the same token = nil error, want refused")
	}
	path := filepath.Join(t.TempDir(), "dev", "identity.json")
	if err := sdk.SaveIdentity(path, id); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("identity file mode = %v, %v, want 0600", fi.Mode().Perm(), err)
	}
	back, err := sdk.LoadIdentity(path)
	if err != nil || back.DeviceID != id.DeviceID || back.KeyVersion != id.KeyVersion || !back.PrivateKey.Equal(id.PrivateKey) {
		t.Errorf("LoadIdentity = %+v, %v, want the saved identity", back.DeviceID, err)
	}
}

// gate holds every upload until released: a network that is slow to answer.
type gate struct {
	sdk.Transport
	entered chan struct{}
	release chan struct{}
}

func (g *gate) Upload(ctx context.Context, raw []byte) ([]byte, error) {
	select {
	case g.entered <- struct{}{}:
	default:
	}
	<-g.release
	return g.Transport.Upload(ctx, raw)
}

// A slow delivery does not hold up measuring: Enqueue returns while Flush waits on the
// network, and everything enqueued meanwhile is delivered in order afterwards.
// Verifies: REQ-DEV-110, REQ-DEV-111
func TestEnqueueWhileFlushing(t *testing.T) {
	t.Parallel()
	st := simtest.New(t, nil)
	id := st.Device(t)
	g := &gate{Transport: sim.InProcess{Devices: st.Devices}, entered: make(chan struct{}, 1), release: make(chan struct{})}
	c, err := sdk.New(sdk.Config{Identity: id, Transport: g, ReceiptKey: st.ReceiptKey, Dir: t.TempDir(), Sleep: instant})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Enqueue(vitals(time.Now(), 70)); err != nil {
		t.Fatal(err)
	}
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		rcs, err := c.Flush(ctx)
		done <- result{len(rcs), err}
	}()
	<-g.entered // Flush is now waiting on the network
	enq := make(chan error, 1)
	go func() {
		var err error
		for i := range 3 {
			if err = c.Enqueue(vitals(time.Now(), 71+float64(i))); err != nil {
				break
			}
		}
		enq <- err
	}()
	select {
	case err := <-enq:
		if err != nil {
			t.Fatalf("Enqueue during Flush = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Enqueue blocked while Flush waited on the network")
	}
	close(g.release)
	r := <-done
	if r.err != nil || r.n != 4 || c.Pending() != 0 {
		t.Fatalf("Flush = %d receipts, %v, %d pending; want 4, nil, 0", r.n, r.err, c.Pending())
	}
	if n := uploadsOf(t, st, id.DeviceID); n != 4 {
		t.Errorf("stored uploads = %d, want 4", n)
	}
}

// Key rotation: the new key is registered (signed by old and new), saved before use, and
// uploads go on under it; an upload signed with the old key before the rotation is signed
// again with the new one and delivered; the old key is refused at once.
// Verifies: REQ-DEV-110, REQ-DEV-113
func TestRotateKey(t *testing.T) {
	t.Parallel()
	st := simtest.New(t, nil)
	id := st.Device(t)
	in := sim.InProcess{Devices: st.Devices}
	dir := t.TempDir()
	ctx := context.Background()
	// An upload signed with the old key whose delivery failed (the network was down).
	c0, _ := sdk.New(sdk.Config{Identity: id, Transport: deadTransport(t), ReceiptKey: st.ReceiptKey, Dir: dir, MaxAttempts: 1})
	if _, err := c0.Send(ctx, vitals(time.Now(), 70)); err == nil {
		t.Fatal("Send with the network down = nil error")
	}
	c, err := sdk.New(sdk.Config{Identity: id, Transport: in, ReceiptKey: st.ReceiptKey, Dir: dir, Sleep: instant})
	if err != nil {
		t.Fatal(err)
	}
	var saved sdk.Identity
	next, err := c.RotateKey(ctx, in, nil, func(n sdk.Identity) error { saved = n; return nil })
	if err != nil {
		t.Fatalf("RotateKey = %v", err)
	}
	if next.KeyVersion != id.KeyVersion+1 || saved.KeyVersion != next.KeyVersion || next.PrivateKey.Equal(id.PrivateKey) {
		t.Fatalf("RotateKey = version %d (saved %d), want %d and a new key", next.KeyVersion, saved.KeyVersion, id.KeyVersion+1)
	}
	rcs, err := c.Send(ctx, vitals(time.Now(), 71))
	if err != nil || len(rcs) != 2 {
		t.Fatalf("Send after rotation = %d receipts, %v, want 2 (the old-key upload re-signed, and the new one)", len(rcs), err)
	}
	// The old key is refused at once.
	u := envelope.Upload{Device: id.DeviceID, KeyVersion: id.KeyVersion, Seq: uint64(time.Now().UnixMicro()) + 1e9, SentAt: time.Now().UnixMilli(), Samples: vitals(time.Now(), 72)}
	raw, _, _ := envelope.Sign(&u, id.PrivateKey)
	var re *sdk.RejectedError
	if _, err := in.Upload(ctx, raw); !errors.As(err, &re) || re.Code != devices.CodeUnknownKey {
		t.Errorf("Upload signed with the old key = %v, want %s", err, devices.CodeUnknownKey)
	}
}
