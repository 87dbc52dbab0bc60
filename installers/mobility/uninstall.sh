#!/bin/bash
# Removes the Godwit mobility service that install.sh installed:
#
#   sudo /opt/godwit-mobility/uninstall.sh [--purge]
#
# Stops and disables the service, removes its unit and /opt/godwit-mobility. Keeps /etc/godwit/mobility.conf
# and the service's state in /var/lib/godwit-mobility (a reinstall picks up where it was: same registration,
# same tracking); --purge deletes them too (the appliance then sees a new server on a reinstall).
# DESTDIR (tests only) removes under another root, needs no root and touches no service.
set -euo pipefail

PROG=uninstall.sh
DESTDIR=${DESTDIR:-}
purge=no
for arg in "$@"; do
  case $arg in
    --purge) purge=yes ;;
    -h|--help) echo "usage: sudo $0 [--purge]"; exit 0 ;;
    *) echo "$PROG: unknown argument '${arg:0:80}': the only option is --purge (delete settings and state too)" >&2
       exit 2 ;;
  esac
done
if [ -z "$DESTDIR" ]; then
  [ "$(id -u)" -eq 0 ] || { echo "$PROG: run it as root (sudo $0)" >&2; exit 1; }
  if dpkg-query -W -f='${db:Status-Status}' godwit-mobility 2>/dev/null | grep -qx installed; then
    echo "$PROG: godwit-mobility is installed as a Debian package here: remove it with dpkg -r (or -P) godwit-mobility" >&2
    exit 1
  fi
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl disable --now --quiet godwit-mobility 2>/dev/null || true
  fi
fi
rm -f "$DESTDIR/etc/systemd/system/godwit-mobility.service"
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload 2>/dev/null || true
fi
# this script may live in the folder it removes: bash keeps it open, so removing it does not cut it short
rm -rf "$DESTDIR/opt/godwit-mobility" "$DESTDIR/opt/godwit-mobility.new" "$DESTDIR/opt/godwit-mobility.old"
if [ "$purge" = yes ]; then
  rm -rf "$DESTDIR/var/lib/godwit-mobility" "$DESTDIR/etc/godwit/mobility.conf"
  rmdir "$DESTDIR/etc/godwit" 2>/dev/null || true
  echo "Removed the Godwit mobility service, its settings and its state."
else
  echo "Removed the Godwit mobility service; kept /etc/godwit/mobility.conf and /var/lib/godwit-mobility (--purge deletes them)."
fi
