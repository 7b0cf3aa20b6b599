// Package envelope is the wire format of everything a device signs and everything Vigil
// signs back: the signed upload of telemetry, the enrollment and key-rotation requests, and
// the upload receipt. It has no logic beyond encoding, decoding and signature checks, so a
// device maker can read it side by side with docs/upload-envelope.md and the test vectors
// in testdata/.
//
// Every signed structure is a CBOR map encoded with RFC 8949 §4.2.1 Core Deterministic
// Encoding (shortest integer and float forms, definite lengths, map keys sorted bytewise by
// their encoding, no tags). Its bytes — the canonical bytes — are what is signed (Ed25519)
// and hashed (SHA-256). Each signed structure carries a "type" field naming it and its
// version, so a signature over one kind of message can never be taken for another.
// Decoding is strict: a body whose bytes are not exactly the canonical encoding of what they
// decode to (unknown fields, duplicate keys, longer-than-needed forms, unsorted keys, a
// field that should be omitted when empty) is rejected as malformed.
package envelope

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"time"
	"unicode/utf8"

	"github.com/fxamacker/cbor/v2"
)

// Type names of the signed structures (the "type" field of each body).
const (
	TypeUpload  = "vigil.upload.v1"
	TypeEnroll  = "vigil.enroll.v1"
	TypeRotate  = "vigil.rotate.v1"
	TypeReceipt = "vigil.receipt.v1"
)

// Limits bound what a decoder accepts. The zero value of a field means its default.
type Limits struct {
	// MaxEnvelopeBytes is the largest envelope (outer bytes). Default 256 KiB.
	MaxEnvelopeBytes int
	// MaxSamples is the most samples in one upload. Default 4096.
	MaxSamples int
	// MaxWaveforms is the most waveform blocks in one upload. Default 16.
	MaxWaveforms int
	// MaxWaveformPoints is the most points in one waveform block. Default 16384.
	MaxWaveformPoints int
}

// DefaultLimits are the limits used when a field of Limits is zero.
var DefaultLimits = Limits{MaxEnvelopeBytes: 256 << 10, MaxSamples: 4096, MaxWaveforms: 16, MaxWaveformPoints: 16384}

func (l Limits) withDefaults() Limits {
	if l.MaxEnvelopeBytes <= 0 {
		l.MaxEnvelopeBytes = DefaultLimits.MaxEnvelopeBytes
	}
	if l.MaxSamples <= 0 {
		l.MaxSamples = DefaultLimits.MaxSamples
	}
	if l.MaxWaveforms <= 0 {
		l.MaxWaveforms = DefaultLimits.MaxWaveforms
	}
	if l.MaxWaveformPoints <= 0 {
		l.MaxWaveformPoints = DefaultLimits.MaxWaveformPoints
	}
	return l
}

// Errors of decoding and verification. Callers branch on them with errors.Is.
var (
	// ErrMalformed: the bytes are not a well-formed, canonical, valid structure.
	ErrMalformed = errors.New("malformed envelope")
	// ErrTooLarge: the envelope or one of its lists is larger than the limits allow.
	ErrTooLarge = errors.New("envelope too large")
	// ErrBadSignature: the signature does not verify under the given public key.
	ErrBadSignature = errors.New("invalid signature")
)

// Sample is one measured value.
type Sample struct {
	// Code is the LOINC code of what was measured, e.g. "8867-4" (heart rate).
	Code string `cbor:"code" json:"code"`
	// Value is the measured value in Unit. It MUST be finite.
	Value float64 `cbor:"value" json:"value"`
	// Unit is the UCUM unit, e.g. "/min", "%", "Cel", "mm[Hg]".
	Unit string `cbor:"unit" json:"unit"`
	// T is the effective time of the measurement, in milliseconds since the Unix epoch (UTC).
	T int64 `cbor:"t" json:"t"`
}

// Time returns T as a time.Time.
func (s Sample) Time() time.Time { return time.UnixMilli(s.T).UTC() }

// Waveform is a block of evenly spaced samples of one signal (an ECG lead, a plethysmogram):
// point i was measured at T0 + i/Hz seconds and its value is Data[i] * Scale in Unit.
type Waveform struct {
	Code  string  `cbor:"code" json:"code"`   // LOINC code of the signal
	Unit  string  `cbor:"unit" json:"unit"`   // UCUM unit of Data[i]*Scale
	T0    int64   `cbor:"t0" json:"t0"`       // time of the first point, ms since the Unix epoch
	Hz    float64 `cbor:"hz" json:"hz"`       // sampling rate, > 0
	Scale float64 `cbor:"scale" json:"scale"` // physical value per count, finite and non-zero
	Data  []int64 `cbor:"data" json:"data"`   // the raw counts
}

// Upload is the signed body of one upload of telemetry.
type Upload struct {
	// Type is TypeUpload.
	Type string `cbor:"type" json:"type"`
	// Device is the device's registry id (a UUID in its canonical lowercase text form).
	Device string `cbor:"device" json:"device"`
	// KeyVersion is the version of the device key that signs this upload (1 for the key
	// registered at enrollment, +1 at each rotation).
	KeyVersion uint64 `cbor:"kv" json:"kv"`
	// Seq is the upload's sequence number: it MUST be strictly greater than the sequence
	// number of every upload of this device accepted before. It need not be contiguous.
	Seq uint64 `cbor:"seq" json:"seq"`
	// SentAt is when the device signed the upload, ms since the Unix epoch.
	SentAt int64 `cbor:"sent_at" json:"sent_at"`
	// Samples are the measured values (at least one sample or one waveform).
	Samples []Sample `cbor:"samples" json:"samples"`
	// Waveforms are optional blocks of waveform data; omitted from the encoding when empty.
	Waveforms []Waveform `cbor:"waveforms,omitempty" json:"waveforms,omitempty"`
}

// SentTime returns SentAt as a time.Time.
func (u *Upload) SentTime() time.Time { return time.UnixMilli(u.SentAt).UTC() }

// Envelope is the outer structure on the wire: the canonical body bytes and the Ed25519
// signature over exactly those bytes.
type Envelope struct {
	Body []byte `cbor:"body" json:"body"`
	Sig  []byte `cbor:"sig" json:"sig"`
}

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	em, err := cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err)
	}
	encMode = em
	dm, err := cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		MaxNestedLevels:   8,
		MaxArrayElements:  1 << 20,
		MaxMapPairs:       64,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		UTF8:              cbor.UTF8RejectInvalid,
		FieldNameMatching: cbor.FieldNameMatchingCaseSensitive,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	decMode = dm
}

// Canonical returns the Core Deterministic CBOR encoding of v (one of the body types of this
// package, or any value made of CBOR-encodable fields).
func Canonical(v any) ([]byte, error) {
	b, err := encMode.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("canonical encoding: %w", err)
	}
	return b, nil
}

// Hash is the SHA-256 of canonical body bytes: the upload hash that names an upload in
// receipts, proofs and provenance.
func Hash(body []byte) [32]byte { return sha256.Sum256(body) }

// decodeCanonical decodes b into v strictly and checks that b is exactly the canonical
// encoding of v.
func decodeCanonical(b []byte, v any, what string) error {
	if err := decMode.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	again, err := encMode.Marshal(v)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	if !bytes.Equal(again, b) {
		return fmt.Errorf("%w: %s is not in canonical (core deterministic) encoding", ErrMalformed, what)
	}
	return nil
}

// Marshal returns the envelope's wire bytes.
func (e *Envelope) Marshal() ([]byte, error) { return Canonical(e) }

// ParseEnvelope decodes the outer envelope (strictly, canonically) without looking inside
// the body. It fails with ErrTooLarge past lim.MaxEnvelopeBytes and ErrMalformed otherwise.
func ParseEnvelope(raw []byte, lim Limits) (*Envelope, error) {
	lim = lim.withDefaults()
	if len(raw) > lim.MaxEnvelopeBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(raw), lim.MaxEnvelopeBytes)
	}
	var e Envelope
	if err := decodeCanonical(raw, &e, "envelope"); err != nil {
		return nil, err
	}
	if len(e.Body) == 0 {
		return nil, fmt.Errorf("%w: envelope has no body", ErrMalformed)
	}
	if len(e.Sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: signature is %d bytes, want %d", ErrMalformed, len(e.Sig), ed25519.SignatureSize)
	}
	return &e, nil
}

// peekType returns the "type" field of a body without decoding the rest.
func peekType(body []byte) string {
	var t struct {
		Type string `cbor:"type" json:"type"`
	}
	if err := cbor.Unmarshal(body, &t); err != nil {
		return ""
	}
	return t.Type
}

// ParseUpload decodes and validates the canonical body of an upload. It does not check the
// signature (see VerifySignature) or anything that needs the registry.
func ParseUpload(body []byte, lim Limits) (*Upload, error) {
	lim = lim.withDefaults()
	var u Upload
	if err := decodeCanonical(body, &u, "upload body"); err != nil {
		if t := peekType(body); t != TypeUpload {
			return nil, fmt.Errorf("%w: body type %q, want %q", ErrMalformed, t, TypeUpload)
		}
		return nil, err
	}
	if err := u.validate(lim); err != nil {
		return nil, err
	}
	return &u, nil
}

// Validate checks the upload against the rules of the format with the default limits.
func (u *Upload) Validate() error { return u.validate(Limits{}.withDefaults()) }

func (u *Upload) validate(lim Limits) error {
	if u.Type != TypeUpload {
		return fmt.Errorf("%w: type %q, want %q", ErrMalformed, u.Type, TypeUpload)
	}
	if !validUUID(u.Device) {
		return fmt.Errorf("%w: device %q is not a canonical lowercase UUID", ErrMalformed, clip(u.Device))
	}
	if u.KeyVersion == 0 {
		return fmt.Errorf("%w: key version 0 (versions start at 1)", ErrMalformed)
	}
	if u.Seq == 0 {
		return fmt.Errorf("%w: sequence number 0 (sequence numbers start at 1)", ErrMalformed)
	}
	if u.SentAt <= 0 {
		return fmt.Errorf("%w: sent_at %d is not a positive time", ErrMalformed, u.SentAt)
	}
	if len(u.Samples) == 0 && len(u.Waveforms) == 0 {
		return fmt.Errorf("%w: upload has neither samples nor waveforms", ErrMalformed)
	}
	if u.Samples == nil {
		return fmt.Errorf("%w: samples missing (send an empty array)", ErrMalformed)
	}
	if len(u.Samples) > lim.MaxSamples {
		return fmt.Errorf("%w: %d samples, limit %d", ErrTooLarge, len(u.Samples), lim.MaxSamples)
	}
	if len(u.Waveforms) > lim.MaxWaveforms {
		return fmt.Errorf("%w: %d waveform blocks, limit %d", ErrTooLarge, len(u.Waveforms), lim.MaxWaveforms)
	}
	for i, s := range u.Samples {
		if err := validCode(s.Code); err != nil {
			return fmt.Errorf("%w: sample %d: %v", ErrMalformed, i, err)
		}
		if err := validUnit(s.Unit); err != nil {
			return fmt.Errorf("%w: sample %d: %v", ErrMalformed, i, err)
		}
		if math.IsNaN(s.Value) || math.IsInf(s.Value, 0) {
			return fmt.Errorf("%w: sample %d: value is not finite", ErrMalformed, i)
		}
		if s.T <= 0 {
			return fmt.Errorf("%w: sample %d: time %d is not a positive time", ErrMalformed, i, s.T)
		}
	}
	for i, w := range u.Waveforms {
		if err := validCode(w.Code); err != nil {
			return fmt.Errorf("%w: waveform %d: %v", ErrMalformed, i, err)
		}
		if err := validUnit(w.Unit); err != nil {
			return fmt.Errorf("%w: waveform %d: %v", ErrMalformed, i, err)
		}
		if w.T0 <= 0 {
			return fmt.Errorf("%w: waveform %d: t0 %d is not a positive time", ErrMalformed, i, w.T0)
		}
		if !(w.Hz > 0) || math.IsInf(w.Hz, 0) {
			return fmt.Errorf("%w: waveform %d: hz must be finite and > 0", ErrMalformed, i)
		}
		if w.Scale == 0 || math.IsNaN(w.Scale) || math.IsInf(w.Scale, 0) {
			return fmt.Errorf("%w: waveform %d: scale must be finite and non-zero", ErrMalformed, i)
		}
		if len(w.Data) == 0 {
			return fmt.Errorf("%w: waveform %d: no data", ErrMalformed, i)
		}
		if len(w.Data) > lim.MaxWaveformPoints {
			return fmt.Errorf("%w: waveform %d: %d points, limit %d", ErrTooLarge, i, len(w.Data), lim.MaxWaveformPoints)
		}
	}
	return nil
}

// Sign validates u, encodes it canonically and signs it with priv, returning the envelope's
// wire bytes and the canonical body (whose Hash names the upload).
func Sign(u *Upload, priv ed25519.PrivateKey) (raw, body []byte, err error) {
	if u.Type == "" {
		u.Type = TypeUpload
	}
	if u.Samples == nil {
		u.Samples = []Sample{}
	}
	if err := u.Validate(); err != nil {
		return nil, nil, err
	}
	return sign(u, priv)
}

func sign(v any, priv ed25519.PrivateKey) (raw, body []byte, err error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, nil, errors.New("sign: not an Ed25519 private key")
	}
	body, err = Canonical(v)
	if err != nil {
		return nil, nil, err
	}
	env := Envelope{Body: body, Sig: ed25519.Sign(priv, body)}
	raw, err = env.Marshal()
	if err != nil {
		return nil, nil, err
	}
	return raw, body, nil
}

// VerifySignature checks an Ed25519 signature over body. It returns ErrBadSignature on any
// mismatch, including a public key of the wrong size.
func VerifySignature(pub ed25519.PublicKey, body, sig []byte) error {
	if len(pub) != ed25519.PublicKeySize || len(sig) != ed25519.SignatureSize || !ed25519.Verify(pub, body, sig) {
		return ErrBadSignature
	}
	return nil
}

// Open parses an upload envelope, verifies its signature with pub and decodes the upload.
// Servers resolve the key from the registry between ParseEnvelope/ParseUpload and
// VerifySignature instead; Open is for tools and tests that already know the key.
func Open(raw []byte, pub ed25519.PublicKey, lim Limits) (*Upload, []byte, error) {
	env, err := ParseEnvelope(raw, lim)
	if err != nil {
		return nil, nil, err
	}
	u, err := ParseUpload(env.Body, lim)
	if err != nil {
		return nil, nil, err
	}
	if err := VerifySignature(pub, env.Body, env.Sig); err != nil {
		return nil, nil, err
	}
	return u, env.Body, nil
}

func validUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// validCode accepts the shape of a LOINC code (digits, a dash, a check digit) and, for
// vendor or local codes, any printable ASCII token up to 32 bytes; whether the code is known
// is core's business.
func validCode(c string) error {
	if c == "" || len(c) > 32 {
		return fmt.Errorf("code %q: want 1..32 bytes", clip(c))
	}
	for i := 0; i < len(c); i++ {
		if c[i] <= ' ' || c[i] > '~' {
			return fmt.Errorf("code %q: not printable ASCII", clip(c))
		}
	}
	return nil
}

// validUnit accepts a UCUM unit expression's shape: printable ASCII, up to 32 bytes
// (the empty string is not a unit: dimensionless is "1").
func validUnit(u string) error {
	if u == "" || len(u) > 32 {
		return fmt.Errorf("unit %q: want 1..32 bytes", clip(u))
	}
	for i := 0; i < len(u); i++ {
		if u[i] <= ' ' || u[i] > '~' {
			return fmt.Errorf("unit %q: not printable ASCII", clip(u))
		}
	}
	return nil
}

// clip shortens untrusted text for error messages.
func clip(s string) string {
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	if !utf8.ValidString(s) {
		return "(invalid UTF-8)"
	}
	return s
}
