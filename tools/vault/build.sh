#!/usr/bin/env bash
# Build the Vault server used by Vigil's tests into <repo>/bin/vault.
# Rebuilds only when bin/vault is missing or tools/vault/go.sum changed
# (a stamp file in bin/ records the go.sum hash of the last build).
# Vault is BUSL-1.1 licensed: a test-time tool, never shipped (see README.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$root/bin"
out="$bin/vault"
stamp="$bin/.vault.stamp"

mkdir -p "$bin"
# (the files' contents only: the same sources in another checkout are up to date too)
want="$(cat "$here/go.sum" "$here/go.mod" "$here/main.go" | sha256sum | cut -d' ' -f1)"
if [[ -x "$out" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
	echo "tools/vault: $out is up to date"
	exit 0
fi

echo "tools/vault: building $out (first build takes several minutes)"
cd "$here"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
go build -trimpath -ldflags='-s -w' -o "$tmp" .
mv -f "$tmp" "$out"
echo "$want" > "$stamp"
"$out" version
