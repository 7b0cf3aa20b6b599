package audit

import "strconv"

// MaxPayloadBytes is the largest payload (its JSON) an event keeps. A larger one is replaced,
// before its commitment is computed, by {"truncated":true,"bytes":<its size>}: the event is
// still recorded (refusing it would fail the action it records, or let a client keep its
// request out of the trail), and no client can make one event cost the trail more than this.
// Payloads are details (ids, codes, counts, short reasons); none of the project's events
// comes near the cap.
const MaxPayloadBytes = 16 << 10

// capPayload returns b, or the truncation marker when b is longer than MaxPayloadBytes.
func capPayload(b []byte) []byte {
	if len(b) <= MaxPayloadBytes {
		return b
	}
	return []byte(`{"truncated":true,"bytes":` + strconv.Itoa(len(b)) + `}`)
}
