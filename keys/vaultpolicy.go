package keys

import (
	"fmt"
	"strings"
)

// VaultRole is a least-privilege role for Vigil's use of Vault Transit.
type VaultRole string

// Roles with their own Vault policy ([VaultPolicy]).
const (
	// VaultRoleServer is what `vigil serve` needs: read key metadata and public keys, sign
	// checkpoints and receipts, MAC webhooks and blind indexes, make and unwrap PHI data
	// keys. It cannot create, rotate, or sign releases.
	VaultRoleServer VaultRole = "server"
	// VaultRoleRelease signs releases (the CI release job) and nothing else.
	VaultRoleRelease VaultRole = "release"
	// VaultRoleAdmin creates and rotates keys and re-wraps PHI data keys (`vigil keys init`,
	// `vigil keys rotate`); it cannot sign, MAC, or decrypt.
	VaultRoleAdmin VaultRole = "admin"
)

// VaultPolicy returns the HCL of the least-privilege Vault policy for a role, for the Transit
// mount and key prefix of [VaultConfig] (defaults "transit" and "vigil-" when empty).
func VaultPolicy(role VaultRole, mount, prefix string) (string, error) {
	if mount == "" {
		mount = "transit"
	}
	mount = strings.Trim(mount, "/")
	if prefix == "" {
		prefix = "vigil-"
	}
	key := func(p Purpose) string { return prefix + string(p) }
	var b strings.Builder
	rule := func(comment, path string, caps ...string) {
		fmt.Fprintf(&b, "# %s\npath %q {\n  capabilities = [%s]\n}\n\n", comment, path, `"`+strings.Join(caps, `", "`)+`"`)
	}
	fmt.Fprintf(&b, "# Vigil %s policy for Vault Transit at %q, keys %q.\n\n", role, mount, prefix+"*")
	switch role {
	case VaultRoleServer:
		for _, p := range Purposes {
			rule("key metadata and public keys: "+string(p), mount+"/keys/"+key(p), "read")
		}
		rule("sign audit checkpoints", mount+"/sign/"+key(AuditCheckpoint), "update")
		rule("sign upload receipts", mount+"/sign/"+key(ReceiptSigning), "update")
		rule("MAC outgoing webhooks", mount+"/hmac/"+key(WebhookHMAC)+"/*", "update")
		rule("blind index of PHI identifiers", mount+"/hmac/"+key(PHIBlindIndex)+"/*", "update")
		rule("new PHI data keys", mount+"/datakey/plaintext/"+key(PHIEncryption), "update")
		rule("unwrap PHI data keys", mount+"/decrypt/"+key(PHIEncryption), "update")
	case VaultRoleRelease:
		rule("key metadata and public key of the release key", mount+"/keys/"+key(ReleaseSigning), "read")
		rule("sign releases", mount+"/sign/"+key(ReleaseSigning), "update")
	case VaultRoleAdmin:
		for _, p := range Purposes {
			rule("create and read the key: "+string(p), mount+"/keys/"+key(p), "create", "read", "update")
			if p != PHIBlindIndex {
				rule("rotate the key: "+string(p), mount+"/keys/"+key(p)+"/rotate", "update")
			}
		}
		rule("re-wrap PHI data keys after a rotation (no plaintext)", mount+"/rewrap/"+key(PHIEncryption), "update")
	default:
		return "", fmt.Errorf("keys: unknown Vault role %q (server, release or admin)", role)
	}
	return strings.TrimRight(b.String(), "\n") + "\n", nil
}
