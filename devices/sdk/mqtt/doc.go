// Package mqtt is the device side of Vigil's MQTT transport: a Device publishes signed
// upload envelopes on <prefix>/<device id>/up and waits for Vigil's reply on
// <prefix>/<device id>/receipts (the format is devices/mqttwire). A *Device is an
// sdk.Transport, so an sdk.Client delivers, retries and verifies receipts over MQTT as it
// does over HTTP. Like the rest of devices/sdk it imports none of Vigil's server side
// (docs/devices-sdk.md).
package mqtt
