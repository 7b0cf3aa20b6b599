// Package devices is the device side of Vigil's trust boundary: the registry of devices and
// their keys (enrollment with one-time tokens and proof of possession, rotation, suspension,
// patient assignment), and the verification and group-committed ingestion of signed uploads
// through one entry point, (*Service).Accept, which every transport (HTTP in server, MQTT in
// devices/mqtt) calls. Devices owns the upload transaction: core prepares and stores the
// samples in it, devices writes the sequence numbers and receipts, commits and answers, then
// hands the committed observations to core.Publish. The wire formats live in
// devices/envelope; see docs/devices.md, docs/upload-envelope.md and docs/architecture.md.
package devices
