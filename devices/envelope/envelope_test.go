package envelope

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json")

func testKey(b byte) ed25519.PrivateKey {
	seed := bytes.Repeat([]byte{b}, ed25519.SeedSize)
	return ed25519.NewKeyFromSeed(seed)
}

const testDevice = "0192f5a0-7c1e-7b3a-9c44-1d2e3f405162"

var testTime = time.Date(2026, 11, 28, 3, 0, 0, 0, time.UTC)

func sampleUpload() *Upload {
	t0 := time.Date(2026, 11, 28, 3, 0, 0, 0, time.UTC).UnixMilli()
	return &Upload{
		Type: TypeUpload, Device: testDevice, KeyVersion: 1, Seq: 42, SentAt: t0 + 1500,
		Samples: []Sample{
			{Code: "8867-4", Value: 72, Unit: "/min", T: t0},
			{Code: "59408-5", Value: 97.5, Unit: "%", T: t0},
			{Code: "9279-1", Value: 16, Unit: "/min", T: t0},
			{Code: "8310-5", Value: 36.85, Unit: "Cel", T: t0 + 500},
			{Code: "8480-6", Value: 121, Unit: "mm[Hg]", T: t0 + 1000},
		},
	}
}

// Verifies: REQ-DEV-010, REQ-DEV-011
func TestSignOpenRoundTrip(t *testing.T) {
	priv := testKey(1)
	u := sampleUpload()
	raw, body, err := Sign(u, priv)
	if err != nil {
		t.Fatalf("Sign = %v", err)
	}
	got, gotBody, err := Open(raw, priv.Public().(ed25519.PublicKey), Limits{})
	if err != nil {
		t.Fatalf("Open = %v, want nil", err)
	}
	if !bytes.Equal(body, gotBody) {
		t.Errorf("Open body differs from Sign body")
	}
	if got.Seq != u.Seq || len(got.Samples) != len(u.Samples) || got.Samples[3].Value != 36.85 {
		t.Errorf("Open = %+v, want %+v", got, u)
	}
	// Deterministic: signing again gives the same bytes.
	raw2, _, err := Sign(sampleUpload(), priv)
	if err != nil || !bytes.Equal(raw, raw2) {
		t.Errorf("Sign twice differs (err %v)", err)
	}
	// Another key does not verify.
	if _, _, err := Open(raw, testKey(2).Public().(ed25519.PublicKey), Limits{}); !errors.Is(err, ErrBadSignature) {
		t.Errorf("Open(other key) = %v, want ErrBadSignature", err)
	}
}

// Verifies: REQ-DEV-011
func TestParseRejects(t *testing.T) {
	priv := testKey(1)
	mk := func(f func(u *Upload)) []byte {
		u := sampleUpload()
		f(u)
		body, err := Canonical(u)
		if err != nil {
			t.Fatal(err)
		}
		return body
	}
	rawMap := func(m map[string]any) []byte {
		b, err := Canonical(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := mk(func(*Upload) {})
	intValue := bytes.Replace(good, []byte{0xf9, 0x54, 0x80}, []byte{0x18, 0x48}, 1) // 72.0 as integer 72
	if bytes.Equal(intValue, good) {
		t.Fatal("test setup: 72.0 not found as float16")
	}
	cases := []struct {
		name string
		body []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"garbage", []byte{0xff, 0x00}, ErrMalformed},
		{"wrong type", mk(func(u *Upload) { u.Type = TypeEnroll }), ErrMalformed},
		{"bad device id", mk(func(u *Upload) { u.Device = "NOT-A-UUID" }), ErrMalformed},
		{"uppercase device id", mk(func(u *Upload) { u.Device = "0192F5A0-7C1E-7B3A-9C44-1D2E3F405162" }), ErrMalformed},
		{"zero seq", mk(func(u *Upload) { u.Seq = 0 }), ErrMalformed},
		{"zero kv", mk(func(u *Upload) { u.KeyVersion = 0 }), ErrMalformed},
		{"no data", mk(func(u *Upload) { u.Samples = []Sample{} }), ErrMalformed},
		{"empty code", mk(func(u *Upload) { u.Samples[0].Code = "" }), ErrMalformed},
		{"empty unit", mk(func(u *Upload) { u.Samples[0].Unit = "" }), ErrMalformed},
		{"integer where float", intValue, ErrMalformed},
		{"unknown field", rawMap(map[string]any{"type": TypeUpload, "device": testDevice, "kv": 1, "seq": 1, "sent_at": 1, "samples": []any{}, "extra": 1}), ErrMalformed},
		{"empty waveforms present", rawMap(map[string]any{"type": TypeUpload, "device": testDevice, "kv": 1, "seq": 1, "sent_at": 1,
			"samples": []any{map[string]any{"code": "8867-4", "value": 72.0, "unit": "/min", "t": 1}}, "waveforms": []any{}}), ErrMalformed},
		{"too many samples", mk(func(u *Upload) {
			for len(u.Samples) <= DefaultLimits.MaxSamples {
				u.Samples = append(u.Samples, u.Samples[0])
			}
		}), ErrTooLarge},
	}
	for _, tc := range cases {
		_, err := ParseUpload(tc.body, Limits{})
		if !errors.Is(err, tc.want) {
			t.Errorf("ParseUpload(%s) = %v, want %v", tc.name, err, tc.want)
		}
	}
	// Non-canonical map order in the body.
	unsorted := []byte{0xa2, 0x64, 't', 'y', 'p', 'e', 0x61, 'x', 0x63, 's', 'e', 'q', 0x01}
	if _, err := ParseUpload(unsorted, Limits{}); !errors.Is(err, ErrMalformed) {
		t.Errorf("ParseUpload(unsorted) = %v, want ErrMalformed", err)
	}
	// Envelope level.
	raw, _, _ := Sign(sampleUpload(), priv)
	if _, err := ParseEnvelope(raw, Limits{MaxEnvelopeBytes: 20}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("ParseEnvelope(over limit) = %v, want ErrTooLarge", err)
	}
	short, _ := Canonical(&Envelope{Body: good, Sig: []byte{1, 2, 3}})
	if _, err := ParseEnvelope(short, Limits{}); !errors.Is(err, ErrMalformed) {
		t.Errorf("ParseEnvelope(short sig) = %v, want ErrMalformed", err)
	}
}

// Verifies: REQ-DEV-003, REQ-DEV-004
func TestEnrollRotateReceipt(t *testing.T) {
	now := time.Date(2026, 11, 28, 3, 0, 0, 0, time.UTC)
	k1, k2 := testKey(1), testKey(2)
	raw, err := SignEnroll("tok", k1, now)
	if err != nil {
		t.Fatal(err)
	}
	e, err := ParseEnroll(raw)
	if err != nil || e.Token != "tok" || !bytes.Equal(e.PublicKey, k1.Public().(ed25519.PublicKey)) {
		t.Fatalf("ParseEnroll = %+v, %v", e, err)
	}
	// Proof of possession: a body naming k1 but signed by k2 fails.
	body, _ := Canonical(&Enroll{Type: TypeEnroll, Token: "tok", PublicKey: k1.Public().(ed25519.PublicKey), T: 1})
	forged, _ := Canonical(&Envelope{Body: body, Sig: ed25519.Sign(k2, body)})
	if _, err := ParseEnroll(forged); !errors.Is(err, ErrBadSignature) {
		t.Errorf("ParseEnroll(forged) = %v, want ErrBadSignature", err)
	}
	rraw, err := SignRotate(testDevice, 1, k1, k2, now)
	if err != nil {
		t.Fatal(err)
	}
	r, env, err := ParseRotate(rraw)
	if err != nil {
		t.Fatalf("ParseRotate = %v", err)
	}
	if err := VerifySignature(k1.Public().(ed25519.PublicKey), env.Body, env.Sig); err != nil || r.KeyVersion != 1 {
		t.Errorf("rotate old-key signature = %v", err)
	}
	// Receipt round trip.
	h := Hash([]byte("x"))
	rb, _ := Canonical(&Receipt{Type: TypeReceipt, Upload: h[:], Device: testDevice, Seq: 1, ServerTime: 5, AuditEvent: "e"})
	sr := SignedReceipt{Body: rb, Sig: ed25519.Sign(k2, rb), KeyID: "receipt-signing/1"}
	w, _ := sr.Marshal()
	gsr, rec, err := ParseSignedReceipt(w)
	if err != nil || rec.Seq != 1 {
		t.Fatalf("ParseSignedReceipt = %v", err)
	}
	if err := VerifyReceipt(k2.Public(), gsr); err != nil {
		t.Errorf("VerifyReceipt = %v", err)
	}
	if err := VerifyReceipt(k1.Public(), gsr); !errors.Is(err, ErrBadSignature) {
		t.Errorf("VerifyReceipt(wrong key) = %v, want ErrBadSignature", err)
	}
}

// Vector is one test vector of testdata/vectors.json, for implementers in other languages.
type Vector struct {
	Name        string  `json:"name"`
	Description string  `json:"description"`
	Seed        string  `json:"private_key_seed_hex,omitempty"`
	PublicKey   string  `json:"public_key_hex"`
	Upload      *Upload `json:"upload,omitempty"`
	Body        string  `json:"canonical_body_hex"`
	BodyDiag    string  `json:"canonical_body_diagnostic"`
	Envelope    string  `json:"envelope_hex"`
	UploadHash  string  `json:"upload_hash_hex"`
	Expect      string  `json:"expect"` // "valid", "malformed", "invalid_signature"
	// SampleValues are the canonical CBOR bytes (hex) of each sample's value, in order: the
	// authority where JSON cannot carry a value exactly (negative zero is "-0" in the upload
	// above, which most JSON libraries read as 0; its bytes are f98000).
	SampleValues []string `json:"sample_values_cbor_hex,omitempty"`
}

func buildVectors(t *testing.T) []Vector {
	priv := testKey(7)
	pub := priv.Public().(ed25519.PublicKey)
	var vs []Vector
	add := func(name, desc string, u *Upload, body, raw []byte, expect string) {
		h := Hash(body)
		diag, _ := cbor.Diagnose(body)
		var vals []string
		if u != nil {
			for _, smp := range u.Samples {
				b, err := Canonical(smp.Value)
				if err != nil {
					t.Fatal(err)
				}
				vals = append(vals, hex.EncodeToString(b))
			}
		}
		vs = append(vs, Vector{Name: name, Description: desc, Seed: hex.EncodeToString(priv.Seed()),
			PublicKey: hex.EncodeToString(pub), Upload: u, Body: hex.EncodeToString(body), BodyDiag: diag,
			Envelope: hex.EncodeToString(raw), UploadHash: hex.EncodeToString(h[:]), Expect: expect, SampleValues: vals})
	}
	u := sampleUpload()
	raw, body, err := Sign(u, priv)
	if err != nil {
		t.Fatal(err)
	}
	add("vitals", "five vital signs, typical bedside monitor upload", u, body, raw, "valid")

	u2 := sampleUpload()
	u2.Seq = 43
	u2.Samples = u2.Samples[:1]
	u2.Waveforms = []Waveform{{Code: "131328", Unit: "mV", T0: u2.SentAt - 1000, Hz: 250, Scale: 0.005, Data: []int64{0, 12, 40, 160, -30, 5, 0, -1}}}
	raw, body, err = Sign(u2, priv)
	if err != nil {
		t.Fatal(err)
	}
	add("waveform", "one sample and one ECG waveform block", u2, body, raw, "valid")

	u3 := sampleUpload()
	u3.Seq = 44
	u3.Samples = []Sample{{Code: "8310-5", Value: math.Copysign(0, -1), Unit: "Cel", T: u3.SentAt}, {Code: "x-vendor-1", Value: 1e300, Unit: "1", T: u3.SentAt}, {Code: "8867-4", Value: 65504, Unit: "/min", T: u3.SentAt}, {Code: "8867-4", Value: 1.1, Unit: "/min", T: u3.SentAt}}
	raw, body, err = Sign(u3, priv)
	if err != nil {
		t.Fatal(err)
	}
	add("float-forms", "floats in half (65504), double (1.1, 1e300) precision; shortest form is required", u3, body, raw, "valid")

	// Negative vectors.
	_, goodBody, _ := Sign(sampleUpload(), priv)
	bad := append([]byte(nil), goodBody...)
	sig := ed25519.Sign(priv, bad)
	sig[0] ^= 1
	envb, _ := Canonical(&Envelope{Body: bad, Sig: sig})
	add("bad-signature", "a valid body with one bit of the signature flipped", nil, bad, envb, "invalid_signature")

	nc := bytes.Replace(goodBody, []byte{0xf9, 0x54, 0x80}, []byte{0xfb, 0x40, 0x52, 0, 0, 0, 0, 0, 0}, 1) // 72.0 as float64
	envb, _ = Canonical(&Envelope{Body: nc, Sig: ed25519.Sign(priv, nc)})
	add("non-canonical-float", "72.0 encoded as a 64-bit float instead of the shortest (16-bit) form, correctly signed: rejected", nil, nc, envb, "malformed")

	ni := bytes.Replace(goodBody, []byte{0xf9, 0x54, 0x80}, []byte{0x18, 0x48}, 1) // 72.0 as integer
	envb, _ = Canonical(&Envelope{Body: ni, Sig: ed25519.Sign(priv, ni)})
	add("integer-value", "a sample value encoded as an integer instead of a float, correctly signed: rejected", nil, ni, envb, "malformed")
	return vs
}

// Verifies: REQ-DEV-010, REQ-DEV-011
func TestVectors(t *testing.T) {
	path := filepath.Join("testdata", "vectors.json")
	vs := buildVectors(t)
	if *update {
		b, err := json.MarshalIndent(vs, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read vectors (run go test -run TestVectors -update): %v", err)
	}
	var golden []Vector
	if err := json.Unmarshal(b, &golden); err != nil {
		t.Fatal(err)
	}
	if len(golden) != len(vs) {
		t.Fatalf("vectors.json has %d vectors, the code makes %d (run with -update)", len(golden), len(vs))
	}
	for i, g := range golden {
		if g.Envelope != vs[i].Envelope || g.Body != vs[i].Body || g.UploadHash != vs[i].UploadHash ||
			strings.Join(g.SampleValues, ",") != strings.Join(vs[i].SampleValues, ",") {
			t.Errorf("vector %s: encoding changed from testdata (a wire format change needs a new type version)", g.Name)
		}
		raw, _ := hex.DecodeString(g.Envelope)
		pubb, _ := hex.DecodeString(g.PublicKey)
		u, body, err := Open(raw, ed25519.PublicKey(pubb), Limits{})
		var got string
		switch {
		case err == nil:
			got = "valid"
			h := Hash(body)
			if hex.EncodeToString(h[:]) != g.UploadHash {
				t.Errorf("vector %s: hash = %x, want %s", g.Name, h, g.UploadHash)
			}
			if g.Upload != nil && (u.Seq != g.Upload.Seq || len(u.Samples) != len(g.Upload.Samples)) {
				t.Errorf("vector %s: decoded %+v, want %+v", g.Name, u, g.Upload)
			}
			for j, smp := range u.Samples { // the values' raw bytes, exactly (negative zero too)
				if b, _ := Canonical(smp.Value); j >= len(g.SampleValues) || hex.EncodeToString(b) != g.SampleValues[j] {
					t.Errorf("vector %s: sample %d value encodes as %x, vector says %v", g.Name, j, b, g.SampleValues)
				}
			}
		case errors.Is(err, ErrMalformed):
			got = "malformed"
		case errors.Is(err, ErrBadSignature):
			got = "invalid_signature"
		default:
			got = err.Error()
		}
		if got != g.Expect {
			t.Errorf("Open(vector %s) = %s (%v), want %s", g.Name, got, err, g.Expect)
		}
	}
}
