// Command vault builds the HashiCorp Vault server from the Go module proxy so
// that Vigil's tests can run the keys conformance suite against a real Vault
// dev server. It is a test-time tool only; it is never shipped with Vigil
// (Vault is licensed under BUSL-1.1, see README.md).
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() {
	os.Exit(command.Run(os.Args[1:]))
}
