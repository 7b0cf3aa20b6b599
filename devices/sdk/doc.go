// Package sdk is the Go client library for device makers: it enrolls a device (generating
// its Ed25519 key and proving possession to Vigil), signs uploads of telemetry, delivers
// them over HTTP in order with retries, keeps them in an on-disk buffer until Vigil has
// acknowledged them with a receipt (so nothing is lost when the network is down or the
// device process restarts), and verifies each receipt's signature against Vigil's
// receipt-signing key. It has no goroutines of its own: the caller drives delivery with
// Send or Flush.
package sdk
