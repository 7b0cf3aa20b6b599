package mqttwire

import (
	"errors"
	"fmt"
	"strings"
)

// Topic layout (docs/devices-sdk.md):
//
//	<prefix>/<device id>/up        a device publishes its signed upload envelopes here (QoS 1)
//	<prefix>/<device id>/receipts  Vigil answers each upload here: a receipt or a coded rejection
//
// The default prefix is "vigil/devices".
const (
	// DefaultPrefix is the topic prefix when a configuration leaves it empty.
	DefaultPrefix = "vigil/devices"
	upSuffix      = "up"
	receiptSuffix = "receipts"
)

// ErrBadTopic is returned by ParseUpTopic for a topic that is not <prefix>/<device id>/up.
var ErrBadTopic = errors.New("not an upload topic")

// maxDeviceIDLen bounds the device segment of a topic (registry ids are 36-byte UUIDs; the
// bound leaves room for other id schemes without letting a topic grow without limit).
const maxDeviceIDLen = 128

// UpTopic is the topic a device publishes its uploads on.
func UpTopic(prefix, deviceID string) string { return prefix + "/" + deviceID + "/" + upSuffix }

// ReceiptTopic is the topic Vigil publishes a device's receipts and rejections on.
func ReceiptTopic(prefix, deviceID string) string {
	return prefix + "/" + deviceID + "/" + receiptSuffix
}

// UpFilter is the subscription filter matching every device's upload topic.
func UpFilter(prefix string) string { return prefix + "/+/" + upSuffix }

// ParseUpTopic returns the device id of an upload topic <prefix>/<device id>/up. The device
// segment must be non-empty, at most 128 bytes of printable ASCII, and hold none of the MQTT
// wildcard characters '+' and '#'; anything else is ErrBadTopic. The id is what the device
// claims: the caller checks it against the signed envelope.
func ParseUpTopic(prefix, topic string) (string, error) {
	rest, ok := strings.CutPrefix(topic, prefix+"/")
	if !ok {
		return "", fmt.Errorf("%w: %q does not start with %q", ErrBadTopic, clip(topic), prefix+"/")
	}
	id, ok := strings.CutSuffix(rest, "/"+upSuffix)
	if !ok {
		return "", fmt.Errorf("%w: %q does not end with /%s", ErrBadTopic, clip(topic), upSuffix)
	}
	if err := validDeviceSegment(id); err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadTopic, err)
	}
	return id, nil
}

func validDeviceSegment(id string) error {
	if id == "" {
		return errors.New("empty device id")
	}
	if len(id) > maxDeviceIDLen {
		return fmt.Errorf("device id of %d bytes, limit %d", len(id), maxDeviceIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if c <= ' ' || c > '~' || c == '/' || c == '+' || c == '#' {
			return fmt.Errorf("device id %q holds a character not allowed in a topic segment", clip(id))
		}
	}
	return nil
}

// clip shortens untrusted text for error messages and keeps it printable.
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
