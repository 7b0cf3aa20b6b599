// Package keys signs, verifies, MACs and envelope-encrypts with Vigil's keys, named by purpose,
// behind small interfaces, with two implementations of the key ring: Vault Transit
// ([Vault], production) and a passphrase-sealed local key ring ([Local], demo and tests).
//
// # Purposes
//
// Every key has one purpose ([AuditCheckpoint], [ReceiptSigning], [ReleaseSigning],
// [PHIEncryption], [WebhookHMAC]); a key is never used for another purpose. Keys have
// versions: [Ring.Rotate] adds a version, new work uses the newest version, old versions
// still verify and decrypt.
//
// # What consumers use
//
//   - [Signer]: a key id, the public key and Sign(ctx, msg) for one key version. Ed25519
//     signatures are raw 64-byte signatures over msg (usable for C2SP signed notes);
//     ECDSA P-256 signatures are ASN.1 DER over SHA-256(msg) (what cosign verifies).
//   - [Verifier]: checks a signature against every live version of a purpose.
//   - [Encrypter]: envelope encryption with associated data ([Envelope]), data keys cached
//     for a bounded time and count.
//   - [PHI]: field encryption of protected health information plus a keyed blind index.
//
// Key operations that matter (create, rotate, release signing, bulk PHI decryption,
// re-wrapping) are reported to an optional, consumer-owned hook ([OnOperation]); the binary
// connects it to the audit chain. This package imports nothing else of Vigil's.
//
// The conformance suite every implementation passes is in package keys/keystest.
package keys
