#!/usr/bin/env bash
# The U2CB portal's browser libraries: xterm.js and its fit addon from npm, at the
# versions package-lock.json pins, copied where the portal serves them
# (src/hpcstack/portal/static/vendor, packaged with hpcstack). Run at install time,
# where the npm registry is reachable; the portal host itself needs no network.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WEB=$HERE/src/hpcstack/portal/web
VENDOR=$HERE/src/hpcstack/portal/static/vendor
command -v npm >/dev/null || { echo "portal-assets.sh: npm not found (apt-get install npm)" >&2; exit 1; }
npm ci --prefix "$WEB" --no-audit --no-fund --silent
tmp=$(mktemp -d "$HERE/src/hpcstack/portal/static/.vendor.XXXXXX")
cp "$WEB/node_modules/@xterm/xterm/lib/xterm.js" "$WEB/node_modules/@xterm/xterm/css/xterm.css" \
   "$WEB/node_modules/@xterm/addon-fit/lib/addon-fit.js" "$tmp/"
cp "$WEB/node_modules/@xterm/xterm/LICENSE" "$tmp/LICENSE.xterm"
chmod 755 "$tmp"
rm -rf "$VENDOR"
mv "$tmp" "$VENDOR"
echo "==> portal assets: $(cd "$VENDOR" && ls | tr '\n' ' ')"
