package audit

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit/leaf"
)

// BenchmarkPrepare measures preparing one event in the process (validation, salt, five
// commitments, numbering), without and with its authentication tag: the in-process cost of
// event authentication on the upload path.
func BenchmarkPrepare(b *testing.B) {
	for _, auth := range []bool{false, true} {
		b.Run(fmt.Sprint("auth=", auth), func(b *testing.B) {
			sess, err := newSession()
			if err != nil {
				b.Fatal(err)
			}
			if auth {
				sess.key = bytes.Repeat([]byte{1}, 32)
				sess.macer = leaf.NewEventMACer(sess.key)
			}
			o := &Outbox{cfg: Config{Now: time.Now}, sess: sess}
			ev := Event{Actor: Actor{Kind: ActorDevice, ID: "dev-1", AuthMethod: "device-signature"}, Action: "upload.accepted",
				Object: Object{Type: "upload", ID: "abc"}, Outcome: OutcomeSuccess, RequestID: "r", SourceAddr: "10.0.0.1",
				Payload: map[string]any{"samples": 10, "stored": 10}}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, err := o.prepare(ev, time.Now); err != nil {
					b.Fatal(err)
				}
				if i%1000 == 999 { // as the attester would: keep the state bounded
					sess.mu.Lock()
					clear(sess.state)
					clear(sess.unauth)
					sess.mu.Unlock()
				}
			}
		})
	}
}
