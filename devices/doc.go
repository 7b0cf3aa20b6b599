// Package devices is the device side of Vigil's trust boundary: the registry of devices and
// their keys (enrollment with one-time tokens and proof of possession, rotation, suspension,
// patient assignment), and the verification and group-committed ingestion of signed uploads
// through one entry point, (*Service).Accept, which every transport (HTTP in server, MQTT in
// devices/mqtt) calls. The wire formats live in devices/envelope; see docs/devices.md and
// docs/upload-envelope.md.
package devices
