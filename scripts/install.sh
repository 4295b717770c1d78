#!/usr/bin/env bash
# Install hpcstack for every user of this Debian 12 or 13 machine, as a site would:
# the system packages it drives, and a virtual environment in /opt/hpcstack
# made from Debian's /usr/bin/python3 (readable by everyone), with `hpcstack`
# linked into /usr/local/bin. Idempotent: run it again after an update.
#
#   sudo ./scripts/install.sh           install
#   sudo ./scripts/install.sh --demo    install, start the U2CB service, run the demo
#                                       as an ordinary user
set -euo pipefail

PREFIX=${HPCSTACK_PREFIX:-/opt/hpcstack}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO=0
for arg in "$@"; do
  case "$arg" in
    --demo) DEMO=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo), it installs system packages" >&2
  exit 1
fi

# Debian 12 (bookworm) or 13 (trixie); docs/debian.md says what differs between them.
. /etc/os-release 2>/dev/null || true
case "${ID:-}:${VERSION_ID:-}" in
  debian:12) RELEASE_PACKAGES=() ;;
  # buildah 1.39 needs Podman's network backend before it runs any RUN step (Debian 12's
  # buildah 1.28 uses the CNI plugins it depends on).
  debian:13) RELEASE_PACKAGES=(netavark) ;;
  *) echo "install.sh: ${PRETTY_NAME:-this system} is not Debian 12 or 13, the releases" \
          "hpcstack installs on (docs/debian.md)" >&2
     exit 1 ;;
esac

PACKAGES=(
  python3 python3-venv                    # the site's Python for hpcstack
  util-linux uidmap                       # unshare --map-auto, newuidmap: fakeroot
  mmdebstrap debian-archive-keyring       # Bootstrap: debootstrap
  skopeo umoci                            # Bootstrap: docker / oci
  buildah runc                            # catalog build --format oci: Dockerfiles, rootless, pushed to the site registry
  squashfs-tools squashfuse fuse3 siftool # packing and reading images
  charliecloud bubblewrap                 # the runtime that runs here
  docker-registry openssl                 # a local registry for tests and sites
  procps ca-certificates tar curl
  lmod tcl slurm-wlm munge openmpi-bin     # container modules: Lmod (+ tclsh for modulecmd.tcl), Slurm + MUNGE, host MPI
  libpmix-dev                             # srun --mpi=pmix: Slurm's PMIx plugin dlopens the unversioned libpmix.so
  passt                                   # U2CB jails: pasta, user-mode networking without the host's loopback
  postgresql                              # U2CB: PostgreSQL for the storage tests (SQLite is the default)
  hpcc libopenblas0-serial                # hpcstack bench: HPC Challenge with OpenBLAS (the same build goes in its image)
  ruby chromium chromium-driver           # studio tests: OOD's ERB (erb), headless Chromium for the Jupyter page
  logrotate                               # rotates the usage records of container apps (logrotate/)
  systemd strace                          # tests: systemd-analyze verify of the units; no fork in a wrapper
  nodejs                                  # U2CB portal: its Passenger launcher (app.js); npm brings xterm.js
)
missing=()
for p in "${PACKAGES[@]}" "${RELEASE_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian docker-registry package starts a registry on :5000; hpcstack's tests
# start their own, and a site configures its own.
systemctl disable --now docker-registry >/dev/null 2>&1 || true
# Debian's npm is its own package; NodeSource's nodejs carries npm itself.
command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
"$HERE/scripts/portal-assets.sh"          # xterm.js into the package, before pip copies it

echo "==> $PREFIX (Python $(/usr/bin/python3 -V | cut -d' ' -f2))"
if [ ! -x "$PREFIX/bin/python" ]; then
  /usr/bin/python3 -m venv "$PREFIX"
fi
"$PREFIX/bin/pip" install -q --upgrade pip
"$PREFIX/bin/pip" install -q "$HERE[test]"
chmod -R a+rX "$PREFIX"
for cmd in hpcstack u2cb; do
  ln -sf "$PREFIX/bin/$cmd" "/usr/local/bin/$cmd"
done
echo "==> $("$PREFIX/bin/hpcstack" version) installed; try: hpcstack --help"

# The U2CB service: its account (useradd -m gives it subordinate IDs), its systemd units,
# and a settings file listing every setting and its default, all commented out.
id u2cb >/dev/null 2>&1 || useradd -m -s /bin/bash u2cb
install -m 0644 "$HERE"/systemd/u2cb.service "$HERE"/systemd/u2cb@.service /etc/systemd/system/
install -d -m 0755 /etc/hpcstack
if [ ! -e /etc/hpcstack/u2cb.yaml ]; then
  u2cb_home=$(getent passwd u2cb | cut -d: -f6)
  { echo "# U2CB settings (hpcstack serve; docs/u2cb.md). Every key with its default;"
    echo "# uncomment one to change it. \$U2CB_KEY and flags override this file."
    runuser -u u2cb -- env -i HOME="$u2cb_home" "$PREFIX/bin/hpcstack" serve \
      --config /dev/null --print-config | sed '1d; s/^\([a-z]\)/# \1/; s/  *# default$//'
  } > /etc/hpcstack/u2cb.yaml.new
  mv /etc/hpcstack/u2cb.yaml.new /etc/hpcstack/u2cb.yaml
fi
install -m 0644 "$HERE"/logrotate/hpcstack-usage /etc/logrotate.d/hpcstack-usage
[ -d /run/systemd/system ] && systemctl daemon-reload
echo "==> U2CB service: systemctl enable --now u2cb (settings: /etc/hpcstack/u2cb.yaml)"

if [ "$DEMO" = 1 ]; then
  exec "$HERE/scripts/demo.sh"
fi
