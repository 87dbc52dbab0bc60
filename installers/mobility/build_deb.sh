#!/usr/bin/env bash
# Builds build/godwit-mobility_<version>_amd64.deb from the mobility bundle (build_bundle.sh's tarball):
#
#   bash installers/mobility/build_deb.sh [TARBALL]        (VERSION=0.1.1 overrides the package's version)
#
# The package holds the same tree as the tarball: /opt/godwit-mobility, the unit in /lib/systemd/system, and
# /etc/godwit/mobility.conf as a conffile (a commented template). It depends on nothing Python.
#   - installing enables the service; it starts it only once the settings are filled in (else it says how);
#   - an upgrade stops the service, replaces the code and starts it again (settings and state are kept);
#   - `dpkg -r` stops and removes the code and keeps the settings and /var/lib/godwit-mobility (the service's
#     certificate, tracking bookmarks and installed updates: a reinstall carries on as the same server);
#   - `dpkg -P` (purge) deletes /etc/godwit/mobility.conf and /var/lib/godwit-mobility too.
set -euo pipefail
source "$(dirname "$0")/common.sh"

project=$(project_version)
TARBALL=${1:-$BUILD/godwit-mobility-$project-linux-x86_64.tar.gz}
VERSION=${VERSION:-$project}
[ -s "$TARBALL" ] || die "$TARBALL is missing: build it first with: sudo bash installers/mobility/build_bundle.sh"
[[ $VERSION =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || die "VERSION=$VERSION is not a Debian version (digits first, then letters, digits, . + ~ -)"
require_tools dpkg-deb tar
DEB=$BUILD/godwit-mobility_${VERSION}_amd64.deb
WORK=$BUILD/deb-work-$VERSION
step "building $(basename "$DEB") from $(basename "$TARBALL")"

rm -rf "$WORK"
mkdir -p "$WORK/unpacked" "$WORK/root/opt" "$WORK/root/DEBIAN" "$WORK/root/lib/systemd/system" "$WORK/root/etc/godwit"
tar -C "$WORK/unpacked" -xzf "$TARBALL"
top=$(find "$WORK/unpacked" -mindepth 1 -maxdepth 1 -type d -name 'godwit-mobility-*')
[ -n "$top" ] && [ -x "$top/bin/godwit" ] || die "$TARBALL holds no godwit-mobility-<version>/ bundle: build it again"
mv "$top" "$WORK/root/opt/godwit-mobility"
rm -f "$WORK/root/opt/godwit-mobility/install.sh" "$WORK/root/opt/godwit-mobility/uninstall.sh"  # dpkg's job here
install -m 0644 "$HERE/godwit-mobility.service" "$WORK/root/lib/systemd/system/"
install -m 0600 "$HERE/mobility.conf" "$WORK/root/etc/godwit/mobility.conf"
echo /etc/godwit/mobility.conf >"$WORK/root/DEBIAN/conffiles"

cat >"$WORK/root/DEBIAN/control" <<EOF
Package: godwit-mobility
Version: $VERSION
Architecture: amd64
Maintainer: Godwit <godwit@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$WORK/root" | cut -f1)
Depends: libc6 (>= 2.31)
Section: admin
Priority: optional
Description: Godwit mobility service for source servers
 Registers this server with a Godwit replication appliance and replicates
 its disks. Self-contained: its own Python 3.11 and libraries live in
 /opt/godwit-mobility.
 .
 Fill in /etc/godwit/mobility.conf, then: systemctl restart godwit-mobility.
 Removing the package keeps the settings and the service's state in
 /var/lib/godwit-mobility; purging deletes them.
EOF

cat >"$WORK/root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# Enables the service; starts (or restarts, on an upgrade) it only once mobility.conf is filled in.
set -e
unit=godwit-mobility.service
conf=/etc/godwit/mobility.conf
filled() {
  [ -r "$conf" ] && (. "$conf" && [ -n "$APPLIANCE" ] && [ -n "$CA_FINGERPRINT" ] && [ -n "$PASSPHRASE_FILE" ] \
    && [ -n "$DISKS" ]) 2>/dev/null
}
case "$1" in
  configure|abort-upgrade|abort-deconfigure|abort-remove)
    install -d -m 0700 /var/lib/godwit-mobility
    if command -v deb-systemd-helper >/dev/null; then
      deb-systemd-helper unmask "$unit" >/dev/null || true
      # was-enabled is true on a first install: enabled then, and left as the admin set it on an upgrade
      if deb-systemd-helper --quiet was-enabled "$unit"; then
        deb-systemd-helper enable "$unit" >/dev/null || true
      else
        deb-systemd-helper update-state "$unit" >/dev/null || true
      fi
    elif command -v systemctl >/dev/null; then
      systemctl enable --quiet "$unit" 2>/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
      systemctl daemon-reload || true
    fi
    if ! filled; then
      echo "godwit-mobility: fill in $conf, then start the service: systemctl start godwit-mobility"
    elif [ -d /run/systemd/system ]; then
      systemctl restart "$unit" || echo "godwit-mobility: the service did not start: see journalctl -u godwit-mobility"
    fi
    ;;
esac
exit 0
EOF

cat >"$WORK/root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# Stops the service before its code is removed or replaced (it stops at a batch's end).
set -e
case "$1" in
  remove|upgrade|deconfigure)
    if [ -d /run/systemd/system ]; then
      systemctl stop godwit-mobility.service || true
    fi
    ;;
esac
exit 0
EOF

cat >"$WORK/root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# remove: the settings and /var/lib/godwit-mobility stay (a reinstall carries on as the same server).
# purge: they are deleted.
set -e
unit=godwit-mobility.service
case "$1" in
  remove)
    if [ -d /run/systemd/system ]; then
      systemctl daemon-reload || true
    fi
    if command -v deb-systemd-helper >/dev/null; then
      deb-systemd-helper mask "$unit" >/dev/null || true
    fi
    ;;
  purge)
    if command -v deb-systemd-helper >/dev/null; then
      deb-systemd-helper purge "$unit" >/dev/null || true
      deb-systemd-helper unmask "$unit" >/dev/null || true
    fi
    rm -f /etc/godwit/mobility.conf /etc/godwit/mobility.conf.dpkg-old /etc/godwit/mobility.conf.dpkg-new \
      /etc/godwit/mobility.conf.dpkg-dist
    rmdir /etc/godwit 2>/dev/null || true
    rm -rf /var/lib/godwit-mobility
    ;;
esac
exit 0
EOF
chmod 0755 "$WORK/root/DEBIAN/postinst" "$WORK/root/DEBIAN/prerm" "$WORK/root/DEBIAN/postrm"

rm -f "$DEB.part"
dpkg-deb --root-owner-group -Zxz --build "$WORK/root" "$DEB.part" >/dev/null
mv "$DEB.part" "$DEB"
(cd "$BUILD" && sha256sum "$(basename "$DEB")" >"$DEB.sha256")
rm -rf "$WORK"
step "done: $DEB ($(du -h "$DEB" | cut -f1))"
