#!/usr/bin/env bash
# Apptainer 1.4 for the tests, from Debian sid in a tree of its own.
#
# Debian 12 has no Apptainer, and sid's binary needs glibc >= 2.38, so it runs
# from a sid tree (made once per machine with mmdebstrap, reused afterwards).
# Entering the tree takes root (a private mount namespace and pivot_root), so
# an ordinary user reaches it through a shim:
#
#   $ROOT/../apptainer-shim/apptainer ARGS   (put that folder first on PATH)
#     -> sudo -n apptainer-enter USER CWD PATH ARGS   (a rule for this one script)
#     -> unshare --mount, pivot_root into the tree, runuser -u USER -- apptainer ARGS
#
# ($LIBEXEC/apptainer-sid-run CMD runs any command there the same way), so
# Apptainer itself always runs as the calling user, unprivileged (it needs
# the user's subordinate ID ranges for --fakeroot, as on any site). The shim
# is not on anyone's PATH by default: `hpcstack build --engine auto` must keep
# choosing the builtin engine unless a test asks for Apptainer.
#
#   sudo ./scripts/apptainer-sid.sh           make (or check) the tree and the shim
#   sudo ./scripts/apptainer-sid.sh --force   make the tree again
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${HPCSTACK_APPTAINER_CACHE:-/var/cache/hpcstack}
ROOT=$CACHE/apptainer-sid
LIBEXEC=/usr/local/libexec/hpcstack
PACKAGES=apptainer,squashfuse,fuse2fs,debootstrap,ca-certificates,mount

if [ "$(id -u)" -ne 0 ]; then
  echo "apptainer-sid.sh: run as root" >&2; exit 1
fi
if [ "${1:-}" = --force ]; then rm -rf "$ROOT"; fi

command -v sudo >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends sudo >/dev/null
}

if [ ! -x "$ROOT/usr/bin/apptainer" ]; then
  # The host's own Debian mirror (deb822 or one-line sources); sid's Release
  # file there may be past its Valid-Until date.
  # Only files apt reads (a fresh Debian 12 or 13 may have no sources.list at all).
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
               /etc/apt/sources.list.d/*.sources 2>/dev/null \
           | sed -nE 's/^URIs: *([^ ]+).*/\1/p; s/^deb +(\[[^]]*\] +)?([^ ]+).*/\2/p' \
           | grep -v security | head -n1) || true
  mirror=${mirror:-http://deb.debian.org/debian}
  echo "==> Apptainer from Debian sid ($mirror) into $ROOT"
  mkdir -p "$CACHE"
  rm -rf "$ROOT.new"
  mmdebstrap --quiet --variant=apt --aptopt='Acquire::Check-Valid-Until "false"' \
    --include="$PACKAGES" --mode=root sid "$ROOT.new" \
    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main"
  mv "$ROOT.new" "$ROOT"
fi

install -d -m 0755 "$LIBEXEC" "$LIBEXEC/apptainer-shim"
sed "s|@ROOT@|$ROOT|" "$HERE/apptainer/enter.sh" > "$LIBEXEC/apptainer-enter.new"
install -m 0755 "$LIBEXEC/apptainer-enter.new" "$LIBEXEC/apptainer-enter"
rm -f "$LIBEXEC/apptainer-enter.new"
install -m 0755 "$HERE/apptainer/shim.sh" "$LIBEXEC/apptainer-shim/apptainer"
install -m 0755 "$HERE/apptainer/run.sh" "$LIBEXEC/apptainer-sid-run"
echo "ALL ALL=(root) NOPASSWD:SETENV: $LIBEXEC/apptainer-enter" > /etc/sudoers.d/hpcstack-apptainer
chmod 0440 /etc/sudoers.d/hpcstack-apptainer
echo "==> $("$LIBEXEC/apptainer-shim/apptainer" --version 2>/dev/null || echo 'apptainer: not runnable') (shim: $LIBEXEC/apptainer-shim)"
