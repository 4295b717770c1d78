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
# The tests run commands as ordinary users that read this checkout (helpers, examples,
# site files). A checkout they cannot reach, such as a clone under /root (mode 0700),
# is tested from a copy they can read.
if ! runuser -u nobody -- test -r "$HERE/tests/conftest.py"; then
  copy=/var/tmp/hpcstack-checkout
  echo "==> $HERE is not readable by ordinary users: testing a copy in $copy"
  rm -rf "$copy" && mkdir -p "$copy"
  tar -C "$HERE" --exclude=./.git -cf - . | tar -C "$copy" -xf -
  chmod -R a+rX "$copy"
  HERE=$copy
fi
[ -f "$HERE/src/hpcstack/portal/static/vendor/xterm.js" ] || "$HERE/scripts/portal-assets.sh"
# Test exactly this checkout (not an editable link: users may not read the clone).
"$PREFIX/bin/pip" install -q --no-deps --force-reinstall "$HERE" 2>&1 | grep -v '^WARNING' || true
chmod -R a+rX "$PREFIX"
cd "$HERE"
"$PREFIX/bin/ruff" check .
"$HERE/scripts/apptainer-sid.sh"   # the real Apptainer the tests judge us by (cached)
exec "$PREFIX/bin/pytest" -ra "$@"
