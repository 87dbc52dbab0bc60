#!/bin/bash
# Installs (or upgrades) the Godwit mobility service on this source server from the unpacked bundle:
#
#   sudo ./install.sh --appliance HOST[:PORT] --ca-fingerprint SHA256 --passphrase-file F \
#                     --disk PATH [--disk PATH ...] [--name NAME] [--no-start]
#
# - copies the bundle to /opt/godwit-mobility (an upgrade replaces the code only: the service's state in
#   /var/lib/godwit-mobility, its certificate and tracking bookmarks, is kept);
# - writes /etc/godwit/mobility.conf (mode 0600) and /etc/systemd/system/godwit-mobility.service;
# - when systemd runs: enables the service and (re)starts it, unless --no-start.
#
# Every argument is checked before anything is written: a bad one is one line on stderr and exit code 2.
# DESTDIR (tests only) installs under another root, needs no root and touches no service.
set -euo pipefail

PROG=install.sh
OPT=/opt/godwit-mobility
CONF=/etc/godwit/mobility.conf
UNIT=/etc/systemd/system/godwit-mobility.service
STATE=/var/lib/godwit-mobility
DESTDIR=${DESTDIR:-}
USAGE="usage: sudo ./install.sh --appliance HOST[:PORT] --ca-fingerprint SHA256 --passphrase-file F --disk PATH [--disk PATH ...] [--name NAME] [--no-start]"

bad() {  # a bad argument: what to do, in one line; nothing has been written
  echo "$PROG: $*" >&2
  exit 2
}
fail() {  # the machine cannot take the install as it is
  echo "$PROG: $*" >&2
  exit 1
}

#: A value goes into a systemd EnvironmentFile as KEY="value": these characters would change its meaning there.
check_plain() {  # check_plain OPTION VALUE
  case $2 in
    *[\"\\\$\`\']* | *[[:cntrl:]]*) bad "$1 must not contain quotes, backslashes, \$, \` or control characters" ;;
  esac
  [ ${#2} -le 1024 ] || bad "$1 is ${#2} characters long: that is not a $1 (check what was pasted)"
}

appliance="" fingerprint="" passphrase_file="" name="" start=yes
disks=()
need_value() {  # need_value OPTION COUNT_LEFT VALUE
  [ "$2" -ge 2 ] || bad "$1 needs a value. $USAGE"
  case $3 in --*) bad "$1 needs a value, not the option $3. $USAGE" ;; esac
}
set_once() {  # set_once OPTION CURRENT
  [ -z "$2" ] || bad "$1 is given twice: give it once"
}
while [ $# -gt 0 ]; do
  opt=$1 value=""
  case $opt in
    --*=*) value=${opt#*=}; opt=${opt%%=*}; shift; set -- "$opt" "$value" "$@" ;;
  esac
  case $1 in
    --appliance) need_value "$1" $# "${2:-}"; set_once "$1" "$appliance"; appliance=$2; shift 2 ;;
    --ca-fingerprint) need_value "$1" $# "${2:-}"; set_once "$1" "$fingerprint"; fingerprint=$2; shift 2 ;;
    --passphrase-file) need_value "$1" $# "${2:-}"; set_once "$1" "$passphrase_file"; passphrase_file=$2; shift 2 ;;
    --disk) need_value "$1" $# "${2:-}"; disks+=("$2"); shift 2 ;;
    --name) need_value "$1" $# "${2:-}"; set_once "$1" "$name"; name=$2; shift 2 ;;
    --no-start) start=no; shift ;;
    -h|--help) echo "$USAGE"; exit 0 ;;
    *) bad "unknown argument '${1:0:80}'. $USAGE" ;;
  esac
done

[ -n "$appliance" ] || bad "--appliance is missing: the appliance's address, as \`godwit setup show\` prints it. $USAGE"
[ -n "$fingerprint" ] || bad "--ca-fingerprint is missing: copy it from the console's Setup page or \`godwit setup show\`"
[ -n "$passphrase_file" ] || bad "--passphrase-file is missing: write the registration passphrase to a file only root can read and name it"
[ ${#disks[@]} -gt 0 ] || bad "--disk is missing: name each disk to replicate (--disk /dev/sda --disk /dev/sdb)"

check_plain --appliance "$appliance"
host=$appliance port=""
if [[ $appliance =~ ^\[([0-9A-Fa-f:.]+)\](:([0-9]+))?$ ]]; then  # [IPv6]:PORT
  host=${BASH_REMATCH[1]} port=${BASH_REMATCH[3]}
elif [[ $appliance =~ ^([A-Za-z0-9._-]+)(:([0-9]+))?$ ]]; then
  host=${BASH_REMATCH[1]} port=${BASH_REMATCH[3]}
else
  bad "--appliance '${appliance:0:80}' is not HOST or HOST:PORT (an IPv6 address in brackets: [fd00::1]:443)"
fi
[ ${#host} -le 253 ] || bad "--appliance: the host name is longer than 253 characters"
if [ -n "$port" ] && { [ ${#port} -gt 5 ] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; }; then
  bad "--appliance: port $port is not between 1 and 65535"
fi

check_plain --ca-fingerprint "$fingerprint"
fp=${fingerprint^^}
fp=${fp#SHA256:}
fp=${fp#SHA256=}
fp=${fp//[: ]/}
[[ $fp =~ ^[0-9A-F]{64}$ ]] || bad "--ca-fingerprint '${fingerprint:0:80}' is not a SHA-256 fingerprint (64 hex digits, colons allowed): copy it from the console's Setup page or \`godwit setup show\`"
fingerprint=$(echo "$fp" | sed 's/../&:/g; s/:$//')

check_plain --passphrase-file "$passphrase_file"
[ -e "$passphrase_file" ] || bad "--passphrase-file $passphrase_file does not exist: write the registration passphrase to it first"
[ -f "$passphrase_file" ] || bad "--passphrase-file $passphrase_file is not a file"
[ -r "$passphrase_file" ] || bad "--passphrase-file $passphrase_file cannot be read: run install.sh as root (sudo)"
[ -s "$passphrase_file" ] || bad "--passphrase-file $passphrase_file is empty: write the registration passphrase to it"
passphrase_file=$(readlink -f -- "$passphrase_file")
check_plain --passphrase-file "$passphrase_file"

declare -A seen=()
for i in "${!disks[@]}"; do
  d=${disks[$i]}
  check_plain --disk "$d"
  case $d in *[[:space:]]*) bad "--disk '$d' has a space in its path: name the disk by a path without one (/dev/disk/by-id/...)" ;; esac
  [ -e "$d" ] || bad "--disk $d does not exist: name a block device (/dev/sda) or a disk image file"
  [ -b "$d" ] || [ -f "$d" ] || bad "--disk $d is neither a block device nor a disk image file"
  case $d in /*) ;; *) d=$(readlink -f -- "$d"); disks[i]=$d ;; esac  # by-id links stay as named
  [ -z "${seen[$d]:-}" ] || bad "--disk $d is given twice: name each disk once"
  seen[$d]=1
done

if [ -n "$name" ]; then
  check_plain --name "$name"
  [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]] || bad "--name '${name:0:80}' is not a server name: up to 63 letters, digits, dots, dashes or underscores"
fi

# --- the machine -------------------------------------------------------------------------------------
bundle=$(dirname -- "$(readlink -f -- "$0")")
[ -x "$bundle/bin/godwit" ] && [ -d "$bundle/lib/python3.11" ] \
  || fail "$bundle is not an unpacked mobility bundle: run install.sh from the folder the tarball unpacked to"
if [ -z "$DESTDIR" ]; then
  [ "$(id -u)" -eq 0 ] || fail "run it as root (sudo ./install.sh ...): it installs a system service"
  if dpkg-query -W -f='${db:Status-Status}' godwit-mobility 2>/dev/null | grep -qx installed; then
    fail "godwit-mobility is installed as a Debian package here: upgrade it with dpkg -i (or remove it first with dpkg -r godwit-mobility)"
  fi
fi
[ "$(uname -m)" = x86_64 ] || fail "this bundle is for x86_64 Linux; this machine is $(uname -m)"
"$bundle/bin/python3.11" -c pass 2>/dev/null \
  || fail "the bundled Python does not run here: the bundle needs x86_64 Linux with glibc 2.31 or newer (Debian 11, Ubuntu 20.04, RHEL 9 or later)"
version=$(cat "$bundle/VERSION" 2>/dev/null || echo unknown)

systemd=no
[ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null && systemd=yes

# --- the code: copied beside, then swapped in (an upgrade keeps /var/lib/godwit-mobility) ---------------
target=$DESTDIR$OPT
if [ "$(readlink -f -- "$target" 2>/dev/null)" != "$bundle" ]; then  # not run from the installed copy itself
  mkdir -p "$(dirname "$target")"
  rm -rf "$target.new" "$target.old"
  cp -a "$bundle" "$target.new"
  if [ "$systemd" = yes ] && systemctl is-active --quiet godwit-mobility; then
    systemctl stop godwit-mobility  # it stops at a batch's end; the new code starts below
  fi
  [ -e "$target" ] && mv "$target" "$target.old"
  mv "$target.new" "$target"
  rm -rf "$target.old"
fi

# --- settings and unit -------------------------------------------------------------------------------------
mkdir -p "$DESTDIR/etc/godwit" "$DESTDIR$(dirname "$UNIT")"
install -d -m 0700 "$DESTDIR$STATE"
(
  umask 077
  {
    echo "# Godwit mobility service settings (install.sh $version wrote them; systemd EnvironmentFile)."
    echo "# After a change: systemctl restart godwit-mobility"
    echo "APPLIANCE=\"$appliance\""
    echo "CA_FINGERPRINT=\"$fingerprint\""
    echo "PASSPHRASE_FILE=\"$passphrase_file\""
    echo "DISKS=\"${disks[*]}\""
    echo "NAME=\"$name\""
  } >"$DESTDIR$CONF.new"
  chmod 0600 "$DESTDIR$CONF.new"
  mv "$DESTDIR$CONF.new" "$DESTDIR$CONF"
)
install -m 0644 "$target/share/godwit-mobility/godwit-mobility.service" "$DESTDIR$UNIT"

echo "Installed the Godwit mobility service $version in $OPT; settings in $CONF."
if [ "$systemd" = yes ]; then
  systemctl daemon-reload
  systemctl enable --quiet godwit-mobility
  if [ "$start" = yes ]; then
    systemctl restart godwit-mobility
    echo "Started it: follow it with journalctl -u godwit-mobility -f; it appears on the appliance once registered."
  else
    echo "Enabled, not started (--no-start): start it with systemctl start godwit-mobility"
  fi
elif [ -z "$DESTDIR" ]; then
  echo "systemd is not running here: start the service by hand (as root) with"
  echo "  $OPT/bin/godwit mobility run --appliance $appliance --ca-fingerprint $fingerprint --passphrase-file $passphrase_file --state-dir $STATE$(printf ' --disk %s' "${disks[@]}")${name:+ --name $name}"
fi
