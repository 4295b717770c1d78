#!/bin/bash
# Run as root by sudo from the apptainer shim: a private mount namespace whose
# root is the sid tree, with the host's /proc /sys /dev and the users' folders,
# then apptainer as the calling user (with --run first: any command, as that user,
# in the tree; benchmarks time Apptainer there without this hop). Made by
# scripts/apptainer-sid.sh.
set -euo pipefail
ROOT=@ROOT@
user=$1 cwd=$2 path=$3; shift 3
if [ -z "${SUDO_USER:-}" ] || [ "$user" != "$SUDO_USER" ]; then
  echo "apptainer-enter: run through the apptainer shim" >&2; exit 2
fi
prog=apptainer
if [ "${1:-}" = --run ]; then prog=; shift; fi
unset SUDO_USER SUDO_UID SUDO_GID SUDO_COMMAND SUDO_HOME
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
exec unshare --mount --propagation private /bin/bash -s -- "$ROOT" "$user" "$cwd" "$path" "$prog" "$@" <<'INNER'
set -euo pipefail
root=$1 user=$2 cwd=$3 path=$4 prog=$5; shift 5
mount --bind "$root" "$root"
for d in proc sys dev home tmp var/tmp run opt srv mnt; do
  if [ -d "/$d" ]; then mkdir -p "$root/$d"; mount --rbind "/$d" "$root/$d"; fi
done
# The host's files bound over the tree's, in this namespace only: copying them into
# the shared tree raced with concurrent entries (one MPI rank each), which then
# read a half-written /etc/passwd ("runuser: user ... does not exist").
for f in passwd group subuid subgid hosts localtime resolv.conf; do
  [ -e "/etc/$f" ] || continue
  [ -e "$root/etc/$f" ] || [ -L "$root/etc/$f" ] || : > "$root/etc/$f"
  [ -f "$root/etc/$f" ] && [ ! -L "$root/etc/$f" ] && mount --bind "$(readlink -f "/etc/$f")" "$root/etc/$f"
done
cd "$root"; mkdir -p .oldroot; pivot_root . .oldroot; umount -l /.oldroot
cd "$cwd" 2>/dev/null || cd /
exec runuser -u "$user" -- /usr/bin/env PATH="$path" ${prog:+"$prog"} "$@"
INNER
