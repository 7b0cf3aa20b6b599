package envelope

import (
	"crypto/ed25519"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/oasisprotocol/curve25519-voi/curve"
	"github.com/oasisprotocol/curve25519-voi/curve/scalar"
)

// smallOrder are encodings of the eight points of order dividing 8, some in non-canonical
// forms too ("Taming the many EdDSAs", Chalkias et al., 2020, table 6).
var smallOrder = []string{
	"0100000000000000000000000000000000000000000000000000000000000000", // identity
	"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // order 2
	"0000000000000000000000000000000000000000000000000000000000000000", // order 4
	"0000000000000000000000000000000000000000000000000000000000000080", // order 4, x sign set
	"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05", // order 8
	"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a", // order 8
	"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85", // order 8
	"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", // order 8
	"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // identity, y = p + 1 (non-canonical)
	"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // y = p (non-canonical 0)
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sameVerdict fails the test when the Verifier and crypto/ed25519.Verify disagree.
func sameVerdict(t testing.TB, name string, pub, msg, sig []byte) bool {
	t.Helper()
	want := len(pub) == ed25519.PublicKeySize && ed25519.Verify(pub, msg, sig)
	v, err := NewVerifier(pub)
	if len(pub) != ed25519.PublicKeySize {
		if err == nil {
			t.Errorf("%s: NewVerifier accepted a %d-byte key", name, len(pub))
		}
		return false
	}
	if err != nil {
		t.Fatalf("%s: NewVerifier: %v", name, err)
	}
	got := v.Verify(msg, sig) == nil
	if got != want {
		t.Errorf("%s: Verifier says %v, crypto/ed25519 says %v (pub %x sig %x)", name, got, want, pub, sig)
	}
	return got
}

// craft signs msg with secret scalar a for the public point A (which may carry a torsion
// component) and a nonce point R = r·B + T, computing S = r + H(R‖A‖msg)·a like an honest
// signer would: the cofactorless equation holds only when the torsion parts cancel.
func craft(t *testing.T, a, r *scalar.Scalar, torsionA, torsionR string, msg []byte) (pub, sig []byte) {
	t.Helper()
	point := func(s *scalar.Scalar, torsion string) []byte {
		p := curve.NewEdwardsPoint().MulBasepoint(curve.ED25519_BASEPOINT_TABLE, s)
		if torsion != "" {
			c, err := curve.NewCompressedEdwardsYFromBytes(mustHex(t, torsion))
			if err != nil {
				t.Fatal(err)
			}
			tp, err := curve.NewEdwardsPoint().SetCompressedY(c)
			if err != nil {
				t.Fatal(err)
			}
			p.Add(p, tp)
		}
		b, _ := curve.NewCompressedEdwardsY().SetEdwardsPoint(p).MarshalBinary()
		return b
	}
	A, R := point(a, torsionA), point(r, torsionR)
	h := sha512.New()
	h.Write(R)
	h.Write(A)
	h.Write(msg)
	k, err := scalar.NewFromBytesModOrderWide(h.Sum(nil))
	if err != nil {
		t.Fatal(err)
	}
	S := scalar.New().Mul(k, a)
	S.Add(S, r)
	sb, _ := S.MarshalBinary()
	return A, append(R, sb...)
}

// Verifies: REQ-DEV-012
// TestVerifierMatchesStdlib checks that the fast Verifier accepts and refuses exactly what
// crypto/ed25519.Verify does: honest signatures, every single-bit corruption, non-canonical
// S, small-order and non-canonical A and R, mixed-order A and R (where the cofactored and
// cofactorless equations differ), keys that are not points, and the published test vectors.
func TestVerifierMatchesStdlib(t *testing.T) {
	priv := testKey(7)
	pub := priv.Public().(ed25519.PublicKey)
	msg := []byte("vigil verifier test message")
	sig := ed25519.Sign(priv, msg)
	if !sameVerdict(t, "honest", pub, msg, sig) {
		t.Fatal("an honest signature was refused")
	}
	for i := 0; i < len(sig)*8; i++ {
		bad := append([]byte(nil), sig...)
		bad[i/8] ^= 1 << (i % 8)
		if sameVerdict(t, "sig bit flip", pub, msg, bad) {
			t.Errorf("bit %d flipped in the signature was accepted", i)
		}
	}
	for i := 0; i < len(pub)*8; i++ {
		badPub := append([]byte(nil), pub...)
		badPub[i/8] ^= 1 << (i % 8)
		sameVerdict(t, "key bit flip", badPub, msg, sig)
	}
	sameVerdict(t, "other message", pub, []byte("another message"), sig)
	sameVerdict(t, "short signature", pub, msg, sig[:63])
	sameVerdict(t, "short key", pub[:31], msg, sig)

	// S + L: the same signature with a non-canonical scalar (must be refused).
	L := mustHex(t, "edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010")
	sPlusL := append([]byte(nil), sig...)
	carry := 0
	for i := 0; i < 32; i++ {
		v := int(sPlusL[32+i]) + int(L[i]) + carry
		sPlusL[32+i], carry = byte(v), v>>8
	}
	if sameVerdict(t, "S+L", pub, msg, sPlusL) {
		t.Error("a non-canonical S was accepted")
	}

	// Small-order keys and nonces, with S = 0: R + k·A = 0·B holds for small-order A and R
	// whenever k·A = -R, e.g. identity and identity — crypto/ed25519 accepts some of these.
	zero := make([]byte, 32)
	for _, a := range smallOrder {
		for _, r := range smallOrder {
			sameVerdict(t, "small-order A and R", mustHex(t, a), msg, append(mustHex(t, r), zero...))
		}
		sameVerdict(t, "small-order A, honest sig", mustHex(t, a), msg, sig)
	}

	// Mixed-order A and R: the honest equation plus a torsion component in A, R or both.
	a, _ := scalar.NewFromUint64(0x1234567).MarshalBinary()
	as, _ := scalar.NewFromBytesModOrder(a)
	r := scalar.NewFromUint64(0x7654321)
	for _, ta := range append([]string{""}, smallOrder[:8]...) {
		for _, tr := range append([]string{""}, smallOrder[:8]...) {
			p, s := craft(t, as, r, ta, tr, msg)
			got := sameVerdict(t, "mixed order A="+ta+" R="+tr, p, msg, s)
			if ta == "" && tr == "" && !got {
				t.Error("a crafted honest signature was refused")
			}
		}
	}

	// Thousands of random 32-byte keys: most are not points at all.
	for i := 0; i < 2000; i++ {
		k := sha512.Sum512([]byte{byte(i), byte(i >> 8)})
		sameVerdict(t, "random key", k[:32], msg, sig)
	}

	// The published vectors: the Verifier opens every valid one.
	b, err := os.ReadFile(filepath.Join("testdata", "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var vs []Vector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	for _, vec := range vs {
		raw := mustHex(t, vec.Envelope)
		env, err := ParseEnvelope(raw, Limits{})
		if err != nil {
			continue
		}
		got := sameVerdict(t, "vector "+vec.Name, mustHex(t, vec.PublicKey), env.Body, env.Sig)
		if vec.Expect == "valid" && !got {
			t.Errorf("vector %s: a valid vector was refused", vec.Name)
		}
	}
}

// Verifies: REQ-DEV-012
// FuzzVerifierMatchesStdlib: on any key, message and signature the fast Verifier and
// crypto/ed25519.Verify give the same verdict.
func FuzzVerifierMatchesStdlib(f *testing.F) {
	priv := testKey(7)
	msg := []byte("seed")
	f.Add([]byte(priv.Public().(ed25519.PublicKey)), msg, ed25519.Sign(priv, msg))
	for _, s := range smallOrder {
		b, _ := hex.DecodeString(s)
		f.Add(b, msg, append(append([]byte(nil), b...), make([]byte, 32)...))
	}
	f.Fuzz(func(t *testing.T, pub, msg, sig []byte) {
		sameVerdict(t, "fuzz", pub, msg, sig)
	})
}
