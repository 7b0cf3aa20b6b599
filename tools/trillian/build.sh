#!/usr/bin/env bash
# Build Trillian's own log server and log signer (v1.8.0) into <repo>/bin, for the tests of
# Vigil's external-Trillian mode (audit: --trillian-addr). Builds only the binaries that are
# missing. Trillian is Apache-2.0 licensed; these are test-time tools, never committed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$root/bin"
version="v1.8.0"

mkdir -p "$bin"
for cmd in trillian_log_server trillian_log_signer; do
	if [[ -x "$bin/$cmd" ]]; then
		echo "tools/trillian: $bin/$cmd is present"
		continue
	fi
	echo "tools/trillian: building $cmd $version into $bin (first build takes a few minutes)"
	# Built outside this module (go install pkg@version uses Trillian's own go.mod).
	(cd "$bin" && GOBIN="$bin" GOFLAGS=-trimpath go install "github.com/google/trillian/cmd/$cmd@$version")
done
