package qms

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/options"
	"google.golang.org/protobuf/encoding/protojson"
)

// BundleMediaType is the Sigstore bundle version Vigil writes (v0.3: a public key as
// verification material, no transparency-log entry required).
const BundleMediaType = "application/vnd.dev.sigstore.bundle.v0.3+json"

// ErrSignatureInvalid is returned by VerifyBundle for a bundle that does not verify the
// artefact (a changed byte in either, another key).
var ErrSignatureInvalid = errors.New("signature does not verify")

// SignBundle signs artefact with s (the release-signing key through keys/sigstorekeys) and
// returns a Sigstore bundle (JSON) that `cosign verify-blob --bundle B --key K
// --insecure-ignore-tlog ARTEFACT` accepts: a message signature over the artefact with its
// SHA-256 digest, and the key id as the public-key hint.
//
// The signer is given the SHA-256 digest (options.WithDigest), so only 32 bytes reach the
// key backend whatever the artefact's size (Vault Transit signs it prehashed; ANOM-002);
// the signature is the standard ECDSA P-256 signature over the artefact's SHA-256.
func SignBundle(ctx context.Context, s signature.Signer, keyHint string, artefact []byte) ([]byte, error) {
	digest := sha256.Sum256(artefact)
	sig, err := s.SignMessage(bytes.NewReader(artefact), options.WithDigest(digest[:]), options.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	b := &protobundle.Bundle{
		MediaType: BundleMediaType,
		VerificationMaterial: &protobundle.VerificationMaterial{
			Content: &protobundle.VerificationMaterial_PublicKey{PublicKey: &protocommon.PublicKeyIdentifier{Hint: keyHint}},
		},
		Content: &protobundle.Bundle_MessageSignature{MessageSignature: &protocommon.MessageSignature{
			MessageDigest: &protocommon.HashOutput{Algorithm: protocommon.HashAlgorithm_SHA2_256, Digest: digest[:]},
			Signature:     sig,
		}},
	}
	out, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("encode bundle: %w", err)
	}
	return append(out, '\n'), nil
}

// PublicKeyPEM encodes a public key as a PEM "PUBLIC KEY" block (what cosign --key reads).
func PublicKeyPEM(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// VerifyBundle checks a bundle made by SignBundle against the artefact with the PEM public
// key: media type, the digest of the artefact, and the signature (sigstore's verifier).
func VerifyBundle(bundleJSON, artefact, publicKeyPEM []byte) error {
	var b protobundle.Bundle
	if err := protojson.Unmarshal(bundleJSON, &b); err != nil {
		return fmt.Errorf("%w: bundle: %v", ErrSignatureInvalid, err)
	}
	if b.GetMediaType() != BundleMediaType {
		return fmt.Errorf("%w: media type %q, want %q", ErrSignatureInvalid, b.GetMediaType(), BundleMediaType)
	}
	ms := b.GetMessageSignature()
	if ms == nil || ms.GetMessageDigest().GetAlgorithm() != protocommon.HashAlgorithm_SHA2_256 {
		return fmt.Errorf("%w: not a SHA-256 message signature", ErrSignatureInvalid)
	}
	digest := sha256.Sum256(artefact)
	if !bytes.Equal(ms.GetMessageDigest().GetDigest(), digest[:]) {
		return fmt.Errorf("%w: the artefact's SHA-256 is not the bundle's", ErrSignatureInvalid)
	}
	block, _ := pem.Decode(publicKeyPEM)
	if block == nil {
		return fmt.Errorf("%w: no PEM public key", ErrSignatureInvalid)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return fmt.Errorf("%w: public key: %v", ErrSignatureInvalid, err)
	}
	v, err := signature.LoadVerifier(pub, crypto.SHA256)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrSignatureInvalid, err)
	}
	if err := v.VerifySignature(bytes.NewReader(ms.GetSignature()), bytes.NewReader(artefact)); err != nil {
		return fmt.Errorf("%w: %v", ErrSignatureInvalid, err)
	}
	return nil
}
