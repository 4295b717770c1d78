#!/bin/sh
# The reference for benchmarks/build.py: what `hpcstack build` does for a
# `Bootstrap: debootstrap` definition file, done by hand with the same tools.
#
#   reference_build.sh DEFFILE OUTPUT.sif [MIRROR...]
#
# Run it as an ordinary user with subordinate ID ranges.  MIRROR arguments go
# to mmdebstrap as they are: pass the `deb URI SUITE COMPONENTS` lines hpcstack
# derives from the host's apt sources, so both fetch from the same place.
# Everything happens in a fresh directory under $TMPDIR, removed at the end.
set -eu

def=$(realpath "$1")
out=$(realpath -m "$2")
shift 2
work=$(mktemp -d "${TMPDIR:-/tmp}/reference-XXXXXX")
cd "$work"

# The pieces of the definition file: suite, %post, %test, %labels.
section() { awk -v s="%$1" '/^%/ { on = ($1 == s); next } on' "$def"; }
suite=$(sed -n 's/^OSVersion:[[:space:]]*//p' "$def")
section post >post.sh
section test >test.sh
section labels | awk 'NF { printf "%s\"%s\": \"%s\"", sep, $1, $2; sep = ", " }
                      BEGIN { printf "{" } END { print "}" }' >labels.json
cp "$def" Singularity
arch=$(dpkg --print-architecture)
case $arch in amd64) partarch=2 ;; arm64) partarch=4 ;; *) echo "$arch: unsupported" >&2; exit 1 ;; esac

# 1. The bootstrap.  (Lines "== ..." mark the phases in the benchmark's logs.)
# The package set hpcstack bootstraps (debootstrap's minbase as Apptainer runs it:
# Priority required and apt, less four; merged /usr by the hook, not usrmerge).
echo "== bootstrap"
required='?and(?priority(required),?not(?name("^(openssl|udev|debconf-i18n|e2fsprogs)$")))'
hook=/usr/share/mmdebstrap/hooks/maybe-merged-usr
[ -d "$hook" ] || hook=  # an older mmdebstrap: no hook, usrmerge as before
mmdebstrap --mode=unshare --variant=apt --include="$required" --architectures="$arch" \
    --format=tar ${hook:+"--hook-dir=$hook"} "$suite" root.tar "$@"

# 2. %post and %test as fake root, then the SquashFS, in one user namespace.
echo "== unpack, %post, %test, SquashFS"
unshare --map-root-user --map-auto --mount --pid --fork --kill-child -- sh -eu -c '
r=rootfs
mkdir $r
tar -xf root.tar -C $r --exclude="./dev/*" --numeric-owner
mkdir -p $r/dev/pts $r/dev/shm $r/proc $r/sys $r/.singularity.d/env
for d in null zero full random urandom tty; do
    touch $r/dev/$d
    mount --bind /dev/$d $r/dev/$d
done
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts $r/dev/pts
ln -sf pts/ptmx $r/dev/ptmx
mount -t tmpfs -o mode=1777 tmpfs $r/dev/shm
mount -t proc proc $r/proc
mount --rbind /sys $r/sys
for f in resolv.conf hosts; do
    [ -e $r/etc/$f ] || touch $r/etc/$f
    mount --bind /etc/$f $r/etc/$f
done
cp post.sh $r/.post.sh
cp test.sh $r/.test.sh
in_chroot() {
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LANG=C TERM=dumb DEBIAN_FRONTEND=noninteractive \
        APPTAINER_ENVIRONMENT=/.singularity.d/env/91-environment.sh \
        chroot $r /bin/sh -ex "$@"
}
in_chroot /.post.sh
in_chroot /.test.sh
rm $r/.post.sh $r/.test.sh
for m in etc/hosts etc/resolv.conf sys proc dev/shm dev/pts \
         dev/tty dev/urandom dev/random dev/full dev/zero dev/null; do
    umount --lazy $r/$m
done
echo "== SquashFS"
# shellcheck disable=SC2086  # the benchmark passes the builder flags, word-split
mksquashfs $r img.sqfs -noappend ${MKSQUASHFS_COMP:--comp zstd} -no-progress -quiet
echo "== remove rootfs"
rm -rf --one-file-system $r
'

# 3. The SIF: definition file, labels, SquashFS as the primary system partition.
echo "== SIF"
siftool new out.sif
siftool add --datatype 1 out.sif Singularity
siftool add --datatype 6 --filename labels.json out.sif labels.json
siftool add --datatype 4 --parttype 2 --partfs 1 --partarch "$partarch" out.sif img.sqfs
mv out.sif "$out"
cd /
rm -rf "$work"
echo "== done"
