#!/bin/bash
# The README's two commands on a fresh Debian 12 or 13, on this machine: a new mmdebstrap
# tree of that suite with nothing of the project's (no python3, no sources.list), this
# checkout cloned into its /root/hpcstack, and a command run there as root in its own mount
# and PID namespaces (everything it starts dies with it). Only what every machine of ours
# has is copied in: the CA bundle, pip's settings, apt's date options. The studio images
# are shared, as CI caches them; the Apptainer tree is made fresh inside.
#
#   sudo scripts/fresh-check.sh [SUITE] make                  # a new tree (about 20 s)
#   sudo scripts/fresh-check.sh [SUITE] './scripts/install.sh --demo'
#   sudo scripts/fresh-check.sh [SUITE] 'CI=true ./scripts/test.sh'
#
# SUITE is bookworm (Debian 12, the default) or trixie (Debian 13); each has its own
# tree, /var/tmp/hpcstack-fresh-SUITE (HPCSTACK_FRESH_ROOT overrides it).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUITE=bookworm
case "${1:-}" in
  bookworm|trixie) SUITE=$1; shift ;;
  -*|'') sed -n '2,15p' "$0"; exit 2 ;;
esac
ROOT=${HPCSTACK_FRESH_ROOT:-/var/tmp/hpcstack-fresh-$SUITE}
if [ "${1:-}" = make ]; then
  rm -rf "$ROOT"
  # The host's own mirror, as a deb822 file for SUITE (its -updates and -security too).
  host_sources=$(ls /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1) || true
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list $host_sources 2>/dev/null \
           | sed -nE 's/^URIs: *([^ ]+).*/\1/p; s/^deb +(\[[^]]*\] +)?([^ ]+).*/\2/p' \
           | grep -v security | head -n1) || true
  mirror=${mirror:-http://deb.debian.org/debian}
  sources=$(mktemp --suffix=.sources)
  trap 'rm -f "$sources"' EXIT
  cat > "$sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  mmdebstrap --variant=important --include=ca-certificates,git,sudo \
    --aptopt='Acquire::Check-Valid-Until "false"' "$SUITE" "$ROOT" "$sources"
  cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
  [ ! -f /etc/pip.conf ] || cp /etc/pip.conf "$ROOT/etc/pip.conf"
  cp /etc/apt/apt.conf.d/99* "$ROOT/etc/apt/apt.conf.d/" 2>/dev/null || true
  cp /etc/resolv.conf /etc/hosts "$ROOT/etc/"
  git clone -q "$HERE" "$ROOT/root/hpcstack"
  exit 0
fi
[ -d "$ROOT/root/hpcstack" ] || { echo "no $SUITE tree at $ROOT: run '$0 $SUITE make' first" >&2; exit 2; }
exec unshare --mount --pid --fork --propagation private bash -c '
  set -e
  R=$1; shift
  mount --bind "$R" "$R"  # a mount point, for pivot_root
  mount -t proc proc "$R/proc"
  mount --rbind /sys "$R/sys"
  mount --rbind /dev "$R/dev"
  mount -t tmpfs tmpfs "$R/run"
  mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
  mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
  if [ -d /var/cache/hpcstack/studio-images ]; then
    mkdir -p "$R/var/cache/hpcstack/studio-images"
    mount --bind /var/cache/hpcstack/studio-images "$R/var/cache/hpcstack/studio-images"
  fi
  # pivot_root, not chroot: the kernel refuses user namespaces to a chrooted process.
  mkdir -p "$R/.oldroot"
  cd "$R"
  pivot_root . .oldroot
  exec chroot . env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root TERM=dumb LANG=C.UTF-8 bash -c "umount -l /.oldroot; cd /root/hpcstack && $*"
' bash "$ROOT" "$@"
