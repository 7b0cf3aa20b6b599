// Package devices owns the device registry and provisioning, the signed-upload envelope and its verification, and the HTTP and MQTT ingestion adapters.
package devices
