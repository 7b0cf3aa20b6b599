package envelope

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

// MessageVector is one test vector of testdata/message-vectors.json: an enrollment request,
// a key rotation request or a signed receipt, for implementers in other languages.
type MessageVector struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Kind        string `json:"kind"` // "enroll", "rotate", "receipt"
	// Seeds are the Ed25519 private key seeds (hex) by role: "device" (enroll), "current"
	// and "new" (rotate), "receipt" (Vigil's receipt-signing key).
	Seeds      map[string]string `json:"private_key_seeds_hex"`
	PublicKeys map[string]string `json:"public_keys_hex"`
	// Fields are the body's fields; byte strings are given in hex.
	Fields   map[string]any `json:"fields"`
	Body     string         `json:"canonical_body_hex"`
	BodyDiag string         `json:"canonical_body_diagnostic"`
	Wire     string         `json:"wire_hex"` // the envelope or signed receipt, as sent
	Expect   string         `json:"expect"`   // "valid", "malformed", "invalid_signature"
}

const testReceiptKID = "vigil/receipt-signing/v1"

func buildMessageVectors(t *testing.T) []MessageVector {
	t.Helper()
	dev, cur, next, rk := testKey(7), testKey(7), testKey(8), testKey(9)
	seeds := func(kv ...any) (map[string]string, map[string]string) {
		s, p := map[string]string{}, map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			k := kv[i+1].(ed25519.PrivateKey)
			s[kv[i].(string)] = hex.EncodeToString(k.Seed())
			p[kv[i].(string)] = hex.EncodeToString(k.Public().(ed25519.PublicKey))
		}
		return s, p
	}
	var vs []MessageVector
	add := func(name, desc, kind string, s, p map[string]string, fields map[string]any, body, wire []byte, expect string) {
		diag, _ := cbor.Diagnose(body)
		vs = append(vs, MessageVector{Name: name, Description: desc, Kind: kind, Seeds: s, PublicKeys: p, Fields: fields,
			Body: hex.EncodeToString(body), BodyDiag: diag, Wire: hex.EncodeToString(wire), Expect: expect})
	}
	bodyOf := func(wire []byte) []byte {
		var env struct {
			Body []byte `cbor:"body"`
		}
		if err := cbor.Unmarshal(wire, &env); err != nil {
			t.Fatal(err)
		}
		return env.Body
	}

	// Enrollment.
	const token = "vet_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
	raw, err := SignEnroll(token, dev, testTime)
	if err != nil {
		t.Fatal(err)
	}
	s, p := seeds("device", dev)
	ef := map[string]any{"type": TypeEnroll, "token": token, "pub": p["device"], "t": testTime.UnixMilli()}
	add("enroll", "enrollment request, signed by the key it registers (proof of possession)", "enroll", s, p, ef, bodyOf(raw), raw, "valid")
	eb := bodyOf(raw)
	stranger := testKey(10)
	bad, _ := Canonical(&Envelope{Body: eb, Sig: ed25519.Sign(stranger, eb)})
	add("enroll-not-self-signed", "the same body signed by another key than the one it registers", "enroll", s, p, ef, eb, bad, "invalid_signature")

	// Rotation.
	raw, err = SignRotate(testDevice, 1, cur, next, testTime)
	if err != nil {
		t.Fatal(err)
	}
	s, p = seeds("current", cur, "new", next)
	rf := map[string]any{"type": TypeRotate, "device": testDevice, "kv": 1, "new_pub": p["new"], "t": testTime.UnixMilli()}
	add("rotate", "rotation from key version 1: sig by the current key, new_sig by the new key, over the same body", "rotate", s, p, rf, bodyOf(raw), raw, "valid")
	rb := bodyOf(raw)
	badRot, _ := Canonical(&RotateEnvelope{Body: rb, Sig: ed25519.Sign(cur, rb), NewSig: ed25519.Sign(stranger, rb)})
	add("rotate-new-key-not-proven", "new_sig made by another key than new_pub", "rotate", s, p, rf, rb, badRot, "invalid_signature")

	// Receipts.
	s, p = seeds("receipt", rk)
	u := sampleUpload()
	_, ub, err := Sign(u, dev)
	if err != nil {
		t.Fatal(err)
	}
	h := Hash(ub)
	leaf := int64(17)
	for _, c := range []struct {
		name, desc string
		leaf       *int64
	}{
		{"receipt", "receipt of the upload of vector \"vitals\" (vectors.json), as first answered", nil},
		{"receipt-with-leaf-index", "the same receipt re-issued once the audit event is in the log (leaf_index)", &leaf},
	} {
		r := Receipt{Type: TypeReceipt, Upload: h[:], Device: testDevice, Seq: u.Seq, ServerTime: testTime.UnixMilli() + 1600,
			AuditEvent: "0192f5a0-8000-7000-8000-000000000042", LeafIndex: c.leaf}
		body, err := Canonical(&r)
		if err != nil {
			t.Fatal(err)
		}
		wire, err := (&SignedReceipt{Body: body, Sig: ed25519.Sign(rk, body), KeyID: testReceiptKID}).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		f := map[string]any{"type": TypeReceipt, "upload": hex.EncodeToString(h[:]), "device": testDevice, "seq": u.Seq,
			"server_time": r.ServerTime, "audit_event": r.AuditEvent, "kid": testReceiptKID}
		if c.leaf != nil {
			f["leaf_index"] = *c.leaf
		}
		add(c.name, c.desc, "receipt", s, p, f, body, wire, "valid")
		if c.leaf == nil {
			sig := ed25519.Sign(rk, body)
			sig[5] ^= 0x10
			badWire, _ := (&SignedReceipt{Body: body, Sig: sig, KeyID: testReceiptKID}).Marshal()
			add("receipt-bad-signature", "the first receipt with one bit of the signature flipped", "receipt", s, p, f, body, badWire, "invalid_signature")
		}
	}
	return vs
}

// checkMessageVector runs a vector through the parsers and verifiers and returns the outcome.
func checkMessageVector(v MessageVector) (string, error) {
	wire, _ := hex.DecodeString(v.Wire)
	outcome := func(err error) string {
		switch {
		case err == nil:
			return "valid"
		case errors.Is(err, ErrBadSignature):
			return "invalid_signature"
		case errors.Is(err, ErrMalformed):
			return "malformed"
		}
		return err.Error()
	}
	switch v.Kind {
	case "enroll":
		_, err := ParseEnroll(wire)
		return outcome(err), err
	case "rotate":
		_, env, err := ParseRotate(wire)
		if err == nil {
			pub, _ := hex.DecodeString(v.PublicKeys["current"])
			err = VerifySignature(pub, env.Body, env.Sig)
		}
		return outcome(err), err
	case "receipt":
		sr, _, err := ParseSignedReceipt(wire)
		if err == nil {
			pub, _ := hex.DecodeString(v.PublicKeys["receipt"])
			err = VerifyReceipt(ed25519.PublicKey(pub), sr)
		}
		return outcome(err), err
	}
	return "unknown kind", nil
}

// Verifies: REQ-DEV-135
func TestMessageVectors(t *testing.T) {
	path := filepath.Join("testdata", "message-vectors.json")
	vs := buildMessageVectors(t)
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
		t.Fatalf("read vectors (run go test -run TestMessageVectors -update): %v", err)
	}
	var golden []MessageVector
	if err := json.Unmarshal(b, &golden); err != nil {
		t.Fatal(err)
	}
	if len(golden) != len(vs) {
		t.Fatalf("message-vectors.json has %d vectors, the code makes %d (run with -update)", len(golden), len(vs))
	}
	// The receipts are for the upload of vectors.json's first vector.
	uploads := buildVectors(t)
	for _, g := range golden {
		if g.Kind == "receipt" && g.Fields["upload"] != uploads[0].UploadHash {
			t.Errorf("vector %s: upload %v, want %s (vectors.json %s)", g.Name, g.Fields["upload"], uploads[0].UploadHash, uploads[0].Name)
		}
	}
	for i, g := range golden {
		if g.Wire != vs[i].Wire || g.Body != vs[i].Body {
			t.Errorf("vector %s: encoding changed from testdata (a wire format change needs a new type version)", g.Name)
		}
		if got, err := checkMessageVector(g); got != g.Expect {
			t.Errorf("vector %s (%s) = %s (%v), want %s", g.Name, g.Kind, got, err, g.Expect)
		}
	}
}
