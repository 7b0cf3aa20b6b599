package keys

import (
	"errors"
	"fmt"
)

// Sentinel errors; callers branch on them with errors.Is. Returned errors carry context
// (usually a *[BackendError]).
var (
	// ErrKeyNotFound: the purpose's key, or the requested version, does not exist (or is
	// retired). Create missing keys with `vigil keys init` ([Ring.EnsureKeys]).
	ErrKeyNotFound = errors.New("key not found")
	// ErrSealed: Vault is sealed; nothing can be signed or decrypted until it is unsealed.
	ErrSealed = errors.New("key backend sealed")
	// ErrUnavailable: the backend could not be reached or answered with a server error
	// (network, TLS, timeout, 5xx). Retry later.
	ErrUnavailable = errors.New("key backend unreachable")
	// ErrPermissionDenied: the backend refused the credentials or the policy forbids the call.
	ErrPermissionDenied = errors.New("key backend permission denied")
	// ErrWrongPassphrase: the local key ring could not be opened with the passphrase (or the
	// file was altered).
	ErrWrongPassphrase = errors.New("wrong passphrase for the local key ring, or the file was altered")
	// ErrInvalidSignature: a signature or MAC does not verify. See [InvalidSignatureError].
	ErrInvalidSignature = errors.New("invalid signature")
	// ErrDecrypt: a ciphertext, wrapped key or its associated data is malformed or was
	// altered, or was made with a key this ring does not hold. No plaintext is returned.
	ErrDecrypt = errors.New("decryption failed")
	// ErrWrongPurpose: the purpose is unknown, or the operation does not fit its key (signing
	// with phi-encryption, rotating phi-blind-index).
	ErrWrongPurpose = errors.New("operation not allowed for key purpose")
)

// InvalidSignatureError reports a signature (or MAC) that does not verify under the named
// key version. It wraps [ErrInvalidSignature].
type InvalidSignatureError struct {
	KeyID string
}

func (e *InvalidSignatureError) Error() string {
	return fmt.Sprintf("invalid signature by %q", e.KeyID)
}

// Unwrap returns [ErrInvalidSignature].
func (e *InvalidSignatureError) Unwrap() error { return ErrInvalidSignature }

// BackendError is an error from a key backend with what was being done. Err wraps one of the
// sentinels above when the cause is known ([ErrSealed], [ErrUnavailable], [ErrKeyNotFound],
// [ErrPermissionDenied], [ErrDecrypt], [ErrWrongPassphrase]).
type BackendError struct {
	Backend string // "vault" or "local"
	Op      string // e.g. "sign", "datakey", "read"
	Key     string // the key name (purpose), may be empty
	Status  int    // HTTP status from Vault, 0 if none
	Err     error
}

func (e *BackendError) Error() string {
	s := "keys: " + e.Backend + " " + e.Op
	if e.Key != "" {
		s += " " + e.Key
	}
	if e.Status != 0 {
		s += fmt.Sprintf(" (HTTP %d)", e.Status)
	}
	return s + ": " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *BackendError) Unwrap() error { return e.Err }
