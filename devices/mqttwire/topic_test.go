package mqttwire

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// Verifies: REQ-DEV-101
func TestParseUpTopic(t *testing.T) {
	const dev = "0190f1d2-7a3b-7c4d-8e5f-0a1b2c3d4e5f"
	tests := []struct {
		prefix, topic string
		want          string
		ok            bool
	}{
		{DefaultPrefix, "vigil/devices/" + dev + "/up", dev, true},
		{"t/x", "t/x/" + dev + "/up", dev, true},
		{DefaultPrefix, "vigil/devices/" + dev + "/receipts", "", false},
		{DefaultPrefix, "vigil/devices//up", "", false},
		{DefaultPrefix, "vigil/devices/a/b/up", "", false},
		{DefaultPrefix, "vigil/devices/+/up", "", false},
		{DefaultPrefix, "vigil/devices/#/up", "", false},
		{DefaultPrefix, "vigil/devices/a b/up", "", false},
		{DefaultPrefix, "vigil/devices/\x00/up", "", false},
		{DefaultPrefix, "vigil/devices/" + strings.Repeat("a", 129) + "/up", "", false},
		{DefaultPrefix, "vigil/devices/" + strings.Repeat("a", 128) + "/up", strings.Repeat("a", 128), true},
		{DefaultPrefix, "other/" + dev + "/up", "", false},
		{DefaultPrefix, "", "", false},
		{DefaultPrefix, "vigil/devices/up", "", false},
	}
	for _, tt := range tests {
		got, err := ParseUpTopic(tt.prefix, tt.topic)
		if tt.ok && (err != nil || got != tt.want) {
			t.Errorf("ParseUpTopic(%q, %q) = %q, %v, want %q", tt.prefix, tt.topic, got, err, tt.want)
		}
		if !tt.ok && !errors.Is(err, ErrBadTopic) {
			t.Errorf("ParseUpTopic(%q, %q) = %q, %v, want ErrBadTopic", tt.prefix, tt.topic, got, err)
		}
	}
	if got, want := UpFilter("p"), "p/+/up"; got != want {
		t.Errorf("UpFilter(p) = %q, want %q", got, want)
	}
	if got, want := ReceiptTopic("p", "d"), "p/d/receipts"; got != want {
		t.Errorf("ReceiptTopic(p, d) = %q, want %q", got, want)
	}
}

// Any topic round-trips through UpTopic/ParseUpTopic or is refused; nothing panics, and a
// parsed id never holds a separator or wildcard.
// Verifies: REQ-DEV-101
func FuzzParseUpTopic(f *testing.F) {
	for _, s := range []string{"vigil/devices/abc/up", "vigil/devices//up", "vigil/devices/+/up", "vigil/devices/a/b/up", "x", "vigil/devices/\xff/up"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		id, err := ParseUpTopic(DefaultPrefix, topic)
		if err != nil {
			if !errors.Is(err, ErrBadTopic) {
				t.Fatalf("ParseUpTopic(%q) error %v does not wrap ErrBadTopic", topic, err)
			}
			return
		}
		if strings.ContainsAny(id, "/+#") || id == "" || len(id) > maxDeviceIDLen {
			t.Fatalf("ParseUpTopic(%q) = %q: not a single clean segment", topic, id)
		}
		if UpTopic(DefaultPrefix, id) != topic {
			t.Fatalf("UpTopic(ParseUpTopic(%q)) = %q", topic, UpTopic(DefaultPrefix, id))
		}
	})
}

// Verifies: REQ-DEV-102
func TestParseReply(t *testing.T) {
	h := strings.Repeat("ab", 32)
	good := []Reply{
		{Type: ReplyType, Status: StatusAccepted, Upload: h, Seq: 3, Receipt: []byte{1, 2}},
		{Type: ReplyType, Status: StatusRejected, Upload: h, Error: &ReplyError{Code: "replay", Message: "m"}},
		{Type: ReplyType, Status: StatusRejected, Error: &ReplyError{Code: "rate_limited", RetryAfterSeconds: 2}},
	}
	for _, r := range good {
		b, _ := json.Marshal(r)
		got, err := ParseReply(b)
		if err != nil {
			t.Errorf("ParseReply(%s) = %v, want ok", b, err)
			continue
		}
		if got.Status != r.Status || got.Seq != r.Seq {
			t.Errorf("ParseReply(%s) = %+v, want %+v", b, got, r)
		}
	}
	bad := []string{
		`{}`, `[]`, `null`, `{"type":"x","status":"accepted","receipt":"AQ=="}`,
		`{"type":"vigil.mqtt.reply.v1","status":"accepted"}`,
		`{"type":"vigil.mqtt.reply.v1","status":"rejected"}`,
		`{"type":"vigil.mqtt.reply.v1","status":"rejected","error":{"code":""}}`,
		`{"type":"vigil.mqtt.reply.v1","status":"rejected","error":{"code":"x","retry_after_s":-1}}`,
		`{"type":"vigil.mqtt.reply.v1","status":"maybe","receipt":"AQ=="}`,
		`{"type":"vigil.mqtt.reply.v1","status":"accepted","receipt":"AQ==","upload":"zz"}`,
		`{"type":"vigil.mqtt.reply.v1","status":"accepted","receipt":"AQ==","error":{"code":"x"}}`,
		`{"type":"vigil.mqtt.reply.v1","status":"accepted","receipt":"AQ==","upload":"` + h + `","x":` + strings.Repeat("1", maxReplyBytes) + `}`,
	}
	for _, s := range bad {
		if _, err := ParseReply([]byte(s)); !errors.Is(err, ErrBadReply) {
			t.Errorf("ParseReply(%.80s) = %v, want ErrBadReply", s, err)
		}
	}
}

// Verifies: REQ-DEV-102
func FuzzParseReply(f *testing.F) {
	f.Add([]byte(`{"type":"vigil.mqtt.reply.v1","status":"accepted","receipt":"AQ==","upload":"` + strings.Repeat("00", 32) + `"}`))
	f.Add([]byte(`{"type":"vigil.mqtt.reply.v1","status":"rejected","error":{"code":"replay"}}`))
	f.Add([]byte(`{"type":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseReply(b)
		if err != nil {
			if !errors.Is(err, ErrBadReply) {
				t.Fatalf("ParseReply error %v does not wrap ErrBadReply", err)
			}
			return
		}
		if r.Status == StatusAccepted && len(r.Receipt) == 0 || r.Status == StatusRejected && (r.Error == nil || r.Error.Code == "") {
			t.Fatalf("ParseReply accepted an inconsistent reply %+v", r)
		}
		if r.Upload != "" {
			if _, ok := r.UploadHash(); !ok {
				t.Fatalf("ParseReply accepted upload %q that UploadHash refuses", r.Upload)
			}
		}
	})
}
