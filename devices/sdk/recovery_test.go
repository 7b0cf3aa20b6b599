package sdk_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/devices/sdk"
	"github.com/vigilhealth/vigil/devices/sim"
	"github.com/vigilhealth/vigil/devices/sim/simtest"
)

// answerLoser delivers to Vigil but loses the next `lose` answers on the way back (the request
// was processed; the device never hears of it).
type answerLoser struct {
	in   sim.InProcess
	lose atomic.Int32
}

var errLost = errors.New("connection reset: answer lost")

func (l *answerLoser) Upload(ctx context.Context, raw []byte) ([]byte, error) {
	b, err := l.in.Upload(ctx, raw)
	if l.lose.Add(-1) >= 0 {
		return nil, errLost
	}
	return b, err
}

func (l *answerLoser) Rotate(ctx context.Context, raw []byte) (string, uint64, error) {
	id, kv, err := l.in.Rotate(ctx, raw)
	if l.lose.Add(-1) >= 0 {
		return "", 0, errLost
	}
	return id, kv, err
}

// A rotation whose answer is lost, followed by a restart of the device process: the new
// key was kept (rotation.cbor) and the next RotateKey sends the same request, gets the same
// key version and takes the key up; an upload refused meanwhile with unknown_key stays
// buffered (not quarantined) and is delivered under the new key. Vigil holds two keys, not
// three, and the device never lost the one Vigil holds.
// Verifies: REQ-DEV-134
func TestRotationSurvivesLostAnswerAndRestart(t *testing.T) {
	t.Parallel()
	st := simtest.New(t, nil)
	id := st.Device(t)
	dir := t.TempDir()
	ctx := context.Background()
	tr := &answerLoser{in: sim.InProcess{Devices: st.Devices}}
	c1, err := sdk.New(sdk.Config{Identity: id, Transport: tr, ReceiptKey: st.ReceiptKey, Dir: dir, Sleep: instant})
	if err != nil {
		t.Fatal(err)
	}
	tr.lose.Store(1)
	saves := 0
	if _, err := c1.RotateKey(ctx, tr, nil, func(sdk.Identity) error { saves++; return nil }); !errors.Is(err, errLost) {
		t.Fatalf("RotateKey(answer lost) = %v, want the transport error", err)
	}
	if saves != 0 {
		t.Fatalf("save called %d times without an answer, want 0", saves)
	}
	if fi, err := os.Stat(filepath.Join(dir, "rotation.cbor")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("rotation.cbor = %v, %v; want a pending rotation, mode 0600", fi, err)
	}
	_ = c1.Close()

	// The process restarts with the identity it had saved: the old key.
	c2, err := sdk.New(sdk.Config{Identity: id, Transport: tr, ReceiptKey: st.ReceiptKey, Dir: dir, Sleep: instant, MaxAttempts: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Send(ctx, vitals(time.Now(), 70)); !errors.Is(err, sdk.ErrRotationPending) {
		t.Fatalf("Send(old key, rotation applied by Vigil) = %v, want ErrRotationPending", err)
	}
	if c2.Pending() != 1 {
		t.Fatalf("Pending() = %d, want 1 (the upload kept, not quarantined)", c2.Pending())
	}
	var saved sdk.Identity
	next, err := c2.RotateKey(ctx, tr, nil, func(n sdk.Identity) error { saved = n; return nil })
	if err != nil {
		t.Fatalf("RotateKey(resumed) = %v", err)
	}
	if next.KeyVersion != id.KeyVersion+1 || !saved.PrivateKey.Equal(next.PrivateKey) {
		t.Fatalf("RotateKey(resumed) = version %d, want %d, saved", next.KeyVersion, id.KeyVersion+1)
	}
	var pub []byte
	var keys int
	if err := st.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM devices_keys WHERE device_id = $1),
		(SELECT public_key FROM devices_keys WHERE device_id = $1 AND retired_at IS NULL)`, id.DeviceID).Scan(&keys, &pub); err != nil {
		t.Fatal(err)
	}
	if keys != 2 || !next.PublicKey().Equal(ed25519PublicKey(pub)) {
		t.Errorf("Vigil holds %d keys, current %x; want 2, the device's new key %x", keys, pub, []byte(next.PublicKey()))
	}
	if _, err := os.Stat(filepath.Join(dir, "rotation.cbor")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("rotation.cbor after completion: %v, want removed", err)
	}
	rcs, err := c2.Flush(ctx)
	if err != nil || len(rcs) != 1 || c2.Pending() != 0 {
		t.Fatalf("Flush after rotation = %d receipts, %v, %d pending; want 1, nil, 0", len(rcs), err, c2.Pending())
	}
	if n := uploadsOf(t, st, id.DeviceID); n != 1 {
		t.Errorf("stored uploads = %d, want 1", n)
	}
}

// Re-send first: an upload stored by Vigil whose receipt was lost, followed by a key
// rotation. The SDK sends the same bytes again first; Vigil recognizes them and answers
// with the original receipt — the upload is neither stored twice (as it would be if signed
// again under the new key) nor left without its receipt.
// Verifies: REQ-DEV-130, REQ-DEV-134
func TestResendFirstAfterRotationNoDuplicate(t *testing.T) {
	t.Parallel()
	st := simtest.New(t, nil)
	id := st.Device(t)
	ctx := context.Background()
	tr := &answerLoser{in: sim.InProcess{Devices: st.Devices}}
	c, err := sdk.New(sdk.Config{Identity: id, Transport: tr, ReceiptKey: st.ReceiptKey, Dir: t.TempDir(), Sleep: instant, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	tr.lose.Store(1)
	if _, err := c.Send(ctx, vitals(time.Now(), 70)); !errors.Is(err, errLost) {
		t.Fatalf("Send(answer lost) = %v, want the transport error", err)
	}
	if n := uploadsOf(t, st, id.DeviceID); n != 1 || c.Pending() != 1 {
		t.Fatalf("stored %d, pending %d; want 1 stored (the answer was lost) and 1 pending", n, c.Pending())
	}
	if _, err := c.RotateKey(ctx, tr, nil, nil); err != nil {
		t.Fatal(err)
	}
	rcs, err := c.Flush(ctx)
	if err != nil || len(rcs) != 1 || c.Pending() != 0 {
		t.Fatalf("Flush = %d receipts, %v, %d pending; want the original receipt", len(rcs), err, c.Pending())
	}
	if rcs[0].Body.Seq != rcs[0].Seq {
		t.Errorf("receipt seq %d, want %d", rcs[0].Body.Seq, rcs[0].Seq)
	}
	if n := uploadsOf(t, st, id.DeviceID); n != 1 {
		t.Errorf("stored uploads = %d, want 1 (no duplicate)", n)
	}
}

func ed25519PublicKey(b []byte) ed25519.PublicKey { return ed25519.PublicKey(b) }

func (l *answerLoser) Enroll(ctx context.Context, raw []byte) (string, uint64, error) {
	id, kv, err := l.in.Enroll(ctx, raw)
	if l.lose.Add(-1) >= 0 {
		return "", 0, errLost
	}
	return id, kv, err
}

// An enrollment whose answers are lost twice: the SDK sends the same signed request again,
// Vigil answers the re-send with the original device and key version, and the device keeps
// the key Vigil registered (its uploads are accepted). Vigil holds one key for the device and
// one device.enrolled event. Without the re-send the token would be spent and the device
// left without an identity.
// Verifies: REQ-DEV-136
func TestEnrollSurvivesLostAnswer(t *testing.T) {
	t.Parallel()
	st := simtest.New(t, nil)
	ctx := context.Background()
	tok, err := st.Prov.Provision(ctx, sim.NewPatient(1, 900, sim.Stable))
	if err != nil {
		t.Fatal(err)
	}
	tr := &answerLoser{in: sim.InProcess{Devices: st.Devices}}
	tr.lose.Store(2)
	var slept int
	id, err := sdk.Enroll(ctx, tr, tok, sdk.EnrollOptions{Sleep: func(context.Context, time.Duration) error { slept++; return nil }})
	if err != nil {
		t.Fatalf("Enroll with two answers lost = %v", err)
	}
	if slept != 2 || id.KeyVersion != 1 {
		t.Errorf("Enroll: %d waits, key version %d; want 2 waits and version 1", slept, id.KeyVersion)
	}
	keys, err := st.Devices.Keys(ctx, uuid.MustParse(id.DeviceID))
	if err != nil || len(keys) != 1 || string(keys[0].PublicKey) != string(id.PublicKey()) {
		t.Fatalf("registered keys = %v, %v; want exactly the device's key", keys, err)
	}
	c, err := sdk.New(sdk.Config{Identity: id, Transport: sim.InProcess{Devices: st.Devices}, ReceiptKey: st.ReceiptKey, Dir: t.TempDir(), Sleep: instant})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(ctx, vitals(time.Now(), 72)); err != nil {
		t.Errorf("upload with the enrolled key = %v", err)
	}
	// A refusal is not retried: a used token with a fresh key is refused at once.
	tr.lose.Store(0)
	slept = 0
	if _, err := sdk.Enroll(ctx, tr, tok, sdk.EnrollOptions{Sleep: func(context.Context, time.Duration) error { slept++; return nil }}); err == nil || slept != 0 {
		t.Errorf("Enroll(used token, new key) = %v after %d waits; want refused at once", err, slept)
	}
}
