// Package keys signs, verifies and envelope-encrypts behind small interfaces, with a Vault Transit implementation and a local key ring.
package keys
