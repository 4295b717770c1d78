#!/usr/bin/env bash
# The short demo: an ordinary user builds examples/hello.def into a SIF without
# root, then runs it. Run as root, it uses $SUDO_USER or creates `hpcdemo`.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
USER_NAME=${SUDO_USER:-hpcdemo}
[ "$USER_NAME" = root ] && USER_NAME=hpcdemo
if [ "$(id -u)" -eq 0 ]; then
  id "$USER_NAME" >/dev/null 2>&1 || useradd -m -s /bin/bash "$USER_NAME"
  home=$(getent passwd "$USER_NAME" | cut -d: -f6)
  install -d -o "$USER_NAME" "$home/hpcstack-demo"
  install -m 644 -o "$USER_NAME" "$HERE/examples/hello.def" "$home/hpcstack-demo/hello.def"
  exec runuser -u "$USER_NAME" -- env -i HOME="$home" USER="$USER_NAME" LOGNAME="$USER_NAME" \
    PATH=/usr/local/bin:/usr/bin:/bin TERM="${TERM:-dumb}" bash "$0"
fi
cd "$HOME/hpcstack-demo" 2>/dev/null || { mkdir -p "$HOME/hpcstack-demo"; cd "$HOME/hpcstack-demo"; cp "$HERE/examples/hello.def" .; }
set -x
hpcstack build --force hello.sif hello.def
hpcstack run hello.sif
hpcstack exec hello.sif sh -c 'echo "$VAR"'
siftool list hello.sif
