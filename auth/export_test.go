package auth

import "context"

// VerifyIDToken exposes the ID-token check to tests that present tokens obtained from another
// (real) provider or client, as an attacker would.
func (rp *RelyingParty) VerifyIDToken(ctx context.Context, raw, nonce string) string {
	_, reason := rp.verify(ctx, raw, nonce)
	return reason
}
