package mqtt

import "github.com/vigilhealth/vigil/devices/mqttwire"

// The topic layout and the reply format are defined in devices/mqttwire, the wire-format
// package the device side (devices/sdk/mqtt) shares; these are the names the Ingestor uses.

// DefaultPrefix is the topic prefix when Config.Prefix is empty.
const DefaultPrefix = mqttwire.DefaultPrefix

// Reply format (mqttwire.Reply).
const (
	ReplyType         = mqttwire.ReplyType
	StatusAccepted    = mqttwire.StatusAccepted
	StatusRejected    = mqttwire.StatusRejected
	CodeTopicMismatch = mqttwire.CodeTopicMismatch
	CodeInternal      = mqttwire.CodeInternal
)

type (
	// Reply is what the Ingestor publishes on a receipts topic (mqttwire.Reply).
	Reply = mqttwire.Reply
	// ReplyError is the coded reason of a rejection (mqttwire.ReplyError).
	ReplyError = mqttwire.ReplyError
)

// UpFilter is the subscription filter matching every device's upload topic.
func UpFilter(prefix string) string { return mqttwire.UpFilter(prefix) }

// ReceiptTopic is the topic the Ingestor publishes a device's receipts and rejections on.
func ReceiptTopic(prefix, deviceID string) string { return mqttwire.ReceiptTopic(prefix, deviceID) }

// ParseUpTopic returns the device id of an upload topic (mqttwire.ParseUpTopic).
func ParseUpTopic(prefix, topic string) (string, error) {
	return mqttwire.ParseUpTopic(prefix, topic)
}

// clip shortens untrusted text for error messages and log attributes and keeps it printable.
func clip(s string) string {
	if len(s) > 60 {
		s = s[:60] + "..."
	}
	b := []byte(s)
	for i, c := range b {
		if c < ' ' || c > '~' {
			b[i] = '?'
		}
	}
	return string(b)
}
