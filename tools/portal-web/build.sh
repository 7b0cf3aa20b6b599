#!/usr/bin/env bash
# Install the portal's front-end packages (portal/web: htmx.org and uplot at the versions
# pinned in its package-lock.json) into its git-ignored node_modules with `npm ci`, which
# checks each tarball against the lock's sha512 integrity and keeps it in npm's cache, where
# TestVendoredAssets compares the committed portal/web/vendor files with it byte for byte.
# Skipped when node_modules already matches the lock file. Needs npm (.ci/ensure-interop).
# It never changes the committed files: `make portal-assets` copies them after an upgrade.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="$(cd "$here/../../portal/web" && pwd)"
stamp="$dir/node_modules/.vigil-lock.sha256"
want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
	echo "tools/portal-web: $dir/node_modules is up to date"
	exit 0
fi
echo "tools/portal-web: npm ci in $dir"
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
echo "$want" >"$stamp"
