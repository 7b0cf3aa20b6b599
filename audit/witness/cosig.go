// Package witness is Vigil's side of C2SP transparency-log witnessing: cosignatures in the
// C2SP tlog-cosignature v1 format (Ed25519, key type 0x04), a client of the C2SP tlog-witness
// protocol (add-checkpoint), and a small witness of our own that speaks the same protocol,
// keeps the newest checkpoint it cosigned for each log in a state file and refuses any
// checkpoint that is not a consistent extension of it (a rollback or a fork). Any C2SP witness
// (e.g. transparency-dev's omniwitness) can stand in for ours; docs/audit.md "Witnessing" says
// how a compliance office, a regulator or a third party runs one.
//
// The formats are in https://c2sp.org/tlog-cosignature and https://c2sp.org/tlog-witness;
// signed notes are golang.org/x/mod/sumdb/note.
package witness

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// algCosignatureV1 is the signed-note key type of Ed25519 cosignature/v1 keys.
const algCosignatureV1 = 0x04

// keyHash is SHA-256(name || "\n" || 0x04 || public key)[:4].
func keyHash(name string, pub ed25519.PublicKey) uint32 {
	h := sha256.New()
	h.Write([]byte(name))
	h.Write([]byte{'\n', algCosignatureV1})
	h.Write(pub)
	return binary.BigEndian.Uint32(h.Sum(nil)[:4])
}

// cosignedMessage is "cosignature/v1\ntime <t>\n" followed by the checkpoint body.
func cosignedMessage(t uint64, body []byte) []byte {
	m := []byte("cosignature/v1\ntime " + strconv.FormatUint(t, 10) + "\n")
	return append(m, body...)
}

// Cosigner makes cosignature/v1 signatures; it is a note.Signer.
type Cosigner struct {
	name string
	priv ed25519.PrivateKey
	hash uint32
	now  func() time.Time
}

// NewCosigner returns the cosigner named name (a schema-less URL, e.g.
// "witness.compliance.example-hospital.org") over priv. now is the clock (nil: time.Now).
func NewCosigner(name string, priv ed25519.PrivateKey, now func() time.Time) (*Cosigner, error) {
	if name == "" || strings.ContainsAny(name, "+ \n") {
		return nil, fmt.Errorf("witness: invalid cosigner name %q", name)
	}
	if now == nil {
		now = time.Now
	}
	pub := priv.Public().(ed25519.PublicKey)
	return &Cosigner{name: name, priv: priv, hash: keyHash(name, pub), now: now}, nil
}

// Name implements note.Signer.
func (c *Cosigner) Name() string { return c.name }

// KeyHash implements note.Signer.
func (c *Cosigner) KeyHash() uint32 { return c.hash }

// Sign implements note.Signer: the 8-byte timestamp followed by the Ed25519 signature of the
// cosigned message.
func (c *Cosigner) Sign(msg []byte) ([]byte, error) {
	t := uint64(c.now().Unix())
	sig := ed25519.Sign(c.priv, cosignedMessage(t, msg))
	return append(binary.BigEndian.AppendUint64(nil, t), sig...), nil
}

// VerifierKey is the cosigner's verifier key: "<name>+<key hash hex>+base64(0x04 || public key)".
func (c *Cosigner) VerifierKey() string {
	return VerifierKey(c.name, c.priv.Public().(ed25519.PublicKey))
}

// VerifierKey is the verifier key of a cosignature/v1 key.
func VerifierKey(name string, pub ed25519.PublicKey) string {
	return fmt.Sprintf("%s+%08x+%s", name, keyHash(name, pub), base64.StdEncoding.EncodeToString(append([]byte{algCosignatureV1}, pub...)))
}

// Verifier checks cosignature/v1 signatures; it is a note.Verifier.
type Verifier struct {
	name string
	pub  ed25519.PublicKey
	hash uint32
	// Time is set by Verify to the timestamp of the last signature it accepted.
	Time time.Time
}

// NewVerifier parses a cosignature/v1 verifier key (VerifierKey).
func NewVerifier(vkey string) (*Verifier, error) {
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 {
		return nil, fmt.Errorf("witness: malformed verifier key %q", vkey)
	}
	h, err := strconv.ParseUint(parts[1], 16, 32)
	if err != nil || len(parts[1]) != 8 {
		return nil, fmt.Errorf("witness: malformed verifier key hash %q", parts[1])
	}
	k, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(k) != 1+ed25519.PublicKeySize || k[0] != algCosignatureV1 {
		return nil, errors.New("witness: verifier key is not an Ed25519 cosignature/v1 key")
	}
	pub := ed25519.PublicKey(k[1:])
	if keyHash(parts[0], pub) != uint32(h) {
		return nil, errors.New("witness: verifier key hash does not match its name and key")
	}
	return &Verifier{name: parts[0], pub: pub, hash: uint32(h)}, nil
}

// Name implements note.Verifier.
func (v *Verifier) Name() string { return v.name }

// KeyHash implements note.Verifier.
func (v *Verifier) KeyHash() uint32 { return v.hash }

// Verify implements note.Verifier.
func (v *Verifier) Verify(msg, sig []byte) bool {
	if len(sig) != 8+ed25519.SignatureSize {
		return false
	}
	t := binary.BigEndian.Uint64(sig[:8])
	if t > 1<<63-1 || !ed25519.Verify(v.pub, cosignedMessage(t, msg), sig[8:]) {
		return false
	}
	v.Time = time.Unix(int64(t), 0).UTC()
	return true
}

var (
	_ note.Signer   = (*Cosigner)(nil)
	_ note.Verifier = (*Verifier)(nil)
)

// Cosigned reports whether signed (a checkpoint note carrying the log's signature and
// cosignature lines) holds a valid cosignature by the witness key vkey, and when it was made.
func Cosigned(signed []byte, vkey string) (time.Time, bool) {
	v, err := NewVerifier(vkey)
	if err != nil {
		return time.Time{}, false
	}
	// note.Open needs at least one known verifier to succeed; unknown signatures (the log's)
	// are ignored.
	n, err := note.Open(signed, note.VerifierList(v))
	if err != nil || len(n.Sigs) == 0 {
		return time.Time{}, false
	}
	return v.Time, true
}
