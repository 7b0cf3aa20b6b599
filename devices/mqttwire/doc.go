// Package mqttwire is the wire format of Vigil's MQTT transport, shared by the ingestor
// (devices/mqtt) and the device side (devices/sdk/mqtt): the topic layout
// (<prefix>/<device id>/up, <prefix>/<device id>/receipts) with its strict parser, and the
// versioned JSON reply (vigil.mqtt.reply.v1) with its strict parser. It has no logic beyond
// building and checking these, and imports nothing of Vigil's, so the device SDK can link it
// (docs/devices-sdk.md).
package mqttwire
