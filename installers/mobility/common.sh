# shellcheck shell=bash disable=SC2034  # sourced: the variables are for the scripts that source it
# Shell functions shared by build_bundle.sh, build_deb.sh and test_bundle.sh (sourced, never run).
#
# Chroots live under build/ and run in a private mount namespace (unshare --propagation private): the /proc,
# /dev and cache mounts a chroot needs are unmounted on the way out and can never reach the host's mounts,
# even when a step is killed half-way.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/installers/mobility
BUILD=$REPO/build
CACHE=$BUILD/cache
#: Where the bundle lives on a source server; the bundle itself is relocatable (bin/godwit finds its own folder).
PREFIX=/opt/godwit-mobility
DEBIAN_MIRROR=http://deb.debian.org/debian
_T0=$(date +%s)

die() {
  echo "$(basename "$0"): $*" >&2
  exit 1
}

#: step TEXT: one line per step, with the seconds since the script started.
step() {
  printf '[%4ss] %s\n' "$(($(date +%s) - _T0))" "$*"
}

project_version() {
  sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -n 1
}

require_root() {
  [ "$(id -u)" -eq 0 ] || die "run this as root (sudo bash $0): it builds Debian chroots with mmdebstrap"
}

require_tools() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || die "$t is missing: install it (apt-get install -y ${t/dpkg-deb/dpkg})"
  done
}

#: require_space DIR MIB: stop early with one line instead of failing half-way with a full disk.
require_space() {
  mkdir -p "$1"
  local free
  free=$(($(df --output=avail -k "$1" | tail -n 1) / 1024))
  [ "$free" -ge "$2" ] || die "only $free MiB free under $1, the build needs $2 MiB: free some space"
}

require_mirror() {
  curl -fsS -m 20 -o /dev/null "$DEBIAN_MIRROR/dists/bookworm/Release" \
    || die "cannot reach $DEBIAN_MIRROR (needed once to fill build/cache): check the network or proxy"
}

#: debian_root SUITE VARIANT PACKAGES: the path of a cached mmdebstrap tarball, made on first use.
debian_root() {
  local suite=$1 variant=$2 packages=$3 name tar
  name=$suite-$variant${packages:+-$(echo "$packages" | md5sum | cut -c1-8)}
  tar=$CACHE/$name.tar
  if [ ! -s "$tar" ]; then
    require_mirror
    mkdir -p "$CACHE/tmp"
    TMPDIR=$CACHE/tmp unshare --mount --propagation private -- mmdebstrap --quiet --format=tar --variant="$variant" ${packages:+--include="$packages"} "$suite" \
      "$tar.part" "deb $DEBIAN_MIRROR $suite main" "deb $DEBIAN_MIRROR $suite-updates main" \
      "deb http://deb.debian.org/debian-security $suite-security main" >&2
    mv "$tar.part" "$tar"
  fi
  echo "$tar"
}

#: unpack_root TARBALL DIR: a fresh root in DIR (removed first), with the host's DNS settings.
unpack_root() {
  rm -rf "$2"
  mkdir -p "$2"
  tar -C "$2" -xf "$1"
  cp -L /etc/resolv.conf "$2/etc/resolv.conf" 2>/dev/null || true
}

#: in_root ROOT SCRIPT [HOST_DIR:ROOT_DIR ...]: run SCRIPT with bash -eu inside ROOT, with a clean environment,
#: its own /proc and a minimal /dev, and each HOST_DIR bind-mounted at ROOT_DIR. Returns SCRIPT's exit code.
in_root() {
  local root=$1 script=$2
  shift 2
  unshare --mount --propagation private -- /bin/bash -eu -c '
    root=$1 script=$2
    shift 2
    cleanup() { umount -R "$root/proc" "$root/dev" 2>/dev/null || true; for b in "$@"; do umount "$root${b#*:}" 2>/dev/null || true; done; }
    trap cleanup EXIT
    mkdir -p "$root/proc" "$root/dev"
    mount -t proc proc "$root/proc"
    mount -t tmpfs -o mode=0755 dev "$root/dev"
    for d in null zero full random urandom tty; do touch "$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"; done
    mkdir -p "$root/dev/shm" "$root/dev/pts"
    mount -t tmpfs -o mode=1777 shm "$root/dev/shm"
    ln -s /proc/self/fd "$root/dev/fd"
    for b in "$@"; do mkdir -p "$root${b#*:}"; mount --bind "${b%%:*}" "$root${b#*:}"; done
    env -i HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      chroot "$root" /bin/bash -eu -c "$script"
  ' in_root "$root" "$script" "$@"
}
