#!/bin/bash
# The README's two commands on a fresh Debian 12, on this machine: a new mmdebstrap tree
# with nothing of the project's (no python3, no sources.list), this checkout cloned into
# its /root/hpcstack, and a command run there as root in its own mount and PID namespaces
# (everything it starts dies with it). Only what every machine of ours has is copied in:
# the CA bundle, pip's settings, apt's date options. The studio images are shared, as CI
# caches them; the Apptainer tree is made fresh inside.
#
#   sudo scripts/fresh-check.sh make                       # a new tree (about 20 s)
#   sudo scripts/fresh-check.sh './scripts/install.sh --demo'
#   sudo scripts/fresh-check.sh 'CI=true ./scripts/test.sh'
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${HPCSTACK_FRESH_ROOT:-/var/tmp/hpcstack-fresh}
if [ "${1:-}" = make ]; then
  rm -rf "$ROOT"
  sources=$(ls /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n1) || true
  mmdebstrap --variant=important --include=ca-certificates,git,sudo \
    --aptopt='Acquire::Check-Valid-Until "false"' bookworm "$ROOT" ${sources:+"$sources"}
  cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
  [ ! -f /etc/pip.conf ] || cp /etc/pip.conf "$ROOT/etc/pip.conf"
  cp /etc/apt/apt.conf.d/99* "$ROOT/etc/apt/apt.conf.d/" 2>/dev/null || true
  cp /etc/resolv.conf /etc/hosts "$ROOT/etc/"
  git clone -q "$HERE" "$ROOT/root/hpcstack"
  exit 0
fi
[ -d "$ROOT/root/hpcstack" ] || { echo "no tree at $ROOT: run '$0 make' first" >&2; exit 2; }
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
