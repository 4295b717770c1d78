#!/usr/bin/env bash
# Run the whole test suite against this checkout, installed as a site installs it.
# As root (CI); tests drop to an ordinary user for every build and run.
#   sudo ./scripts/test.sh [PYTEST ARGS...]
set -euo pipefail
PREFIX=${HPCSTACK_PREFIX:-/opt/hpcstack}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ! -x "$PREFIX/bin/pytest" ]; then
  "$HERE/scripts/install.sh"
fi
[ -f "$HERE/src/hpcstack/portal/static/vendor/xterm.js" ] || "$HERE/scripts/portal-assets.sh"
# Test exactly this checkout (not an editable link: users may not read the clone).
"$PREFIX/bin/pip" install -q --no-deps --force-reinstall "$HERE" 2>&1 | grep -v '^WARNING' || true
chmod -R a+rX "$PREFIX"
cd "$HERE"
"$PREFIX/bin/ruff" check .
"$HERE/scripts/apptainer-sid.sh"   # the real Apptainer the tests judge us by (cached)
exec "$PREFIX/bin/pytest" -ra "$@"
