#!/usr/bin/env bash
# Build sigstore's cosign (v3.1.3) into <repo>/bin, for the tests that check a Vigil release
# with stock cosign (`cosign verify-blob --bundle … --key … --insecure-ignore-tlog`). Builds only
# when bin/cosign is missing or is another version. Cosign is Apache-2.0 licensed; a test-time
# tool, never shipped or committed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$root/bin"
version="v3.1.3"
out="$bin/cosign"
stamp="$bin/.cosign.stamp"

mkdir -p "$bin"
if [[ -x "$out" && -f "$stamp" && "$(cat "$stamp")" == "$version" ]]; then
	echo "tools/cosign: $out $version is present"
	exit 0
fi
echo "tools/cosign: building cosign $version into $bin (first build takes a few minutes)"
# Built outside this module (go install pkg@version uses cosign's own go.mod).
(cd "$bin" && GOBIN="$bin" GOFLAGS=-trimpath go install "github.com/sigstore/cosign/v3/cmd/cosign@$version")
echo "$version" > "$stamp"
"$out" version 2>/dev/null | grep -i gitversion || true
