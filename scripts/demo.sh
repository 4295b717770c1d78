#!/usr/bin/env bash
# The short demo, run by `install.sh --demo` (as root):
#   1. starts the U2CB build service from its systemd unit (u2cb.service, installed by
#      install.sh) as the unprivileged account `u2cb`, with the settings in
#      /etc/hpcstack/u2cb.yaml (MUNGE identity, SQLite, local builds by default):
#      `systemctl enable --now u2cb` where systemd is PID 1, else the same unit through
#      scripts/u2cb-fallback.sh;
#   2. as an ordinary user ($SUDO_USER, or `hpcdemo`): builds examples/hello.def
#      into a SIF without root and runs it; then builds it again through the
#      service with `u2cb defcreate`, lists it and downloads it.
# The service keeps running afterwards: `systemctl stop u2cb`, or where systemd is not
# PID 1 `scripts/u2cb-fallback.sh stop` (`hpcstack serve --stop` as the account).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UNIT=/etc/systemd/system/u2cb.service

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: run as root (it starts munged and the service account)" >&2
  exit 1
fi

# MUNGE: cluster identity, so users need no password.
if ! runuser -u nobody -- munge -n </dev/null >/dev/null 2>&1; then
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
fi

# Builds and connect shells get their network through /dev/net/tun (pasta, in each
# build's jail); distributions ship it mode 0666, these VMs 0600.
chmod 0666 /dev/net/tun

# The service, as its own unprivileged account (install.sh made it and the unit).
if [ -d /run/systemd/system ]; then  # systemd is PID 1
  systemctl daemon-reload
  systemctl enable --now u2cb
  STOP="systemctl stop u2cb"
  URL=$("$HERE/scripts/u2cb-fallback.sh" url "$UNIT")
  for _ in $(seq 50); do curl -fsS "$URL" >/dev/null 2>&1 && break; sleep 0.2; done
else
  "$HERE/scripts/u2cb-fallback.sh" start "$UNIT"
  STOP="$HERE/scripts/u2cb-fallback.sh stop"
  URL=$("$HERE/scripts/u2cb-fallback.sh" url "$UNIT")
fi
SERVER=${URL%/api/v1/health}
echo "==> U2CB service on $SERVER (API docs: /api/v1/docs, settings: hpcstack serve --print-config)"

USER_NAME=${SUDO_USER:-hpcdemo}
[ "$USER_NAME" = root ] && USER_NAME=hpcdemo
id "$USER_NAME" >/dev/null 2>&1 || useradd -m -s /bin/bash "$USER_NAME"
home=$(getent passwd "$USER_NAME" | cut -d: -f6)
install -d -o "$USER_NAME" "$home/hpcstack-demo"
install -m 644 -o "$USER_NAME" "$HERE/examples/hello.def" "$home/hpcstack-demo/hello.def"

runuser -u "$USER_NAME" -- env -i HOME="$home" USER="$USER_NAME" LOGNAME="$USER_NAME" \
  PATH=/usr/local/bin:/usr/bin:/bin TERM="${TERM:-dumb}" U2CB_SERVER="$SERVER" \
  bash -euc '
cd "$HOME/hpcstack-demo"
set -x
hpcstack build --force hello.sif hello.def
hpcstack run hello.sif
hpcstack exec hello.sif sh -c "echo \$VAR"
siftool list hello.sif
u2cb delete -n hello >/dev/null 2>&1 || true
u2cb defcreate -n hello -d hello.def
u2cb list
u2cb download -n hello -o hello-u2cb.sif
hpcstack run hello-u2cb.sif
'
echo "==> demo done; the U2CB service keeps running (stop it: $STOP)"
