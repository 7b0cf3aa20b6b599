package audit_test

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// No event can make the trail hold more than MaxPayloadBytes of payload: a larger payload is
// replaced by a marker with its size, the event is still recorded (with the commitment of
// what is stored), and payloads within the cap are kept byte for byte.
// Verifies: REQ-AUD-011
func TestPayloadCapped(t *testing.T) {
	ctx := context.Background()
	pool := testdb.New(t)
	rec := audittest.Recorder(t, pool, nil)
	huge := strings.Repeat("MRN-0012345 SMITH, JOHN ", 500<<10/24) // ≈ 500 kB, as a flood stored
	cases := []struct {
		name    string
		payload any
		want    string
	}{
		{"within the cap", map[string]any{"reason": "ok"}, `{"reason":"ok"}`},
		{"over the cap", map[string]any{"path": huge}, `{"truncated":true,"bytes":` + strconv.Itoa(len(huge)+len(`{"path":""}`)) + `}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ev := testEvent()
			ev.Payload = tc.payload
			tx, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			id, err := rec.Record(ctx, tx, ev)
			if err != nil {
				t.Fatalf("Record(payload %s) error = %v, want it recorded", tc.name, err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			var payload string
			var salt, commitment []byte
			if err := pool.QueryRow(ctx, `SELECT payload::text, salt, payload_commitment FROM audit_events WHERE id = $1`, id).
				Scan(&payload, &salt, &commitment); err != nil {
				t.Fatal(err)
			}
			if payload != tc.want {
				t.Errorf("stored payload = %.80q (%d bytes), want %.80q", payload, len(payload), tc.want)
			}
			if c := audit.PayloadCommitment(salt, []byte(payload)); !bytes.Equal(c[:], commitment) {
				t.Error("payload_commitment does not commit to the stored payload")
			}
		})
	}
}
