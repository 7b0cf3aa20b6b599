// Package mqtt is the MQTT ingestion adapter of the device layer: Vigil subscribes to
// <prefix>/+/up on a broker (a shared subscription, QoS 1, so several Vigil instances split
// the load), hands each signed upload envelope to the same verification and ingestion as the
// HTTP endpoint, and publishes the signed receipt or a coded rejection on
// <prefix>/<device id>/receipts. A message is acknowledged to the broker only once its
// upload is stored or definitively refused, so an upload in flight when Vigil stops is
// delivered again (and an exact re-send gets its original receipt back).
//
// Uploads of one device are handled in the order the broker delivered them (they are
// sharded by device onto workers), since sequence numbers must increase. The broker is
// trusted with nothing: every upload is verified end to end by its signature.
//
// The topics and the reply are defined in devices/mqttwire; the device side of the transport
// is devices/sdk/mqtt.
package mqtt
