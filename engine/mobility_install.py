"""The self-contained mobility bundle: where the appliance finds it, and the one line that installs it on a source.

A source server without Python 3.11 gets the mobility service as one tarball,
``godwit-mobility-VERSION-linux-x86_64.tar.gz`` (top folder ``godwit-mobility-VERSION/`` with ``install.sh``).
The appliance carries the bundles of its release in a folder of its installation (:func:`bundles_dir`) and
serves the newest one on the management port (``GET /v1/mobility/bundle``, docs/management-protocol.md) to
anyone who asks: a new source has no client certificate yet, and the bundle holds no secret.

:func:`install_command` is the line the admin pastes on a source server (``godwit setup show`` and the
console's Setup page show the same text). It trusts nothing before it has checked the appliance's CA against
the fingerprint the admin copied:

1. ``GET /v1/ca.pem`` without verifying (nothing is trusted yet), then SHA-256 over the certificate's DER
   (the PEM's base64 decoded with ``base64 -d``: no openssl needed) compared with the fingerprint, exactly as
   :func:`engine.pki.fingerprint` computes it. A mismatch stops the line before anything else is downloaded.
2. ``GET /v1/mobility/bundle`` with ``curl --cacert ca.pem``: verified against that CA alone. The port
   certificate names the appliance's host name at its creation, ``localhost`` and the loopback addresses
   (:func:`engine.pki.issue_server_cert`), not every address or name a source may reach it by (NAT, DNS
   aliases, a renamed host). So the line asks for ``https://localhost:PORT/`` and tells curl to connect to
   HOST:PORT (``--connect-to``, curl 7.49 or later): host name verification passes on the name the
   certificate always holds, and trust rests on the pinned CA, as it does for the mobility service itself
   (which does not check host names either). Only the CA's port certificate can pass: the client
   certificates it issues to sources name a server id (never ``localhost``) and are for client
   authentication only, which curl refuses from a server.
3. The download resumes where it stopped (``curl -C -``, up to 10 tries): the management port closes a
   connection without a client certificate after 60 s (engine/listener.py), which a large bundle on a slow
   link may need more than.
4. Unpack in a temporary folder (removed at the end) and run ``install.sh`` as root with ``--appliance``,
   ``--ca-fingerprint`` and ``--passphrase-file``; the admin appends ``--disk`` (and ``--name``).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.updater import version_tuple

#: Overrides :func:`bundles_dir` (tests; an appliance keeps its bundles elsewhere).
BUNDLES_ENV = "GODWIT_MOBILITY_BUNDLES"
#: The file name of a bundle; the version is ``MAJOR.MINOR.PATCH``, as every agent version.
BUNDLE_NAME = re.compile(r"^godwit-mobility-(?P<version>[0-9][0-9.]{4,15})-linux-x86_64\.tar\.gz$")
#: The file the admin writes the registration passphrase to on the source, beside where the line runs.
PASSPHRASE_FILE = "passphrase.txt"
#: Where the line leaves the disks for the admin to name (one ``--disk`` each).
DISK_PLACEHOLDER = "/dev/sdX"


def bundles_dir() -> Path:
    """The folder of the appliance's installation that holds its mobility bundles: ``share/godwit/mobility``
    under the Python environment Godwit runs in (``/opt/godwit/share/godwit/mobility`` on an appliance
    image), or ``$GODWIT_MOBILITY_BUNDLES``."""
    override = os.environ.get(BUNDLES_ENV)
    return Path(override) if override else Path(sys.prefix) / "share" / "godwit" / "mobility"


@dataclass(frozen=True)
class Bundle:
    """One mobility bundle file."""

    path: Path
    version: str
    size: int

    @property
    def filename(self) -> str:
        return self.path.name


def newest_bundle(directory: Path) -> Bundle | None:
    """The bundle of the highest version in ``directory`` (None when it holds none, or does not exist).

    Only regular files named like a bundle count (a symbolic link to one does too); anything else there is
    ignored. Reads the folder: call it off the event loop."""
    best: tuple[tuple[int, int, int], Bundle] | None = None
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return None
    for entry in entries:
        match = BUNDLE_NAME.match(entry.name)
        version = version_tuple(match.group("version")) if match else None
        if match is None or version is None:
            continue
        try:
            if not entry.is_file():
                continue
            size = entry.stat().st_size
        except OSError:  # gone meanwhile, or a dangling link
            continue
        if best is None or version > best[0]:
            best = version, Bundle(path=Path(entry.path), version=match.group("version"), size=size)
    return best[1] if best else None


def _script() -> str:
    """The POSIX shell script of the install line, run as ``sh -c SCRIPT godwit-install HOST PORT FP PASSFILE
    ARGS...``. It holds no single quote (it is single-quoted on the line) and no value of the appliance (those
    are arguments, quoted once by :func:`shlex.quote`)."""
    lines = [
        "set -eu",
        "h=$1 p=$2 fp=$3 pf=$4",
        "shift 4",
        '[ -r "$pf" ] || { echo "Write the registration passphrase from the Setup page of the console to $pf first." '
        ">&2; exit 1; }",
        "case $pf in /*) ;; *) pf=$PWD/$pf ;; esac",
        "d=$(mktemp -d)",
        'trap "cd /; rm -rf \\"$d\\"" EXIT',
        'cd "$d"',
        'curl -fsSk --noproxy "*" -o ca.pem "https://$h:$p/v1/ca.pem"',
        'got=$(sed "/-----/d" ca.pem | base64 -d | sha256sum | cut -c1-64 | tr a-f A-F | sed "s/../&:/g;s/:$//")',
        'if [ "$got" != "$(echo "$fp" | tr a-f A-F)" ]; then echo "Stopped: the CA of $h:$p has the fingerprint $got,'
        " not $fp. Check the fingerprint on the Setup page of the console: if they differ, this may not be your"
        ' appliance. Nothing was installed." >&2; exit 1; fi',
        'b() { curl --noproxy "*" --cacert ca.pem --connect-to "localhost:$p:$h:$p" "$@"'
        ' "https://localhost:$p/v1/mobility/bundle"; }',
        "n=0",
        "until b -fsS -C - -o bundle.tar.gz; do r=$?; if [ $r = 22 ]; then b -sS >&2; echo >&2; exit 1; fi;"
        ' n=$((n+1)); [ $n -lt 10 ] || exit $r; echo "The download was cut off; resuming." >&2; sleep 2; done',
        "tar -xzf bundle.tar.gz",
        "cd godwit-mobility-*/",
        's=; [ "$(id -u)" = 0 ] || s=sudo',
        '$s ./install.sh --appliance "$h:$p" --ca-fingerprint "$fp" --passphrase-file "$pf" "$@"',
    ]
    script = "; ".join(lines)
    assert "'" not in script, "a single quote would end the single-quoted script"
    return script


def install_command(*, host: str, management_port: int, ca_fingerprint: str) -> str:
    """The one line that installs the mobility bundle on a source server and registers it with this appliance.

    A pure function of where sources reach the appliance, its management port and its CA fingerprint. The
    admin writes the passphrase to ``passphrase.txt`` where the line runs and replaces ``--disk /dev/sdX`` with
    the server's disks (one ``--disk`` each; ``--name NAME`` may follow). Needs sh, curl 7.49+, tar, base64
    and sha256sum on the source, and sudo unless it runs as root."""
    url_host = f"[{host}]" if ":" in host else host  # an IPv6 address, in a URL and in --connect-to
    args = [url_host, str(management_port), ca_fingerprint, PASSPHRASE_FILE]
    return (f"sh -c {shlex.quote(_script())} godwit-install {' '.join(shlex.quote(a) for a in args)} "
            f"--disk {DISK_PLACEHOLDER}")
