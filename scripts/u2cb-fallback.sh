#!/usr/bin/env bash
# Run the U2CB unit where systemd is not PID 1 (containers, some CI machines): the
# unit's own User=, Environment=, WorkingDirectory= and ExecStart=, read from the unit
# file, with the environment systemd gives a User= service (HOME, USER, LOGNAME, SHELL)
# and nothing else.  As root:
#   u2cb-fallback.sh start [UNIT]   start it in the background (log: $U2CB_FALLBACK_LOG,
#                                   default /var/log/u2cb.log); wait until it answers
#   u2cb-fallback.sh stop [UNIT]    ExecStart with --stop: `hpcstack serve --stop` as the
#                                   account (a clean stop; builds are re-queued)
#   u2cb-fallback.sh argv [UNIT]    print the environment and command start runs
#   u2cb-fallback.sh url [UNIT]     print the service's health URL (from its settings)
# UNIT defaults to the installed /etc/systemd/system/u2cb.service.
set -euo pipefail
ACTION=${1:-}
UNIT=${2:-/etc/systemd/system/u2cb.service}
LOG=${U2CB_FALLBACK_LOG:-/var/log/u2cb.log}

die() { echo "u2cb-fallback.sh: $*" >&2; exit 1; }
case "$ACTION" in start|stop|argv|url) ;; *) die "usage: u2cb-fallback.sh start|stop|argv|url [UNIT]" ;; esac
[ "$(id -u)" -eq 0 ] || die "run as root (it starts the service as the unit's User=)"
[ -r "$UNIT" ] || die "$UNIT: no such unit file"
# The subset of unit syntax the shipped units use: no quotes, specifiers or continuations.
if grep -Eq '^(User|Environment|WorkingDirectory|ExecStart)=.*(["'\''%\\])' "$UNIT"; then
  die "$UNIT: quotes, % specifiers or backslashes in User/Environment/WorkingDirectory/ExecStart: start it with systemd"
fi

value() { sed -n "s/^$1=//p" "$UNIT" | tail -n 1; }  # the last assignment wins, as in systemd
user=$(value User)
[ -n "$user" ] || die "$UNIT: no User="
entry=$(getent passwd "$user") || die "$UNIT: User=$user: no such account"
home=$(cut -d: -f6 <<<"$entry")
shell=$(cut -d: -f7 <<<"$entry")
workdir=$(value WorkingDirectory)
case "$workdir" in "~") workdir=$home ;; "") workdir=/ ;; esac
environment=(HOME="$home" USER="$user" LOGNAME="$user" SHELL="$shell")
while read -r line; do
  read -ra words <<<"$line"
  environment+=("${words[@]}")
done < <(sed -n 's/^Environment=//p' "$UNIT")
read -ra command <<<"$(value ExecStart)"
[ ${#command[@]} -gt 0 ] || die "$UNIT: no ExecStart="

as_account() { (cd "$workdir" && runuser -u "$user" -- env -i "${environment[@]}" "$@"); }

health_url() {  # where the service these settings describe answers
  local settings host port
  settings=$(as_account "${command[@]}" --print-config) || exit 1  # its one-line error shown
  host=$(sed -n 's/^host: \([^ ]*\).*/\1/p' <<<"$settings")
  port=$(sed -n 's/^port: \([0-9]*\).*/\1/p' <<<"$settings")
  case "$host" in 0.0.0.0|::|"") host=127.0.0.1 ;; *:*) host="[$host]" ;; esac
  echo "http://$host:$port/api/v1/health"
}

case "$ACTION" in
  argv)
    printf 'user=%s\nworkdir=%s\n' "$user" "$workdir"
    printf 'env=%s\n' "${environment[@]}"
    printf 'argv=%s\n' "${command[@]}"
    ;;
  url)
    health_url || exit 1
    ;;
  stop)
    as_account "${command[@]}" --stop
    ;;
  start)
    url=$(health_url) || exit 1
    if curl -fsS "$url" >/dev/null 2>&1; then
      echo "u2cb: already answering at $url"
      exit 0
    fi
    touch "$LOG" && chown "$user" "$LOG"
    before=$(stat -c %s "$LOG")
    as_account setsid "${command[@]}" >>"$LOG" 2>&1 </dev/null &
    for _ in $(seq 100); do
      curl -fsS "$url" >/dev/null 2>&1 && { echo "u2cb: started, answering at $url (log: $LOG)"; exit 0; }
      error=$(tail -c +"$((before + 1))" "$LOG" | grep -m1 '^hpcstack: error: ' || true)
      [ -z "$error" ] || die "the service did not start: ${error#hpcstack: error: }"
      sleep 0.2
    done
    die "the service did not answer at $url; its log, $LOG, ends with: $(tail -n 3 "$LOG")"
    ;;
esac
