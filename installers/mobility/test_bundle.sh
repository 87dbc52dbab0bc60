#!/usr/bin/env bash
# Tests the mobility bundle and .deb on fresh Debian roots (run as root, after build_bundle.sh --deb):
#
#   sudo bash installers/mobility/test_bundle.sh [--skip-appliance]
#
#   (a) Debian 11 (minbase): unpack the tarball, install.sh with bad arguments (one line, exit 2, nothing
#       written), then with good ones (--no-start); the installed bundle runs: --version, mobility run --help,
#       the modules it needs; an upgrade in place keeps the state; uninstall.sh keeps it, --purge deletes it;
#   (b) the same on Debian 12 (no libssl1.1 there: the bundle's own is used);
#   (c) Debian 12: dpkg -i the .deb, upgrade to a bumped version, dpkg -r keeps the state, dpkg -P removes
#       the settings and the state;
#   (d) the bundled service, in the Debian 11 root, registers with a real appliance started on this host
#       (this checkout's .venv) and makes its first recovery point (its log: build/logs/bundle-mobility-service.log).
# Prints each step with its time; exits non-zero at the first failure.
set -Eeuo pipefail
source "$(dirname "$0")/common.sh"

VERSION=$(project_version)
TARBALL=$BUILD/godwit-mobility-$VERSION-linux-x86_64.tar.gz
DEB=$BUILD/godwit-mobility_${VERSION}_amd64.deb
BUMPED=$VERSION+upgrade1
DEB2=$BUILD/godwit-mobility_${BUMPED}_amd64.deb
TESTS=$BUILD/mobility-tests
FP=3F1A0000000000000000000000000000000000000000000000000000000000AB

skip_appliance=no
[ "${1:-}" = --skip-appliance ] && skip_appliance=yes
require_root
[ -s "$TARBALL" ] || die "$TARBALL is missing: build it first (sudo bash installers/mobility/build_bundle.sh --deb)"
[ -s "$DEB" ] || die "$DEB is missing: build it first (sudo bash installers/mobility/build_deb.sh)"
failed() { echo "FAILED: $current" >&2; }
trap failed ERR
current=""
check() {  # check TEXT: a step, printed with its time
  current=$1
  step "$1"
}

# The checks run inside the root, as an admin would type them. $1: the root's name, for messages.
BAD_ARGS='
cd /root/godwit-mobility-'"$VERSION"'
printf "the passphrase\n" >/root/passphrase.txt
chmod 600 /root/passphrase.txt
truncate -s 8M /srv/disk0.img
bad() {  # bad ARGS...: one line on stderr, exit 2, nothing written
  set +e
  ./install.sh "$@" >/tmp/out 2>/tmp/err
  code=$?
  set -e
  lines=$(wc -l </tmp/err)
  if [ $code -ne 2 ] || [ "$lines" -ne 1 ] || [ -s /tmp/out ] || [ -e /opt/godwit-mobility ] || [ -e /etc/godwit ] \
      || [ -e /etc/systemd/system/godwit-mobility.service ]; then
    echo "install.sh $* -> exit $code, $lines lines:"; cat /tmp/out /tmp/err; exit 1
  fi
  echo "  refused (exit 2): $(cut -c1-110 /tmp/err)"
}
good="--appliance 127.0.0.1:443 --ca-fingerprint '"$FP"' --passphrase-file /root/passphrase.txt --disk /srv/disk0.img"
bad
bad --appliance 127.0.0.1:443
bad $good --bogus
bad $good --appliance other:443
bad --appliance "not a host" --ca-fingerprint '"$FP"' --passphrase-file /root/passphrase.txt --disk /srv/disk0.img
bad --appliance host:99999 --ca-fingerprint '"$FP"' --passphrase-file /root/passphrase.txt --disk /srv/disk0.img
bad --appliance "$(head -c 100000 /dev/zero | tr "\0" a)" --ca-fingerprint '"$FP"' --passphrase-file /root/passphrase.txt --disk /srv/disk0.img
bad --appliance 127.0.0.1 --ca-fingerprint nonsense --passphrase-file /root/passphrase.txt --disk /srv/disk0.img
bad --appliance 127.0.0.1 --ca-fingerprint '"$FP"' --passphrase-file /root/missing.txt --disk /srv/disk0.img
bad --appliance 127.0.0.1 --ca-fingerprint '"$FP"' --passphrase-file /root/passphrase.txt --disk /dev/nothing
bad $good --disk /srv/disk0.img
bad $good --name "bad name;rm -rf /"
bad $good --name "\$(reboot)"
bad $good --disk
'

INSTALL='
cd /root/godwit-mobility-'"$VERSION"'
./bin/godwit --version | grep -qx "godwit '"$VERSION"'"   # runs where it was unpacked
./install.sh --appliance 127.0.0.1:443 --ca-fingerprint '"$FP"' --passphrase-file /root/passphrase.txt \
  --disk /srv/disk0.img --name src-01 --no-start
cd /
[ "$(stat -c %a /etc/godwit/mobility.conf)" = 600 ] || { echo "mobility.conf is not 0600"; exit 1; }
grep -qx "APPLIANCE=\"127.0.0.1:443\"" /etc/godwit/mobility.conf
grep -qx "DISKS=\"/srv/disk0.img\"" /etc/godwit/mobility.conf
grep -qx "NAME=\"src-01\"" /etc/godwit/mobility.conf
grep -q "^CA_FINGERPRINT=\"3F:1A:00:" /etc/godwit/mobility.conf
grep -q "^ExecStart=.*/opt/godwit-mobility/bin/godwit mobility run" /etc/systemd/system/godwit-mobility.service
/opt/godwit-mobility/bin/godwit --version
/opt/godwit-mobility/bin/godwit mobility run --help | grep -q -- "--ca-fingerprint"
/opt/godwit-mobility/bin/python3 - <<"PY"
import sys, ssl, sqlite3, zstandard, cryptography, aiohttp, xxhash, tuf, lzma, bz2, zlib, ctypes, uuid, decimal
import engine.mobility.service, engine.mobility.launcher, engine.updater.feed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key = AESGCM.generate_key(bit_length=256)
assert AESGCM(key).decrypt(bytes(12), AESGCM(key).encrypt(bytes(12), b"godwit", None), None) == b"godwit"
ssl.create_default_context()
sqlite3.connect(":memory:").execute("select 1")
assert zstandard.decompress(zstandard.compress(b"godwit" * 100)) == b"godwit" * 100
assert xxhash.xxh3_64_hexdigest(b"godwit")
print("  python", sys.version.split()[0], "|", ssl.OPENSSL_VERSION, "| sqlite", sqlite3.sqlite_version)
PY
# the bundled libraries are the ones used, not the system ones (Debian 12 has no libssl1.1 at all)
ssl_so=$(ls /opt/godwit-mobility/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so)
for lib in libssl.so.1.1 libcrypto.so.1.1; do
  used=$(readlink -f "$(ldd "$ssl_so" | awk -v lib="$lib" '"'"'$1 == lib {print $3}'"'"')")
  [ "$used" = /opt/godwit-mobility/lib/$lib ] || { echo "_ssl uses $lib from ${used:-nowhere}"; exit 1; }
done
if ldd /opt/godwit-mobility/bin/python3.11 /opt/godwit-mobility/lib/python3.11/lib-dynload/*.so | grep "not found"; then exit 1; fi
# an upgrade in place keeps the state
mkdir -p /var/lib/godwit-mobility && echo kept >/var/lib/godwit-mobility/marker
cd /root/godwit-mobility-'"$VERSION"'
./install.sh --appliance 127.0.0.1:443 --ca-fingerprint '"$FP"' --passphrase-file /root/passphrase.txt \
  --disk /srv/disk0.img --no-start >/dev/null
grep -qx kept /var/lib/godwit-mobility/marker
grep -qx "NAME=\"\"" /etc/godwit/mobility.conf
'

UNINSTALL='
/opt/godwit-mobility/uninstall.sh >/dev/null
[ ! -e /opt/godwit-mobility ]
[ ! -e /etc/systemd/system/godwit-mobility.service ]
grep -qx kept /var/lib/godwit-mobility/marker
[ -e /etc/godwit/mobility.conf ]
cd /root/godwit-mobility-'"$VERSION"' && ./install.sh --appliance 127.0.0.1 --ca-fingerprint '"$FP"' \
  --passphrase-file /root/passphrase.txt --disk /srv/disk0.img --no-start >/dev/null
/opt/godwit-mobility/uninstall.sh --purge >/dev/null
[ ! -e /opt/godwit-mobility ]
[ ! -e /var/lib/godwit-mobility ]
[ ! -e /etc/godwit/mobility.conf ]
'

bundle_tests() {  # bundle_tests SUITE
  local root=$TESTS/$1
  check "($2) $1: a fresh minbase root"
  unpack_root "$(debian_root "$1" minbase "")" "$root"
  tar -C "$root/root" -xzf "$TARBALL"
  check "($2) $1: install.sh refuses bad arguments: one line, exit 2, nothing written"
  in_root "$root" "$BAD_ARGS"
  check "($2) $1: install.sh --no-start, then the installed bundle runs; an upgrade in place keeps the state"
  in_root "$root" "$INSTALL"
  check "($2) $1: uninstall.sh keeps settings and state; --purge deletes them"
  in_root "$root" "$UNINSTALL"
}

mkdir -p "$TESTS"
step "testing $(basename "$TARBALL") ($(du -h "$TARBALL" | cut -f1)) and $(basename "$DEB") ($(du -h "$DEB" | cut -f1))"
bundle_tests bullseye a
bundle_tests bookworm b

check "(c) bookworm: a second .deb with a bumped version ($BUMPED)"
VERSION=$BUMPED bash "$HERE/build_deb.sh" "$TARBALL" >/dev/null
root=$TESTS/bookworm-deb
unpack_root "$(debian_root bookworm minbase "")" "$root"
cp "$DEB" "$DEB2" "$root/root/"
check "(c) bookworm: dpkg -i, upgrade, dpkg -r keeps the state, dpkg -P removes settings and state"
in_root "$root" '
cd /root
if ls /usr/lib/x86_64-linux-gnu/libssl.so.1.1 2>/dev/null; then echo "this root has libssl1.1"; exit 1; fi
dpkg -i godwit-mobility_'"$VERSION"'_amd64.deb | grep "fill in /etc/godwit/mobility.conf"
dpkg-query -W -f="\${Version}\n" godwit-mobility | grep -qx "'"$VERSION"'"
[ "$(stat -c %a /etc/godwit/mobility.conf)" = 600 ]
grep -q "^# Example" /etc/godwit/mobility.conf
[ -f /lib/systemd/system/godwit-mobility.service ]
[ -d /var/lib/godwit-mobility ]
/opt/godwit-mobility/bin/godwit --version
/opt/godwit-mobility/bin/python3 -c "import ssl, sqlite3, zstandard, cryptography, aiohttp, xxhash"
sed -i "s|^APPLIANCE=\"\"|APPLIANCE=\"appliance.example:443\"|" /etc/godwit/mobility.conf  # the admin fills it in
echo kept >/var/lib/godwit-mobility/marker
dpkg -i godwit-mobility_'"$BUMPED"'_amd64.deb >/dev/null
dpkg-query -W -f="\${Version}\n" godwit-mobility | grep -qx "'"$BUMPED"'"
grep -qx kept /var/lib/godwit-mobility/marker
grep -qx "APPLIANCE=\"appliance.example:443\"" /etc/godwit/mobility.conf   # the admin'"'"'s settings survive
/opt/godwit-mobility/bin/godwit mobility run --help >/dev/null
dpkg -r godwit-mobility >/dev/null
[ ! -e /opt/godwit-mobility/bin/godwit ]
[ ! -e /lib/systemd/system/godwit-mobility.service ]
grep -qx kept /var/lib/godwit-mobility/marker
[ -e /etc/godwit/mobility.conf ]
dpkg -P godwit-mobility >/dev/null
[ ! -e /var/lib/godwit-mobility ]
[ ! -e /etc/godwit/mobility.conf ]
[ ! -e /opt/godwit-mobility ]
'

rm -f "$DEB2" "$DEB2.sha256"

if [ "$skip_appliance" = no ]; then
  check "(d) bullseye: the bundled service registers with a real appliance on this host and makes a point"
  root=$TESTS/bullseye-appliance
  unpack_root "$(debian_root bullseye minbase "")" "$root"
  tar -C "$root/root" -xzf "$TARBALL"
  "$REPO/.venv/bin/python" "$HERE/registration_check.py" --root "$root" --version "$VERSION"
fi
trap - ERR
rm -rf "$TESTS"  # kept when a step fails, to look into
step "all passed"
