#!/usr/bin/env bash
# Debian packages Godwit needs to run its console headless, its tests and its demo;
# with the argument `appliance`, what `make appliance` and `make appliance-test` need to build and boot the image;
# with the argument `benchmarks`, the peers that benchmarks/peers.py runs beside Godwit.
# Installs only what is missing (apt-get when root); otherwise prints the command to run.
set -euo pipefail

if [ "${1:-}" = appliance ]; then
  packages=(
    # the root file system, the disk, the boot loaders' firmware for the boot test, the test's admin channel
    mmdebstrap gdisk dosfstools mtools e2fsprogs qemu-utils qemu-system-x86 ovmf socat
  )
elif [ "${1:-}" = benchmarks ]; then
  packages=(
    # borg 1.2 and restic back up the same image; rsync copies it over ssh to a private sshd on loopback
    borgbackup restic rsync openssh-server openssh-client
  )
else
packages=(
  # Qt offscreen and fonts (without a font Qt silently draws boxes)
  libgl1 libegl1 libxkbcommon0 libglib2.0-0 libfontconfig1 libdbus-1-3 fonts-dejavu-core
  # Console under a virtual X server (make demo) and the xcb platform plugin
  xvfb xauth libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-render-util0
  libxcb-shape0 libxkbcommon-x11-0
  # a real Secret Service (OS keyring) for the keyring test
  dbus gnome-keyring
  # qemu-img compares exported fixed VHDs with raw images
  qemu-utils
  # XFS (reflink clones) for the consistency tests; ext4, losetup and fsfreeze come with Debian
  xfsprogs
  # libfaketime: the fault tests jump the appliance's clock forward and back (never the machine's)
  libfaketime
  # venv for Debian's own python3
  python3-venv
  # Node.js (with npm) runs Azurite, the Azure Blob Storage emulator of the azure target's tests and demo
  nodejs
)
fi

missing=()
for p in "${packages[@]}"; do
  # one line per installed architecture (multiarch): installed if any of them is
  status=$(dpkg-query -W -f='${db:Status-Status}\n' "$p" 2>/dev/null || true)
  grep -qx installed <<<"$status" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "Missing Debian packages: ${missing[*]}" >&2
  echo "Install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "Installing Debian packages: ${missing[*]}"
# Another apt run (unattended upgrades, a build beside this one) holds the lock for a while: wait for it.
lock=(-o DPkg::Lock::Timeout=600)
for _ in $(seq 1 120); do
  err=$(apt-get "${lock[@]}" update -qq 2>&1 >/dev/null) && break
  grep -q "lock" <<<"$err" || { echo "$err" >&2; exit 1; }
  sleep 5
done
DEBIAN_FRONTEND=noninteractive apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
