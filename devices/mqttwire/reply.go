package mqttwire

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
)

// ReplyType names the reply format and its version.
const ReplyType = "vigil.mqtt.reply.v1"

// Reply statuses.
const (
	StatusAccepted = "accepted" // the upload was verified and stored; Receipt holds the signed receipt
	StatusRejected = "rejected" // the upload was refused; nothing was stored; Error says why
)

// Reply is what Vigil publishes on <prefix>/<device id>/receipts for each upload it takes
// off <prefix>/<device id>/up: a JSON object (content type application/json), e.g.
//
//	{"type":"vigil.mqtt.reply.v1","status":"accepted","upload":"9f86…","seq":42,"receipt":"o2Rib2R5…"}
//	{"type":"vigil.mqtt.reply.v1","status":"rejected","upload":"9f86…","seq":42,
//	 "error":{"code":"replay","message":"…"}}
//
// Receipt is the signed receipt exactly as the HTTP endpoint returns it (deterministic CBOR,
// envelope.SignedReceipt), so a device verifies it the same way whatever the transport.
// Upload and Seq are present when the envelope could be decoded far enough to know them.
type Reply struct {
	Type     string      `json:"type"`
	Status   string      `json:"status"`
	Upload   string      `json:"upload,omitempty"`   // hex SHA-256 of the upload's canonical body
	Seq      uint64      `json:"seq,omitempty"`      // the upload's sequence number
	Receipt  []byte      `json:"receipt,omitempty"`  // signed receipt (base64 in JSON)
	Replayed bool        `json:"replayed,omitempty"` // an exact re-send: this is the receipt stored then
	Error    *ReplyError `json:"error,omitempty"`
}

// ReplyError is the coded reason of a rejection. Code is one of the stable codes of the
// devices package (the same as the HTTP API's), or one of the MQTT adapter's own:
// CodeTopicMismatch, CodeInternal.
type ReplyError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// RetryAfterSeconds, when positive, says the device may send the same upload again after
	// that many seconds (rate_limited, quota_exceeded, backpressure, internal_error).
	RetryAfterSeconds int `json:"retry_after_s,omitempty"`
}

// Codes of rejections only the MQTT adapter makes.
const (
	// CodeTopicMismatch: the envelope is signed for another device than the topic names.
	CodeTopicMismatch = "topic_mismatch"
	// CodeInternal: Vigil failed to process the upload; nothing was stored; send it again.
	CodeInternal = "internal_error"
)

// maxReplyBytes bounds what ParseReply accepts (a receipt is < 1 KiB).
const maxReplyBytes = 16 << 10

// ErrBadReply is returned by ParseReply for bytes that are not a well-formed reply.
var ErrBadReply = errors.New("malformed MQTT reply")

// ParseReply decodes and checks a reply received on a receipts topic.
func ParseReply(b []byte) (*Reply, error) {
	if len(b) > maxReplyBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrBadReply, len(b), maxReplyBytes)
	}
	var r Reply
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadReply, err)
	}
	if r.Type != ReplyType {
		return nil, fmt.Errorf("%w: type %q, want %q", ErrBadReply, clip(r.Type), ReplyType)
	}
	if r.Upload != "" {
		if h, err := hex.DecodeString(r.Upload); err != nil || len(h) != 32 {
			return nil, fmt.Errorf("%w: upload is not a hex SHA-256", ErrBadReply)
		}
	}
	switch r.Status {
	case StatusAccepted:
		if len(r.Receipt) == 0 || r.Error != nil {
			return nil, fmt.Errorf("%w: accepted reply needs a receipt and no error", ErrBadReply)
		}
	case StatusRejected:
		if r.Error == nil || r.Error.Code == "" || len(r.Receipt) != 0 {
			return nil, fmt.Errorf("%w: rejected reply needs an error code and no receipt", ErrBadReply)
		}
		if r.Error.RetryAfterSeconds < 0 {
			return nil, fmt.Errorf("%w: negative retry_after_s", ErrBadReply)
		}
	default:
		return nil, fmt.Errorf("%w: status %q", ErrBadReply, clip(r.Status))
	}
	return &r, nil
}

// UploadHash returns the reply's upload hash, or false when it has none.
func (r *Reply) UploadHash() ([32]byte, bool) {
	var h [32]byte
	b, err := hex.DecodeString(r.Upload)
	if err != nil || len(b) != 32 {
		return h, false
	}
	copy(h[:], b)
	return h, true
}
