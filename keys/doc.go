// Package keys holds Vigil's keys behind small interfaces: signing and verification, MACs,
// and envelope encryption with associated data, each key named by its purpose. Keys never
// live in the database.
//
// A [Ring] names keys by [Purpose] ([AuditCheckpoint], [ReceiptSigning], [ReleaseSigning],
// [PHIEncryption], [WebhookHMAC], [PHIBlindIndex]) on one [Backend]: [Vault] (Vault or
// OpenBao Transit, production) or [Local] (a passphrase-sealed file in the data directory,
// for `vigil demo` and tests; not for production). Keys have versions: [Ring.Rotate] adds a
// version, new work uses the newest, older live versions still verify and decrypt.
//
// Consumers use the small interfaces:
//   - [Signer] (KeyID, Public, Sign): Ed25519 signatures are raw 64-byte signatures over the
//     message (C2SP signed notes take them as they are), ECDSA P-256 signatures are ASN.1 DER
//     over SHA-256 (what cosign verifies). [Ring.Signer] returns one for the newest version.
//   - [Verifier]: checks a signature against the key version named by its key id.
//   - [Encrypter]: envelope encryption ([Envelope]), data keys cached within a bounded time
//     and count ([Config]).
//   - [PHI]: field encryption of protected health information and a keyed blind index.
//
// Key operations that matter (create, rotate, release signing, bulk PHI decryption,
// re-wrapping) are reported to a consumer-owned hook, [Config.OnOperation]; the binary
// connects it to the audit chain. When the hook fails the result is withheld. This package
// imports nothing else of Vigil's.
//
// The conformance suite every backend passes is in keys/keystest, which also starts a real
// Vault dev server for tests.
package keys
