#!/usr/bin/env bash
# Build the transparency-dev witness (cmd/omniwitness, pinned below) into <repo>/bin, for the
# tests that run it as the independent C2SP tlog-witness Vigil submits its checkpoints to
# (audit/chain TestIndependentWitnessCosignsAndRefuses, TestTruncatedLogIsCaughtByTheWitness).
# Builds only when bin/omniwitness is missing or was built from another version (a stamp
# file in bin/ records it). Apache-2.0 licensed; a test-time tool, never committed or shipped.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$root/bin"
version="v0.0.0-20260720115447-2e1c6971d19e"
stamp="$bin/.omniwitness.stamp"

mkdir -p "$bin"
if [[ -x "$bin/omniwitness" && -f "$stamp" && "$(cat "$stamp")" == "$version" ]]; then
	echo "tools/omniwitness: $bin/omniwitness is up to date"
	exit 0
fi
echo "tools/omniwitness: building omniwitness $version into $bin (first build takes a few minutes)"
# Built outside this module (go install pkg@version uses the witness's own go.mod).
(cd "$bin" && GOBIN="$bin" GOFLAGS=-trimpath go install "github.com/transparency-dev/witness/cmd/omniwitness@$version")
echo "$version" > "$stamp"
