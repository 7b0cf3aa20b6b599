// Package sdk is the Go client library for device makers: it enrolls a device (generating
// its Ed25519 key and proving possession to Vigil), signs uploads of telemetry, delivers
// them over HTTP in order with retries, keeps them in an on-disk buffer until Vigil has
// acknowledged them with a receipt (so nothing is lost when the network is down or the
// device process restarts), and verifies each receipt's signature against Vigil's
// receipt-signing key. It has no goroutines of its own: the caller drives delivery with
// Send or Flush. Its subpackage mqtt is the MQTT transport.
//
// The SDK is a leaf: of Vigil's packages it imports only the wire formats devices/envelope
// and devices/mqttwire, nothing of the server side (internal/archtest's Leaves rule, and
// this package's deps test over the whole closure).
package sdk
