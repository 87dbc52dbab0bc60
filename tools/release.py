"""Maintainer tool: publish agent releases to the update feed, a TUF repository (docs/agent-updates.md).

    python tools/release.py --feed DIR --keys DIR --version V [--agents NAME,NAME|all] [--source TREE]
                            [--requires AGENT:OTHER>=VER ...] [--expires-days N]
                            [--timestamp-expires-hours N] [--export-root FILE]
    python tools/release.py --feed DIR --keys DIR --renew-root
    python tools/release.py --feed DIR --keys DIR --export-root FILE

- ``--keys DIR`` holds one Ed25519 key per role (``root.pem``, ``targets.pem``, ``snapshot.pem``,
  ``timestamp.pem``: PKCS#8 PEM, mode 0600). They are made with a new feed; a feed that exists needs
  the keys it was made with. Keep them off the appliance and out of the repository; the vendor's are
  under ``/work/vendor-keys/updates/`` (its feed's root under ``/work/vendor-keys/updates-feed/``).
- ``--feed DIR`` is the repository, made if missing (``metadata/1.root.json``, consistent snapshots).
  Serve ``DIR`` as it is: ``DIR/metadata/`` and ``DIR/targets/``.
- Each release builds the packages of ``--agents`` (default all) at ``--version`` from ``--source``
  (default the checkout this tool is in) and adds them to the targets already published (a version
  published before must build to the same bytes). It adds their entries to ``compatibility.json``: the
  links from each package's manifest, and ``--requires AGENT:OTHER>=VER`` as given (else what an
  earlier publication of that very version required). Then it signs a new targets, snapshot and
  timestamp. Files are written before the metadata that names them and the timestamp last, so a
  client never sees a half-published release.
- ``--renew-root`` signs the next root version with the same keys. A root expires after 365 days: renew
  it before then (clients fetch the new version from the feed; ship it with the next Godwit release).
- ``--export-root FILE`` writes the feed's current root metadata (the trusted root Godwit ships as
  ``resources/updates/root.json``), making the keys and the repository if they are missing.

Expiry: root 365 days, targets 90, snapshot 30 (``--expires-days`` sets both), timestamp 7 days
(``--timestamp-expires-hours``). Re-sign the timestamp before it expires by publishing again or with
:func:`write_timestamp`. Errors exit 2 with one line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

from engine.errors import UpdateError  # noqa: E402
from engine.files import fsync_dir, write_atomically  # noqa: E402
from engine.updater import AGENT_ORDER  # noqa: E402
from engine.updater.compatibility import AgentRelease, Compatibility  # noqa: E402
from engine.updater.feed import TARGET_COMPATIBILITY, target_path  # noqa: E402
from engine.updater.package import build_package, parse_version, read_manifest  # noqa: E402

ROLES = ("root", "targets", "snapshot", "timestamp")
EXPIRES = {"root": timedelta(days=365), "targets": timedelta(days=90), "snapshot": timedelta(days=30),
           "timestamp": timedelta(days=7)}
_REQUIRES = re.compile(r"^([a-z-]+):([a-z-]+)>=(\d+\.\d+\.\d+)$")


class ToolError(Exception):
    """Something the maintainer must fix; shown as one line."""


# --- keys -------------------------------------------------------------------------------------------
def ensure_keys(keys: Path, *, create: bool = True) -> dict[str, CryptoSigner]:
    """The signer of each role from ``keys/<role>.pem``, making the keys that are missing if ``create`` (0600;
    an existing key is never overwritten)."""
    if create:
        keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    signers: dict[str, CryptoSigner] = {}
    for role in ROLES:
        path = keys / f"{role}.pem"
        if not path.exists() and not create:
            raise ToolError(f"{path} does not exist, and the feed was made already: give the keys it was made with.")
        if not path.exists():
            signer = CryptoSigner.generate_ed25519()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(signer.private_bytes)
                f.flush()
                os.fsync(f.fileno())
            print(f"New {role} key: {path} (0600; keep it secret and out of the repository)")
        signers[role] = load_signer(path)
    return signers


def load_signer(path: Path) -> CryptoSigner:
    """A signer for the Ed25519 private key in ``path`` (PKCS#8 PEM, unencrypted)."""
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ToolError(f"{path} cannot be read ({exc.strerror or exc}).") from exc
    except (ValueError, TypeError) as exc:
        raise ToolError(f"{path} is not an unencrypted PEM private key.") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ToolError(f"{path} is not an Ed25519 key: move it away and let this tool make one.")
    return CryptoSigner(key)


# --- the repository ---------------------------------------------------------------------------------
def _dump(md: Metadata[Any]) -> bytes:
    return md.to_bytes(JSONSerializer(compact=False))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data, mode=0o644)


def _now(now: datetime | None) -> datetime:
    when = now or datetime.now(UTC)
    if when.tzinfo is None:
        raise ToolError("now must be timezone-aware (UTC).")
    return when.astimezone(UTC).replace(microsecond=0)


def root_path(feed: Path) -> Path:
    """The newest ``N.root.json`` of ``feed``."""
    roots = sorted((int(p.name.split(".")[0]), p) for p in (feed / "metadata").glob("*.root.json")
                   if p.name.split(".")[0].isdigit())
    if not roots:
        raise ToolError(f"{feed} is not an update feed (no metadata/1.root.json).")
    return roots[-1][1]


def _has_root(feed: Path) -> bool:
    return bool(list((feed / "metadata").glob("*.root.json")))


def ensure_repository(feed: Path, signers: Mapping[str, CryptoSigner], *, now: datetime | None = None) -> None:
    """Make the repository in ``feed`` if it has no root yet: ``metadata/1.root.json`` naming one key per
    role (threshold 1), consistent snapshots, expiring in 365 days."""
    if _has_root(feed):
        return
    root = Root(expires=_now(now) + EXPIRES["root"], consistent_snapshot=True)
    for role in ROLES:
        root.add_key(signers[role].public_key, role)
    md = Metadata(root)
    md.sign(signers["root"])
    (feed / "targets").mkdir(parents=True, exist_ok=True)
    _write(feed / "metadata" / "1.root.json", _dump(md))
    print(f"New feed: {feed / 'metadata' / '1.root.json'}")


def load_root(feed: Path) -> Metadata[Root]:
    return Metadata[Root].from_file(str(root_path(feed)))


def load_timestamp(feed: Path) -> Metadata[Timestamp] | None:
    path = feed / "metadata" / "timestamp.json"
    return Metadata[Timestamp].from_file(str(path)) if path.exists() else None


def load_snapshot(feed: Path) -> Metadata[Snapshot] | None:
    ts = load_timestamp(feed)
    if ts is None:
        return None
    return Metadata[Snapshot].from_file(str(feed / "metadata" / f"{ts.signed.snapshot_meta.version}.snapshot.json"))


def load_targets(feed: Path) -> Metadata[Targets] | None:
    snap = load_snapshot(feed)
    if snap is None:
        return None
    version = snap.signed.meta["targets.json"].version
    return Metadata[Targets].from_file(str(feed / "metadata" / f"{version}.targets.json"))


def _check_keys(feed: Path, signers: Mapping[str, CryptoSigner]) -> None:
    root = load_root(feed).signed
    for role in ROLES:
        if signers[role].public_key.keyid not in root.roles[role].keyids:
            raise ToolError(f"The {role} key does not sign this feed ({root_path(feed)}): use the keys the feed was "
                            "made with.")


def stored_path(feed: Path, path: str, sha256: str) -> Path:
    """Where target ``path`` with this hash lives in the feed (consistent snapshots)."""
    dirname, _, basename = path.rpartition("/")
    return feed / "targets" / dirname / f"{sha256}.{basename}"


def _add_target(feed: Path, targets: Targets, path: str, data: bytes, *, replace: bool) -> Path:
    info = TargetFile.from_data(path, data, ["sha256"])
    old = targets.targets.get(path)
    if old is not None and old.hashes != info.hashes and not replace:
        raise ToolError(f"{path} is published already with other content: publish a new version instead (clients "
                        "may have the old one).")
    out = stored_path(feed, path, info.hashes["sha256"])
    if not out.exists():
        _write(out, data)
    targets.targets[path] = info
    return out


def _sign_release(feed: Path, signers: Mapping[str, CryptoSigner], targets: Targets, *, now: datetime,
                  expires: timedelta | None, timestamp_expires: timedelta | None) -> None:
    """Sign and write a new targets, snapshot and timestamp (in that order: the timestamp makes the release)."""
    metadata = feed / "metadata"
    old_ts = load_timestamp(feed)
    old_snap = load_snapshot(feed)
    targets.version = targets.version + 1 if old_snap is not None else 1
    targets.expires = now + (expires or EXPIRES["targets"])
    tmd = Metadata(targets)
    tmd.sign(signers["targets"])
    _write(metadata / f"{targets.version}.targets.json", _dump(tmd))

    snapshot = Snapshot(version=old_snap.signed.version + 1 if old_snap else 1,
                        expires=now + (expires or EXPIRES["snapshot"]),
                        meta={"targets.json": MetaFile(version=targets.version)})
    smd = Metadata(snapshot)
    smd.sign(signers["snapshot"])
    _write(metadata / f"{snapshot.version}.snapshot.json", _dump(smd))

    timestamp = Timestamp(version=old_ts.signed.version + 1 if old_ts else 1,
                          expires=now + (timestamp_expires if timestamp_expires is not None else EXPIRES["timestamp"]),
                          snapshot_meta=MetaFile(version=snapshot.version))
    tsmd = Metadata(timestamp)
    tsmd.sign(signers["timestamp"])
    _write(metadata / "timestamp.json", _dump(tsmd))
    fsync_dir(metadata)


def _compatibility(feed: Path, targets: Targets) -> Compatibility:
    info = targets.targets.get(TARGET_COMPATIBILITY)
    if info is None:
        return Compatibility(agents={})
    data = stored_path(feed, TARGET_COMPATIBILITY, info.hashes["sha256"]).read_bytes()
    try:
        return Compatibility.from_json(json.loads(data))
    except (ValueError, UpdateError):
        print(f"Warning: the published {TARGET_COMPATIBILITY} is not valid; starting it again.", file=sys.stderr)
        return Compatibility(agents={})


def _open_release(feed: Path, keys: Path, when: datetime) -> tuple[dict[str, CryptoSigner], Targets]:
    """The signing keys (made, with the repository, on a first release) and the targets metadata to add to."""
    signers = ensure_keys(keys, create=not _has_root(feed))
    ensure_repository(feed, signers, now=when)
    _check_keys(feed, signers)
    current = load_targets(feed)
    return signers, current.signed if current is not None else Targets()


def publish(feed: Path, keys: Path, *, version: str, agents: Sequence[str], source: Path,
            requires: Mapping[str, Mapping[str, str]] = {},
            now: datetime | None = None, timestamp_expires: timedelta | None = None,
            expires: timedelta | None = None) -> list[Path]:
    """Build the packages of ``agents`` at ``version`` from the checkout ``source``, publish them with their
    compatibility entries (``requires``: ``{agent: {other: min version}}``) and sign a new release. Makes
    the keys and the repository if missing. ``now`` (default: the current time) and the expiry periods
    let tests publish metadata that has already expired. Returns the files published in the feed (the
    packages, then compatibility.json). Raises :class:`ToolError` or :class:`UpdateError`."""
    try:
        parse_version(version)
    except ValueError as exc:
        raise ToolError(f"{exc}.") from None
    unknown = [a for a in agents if a not in AGENT_ORDER]
    if unknown or not agents:
        raise ToolError(f"Unknown agents {', '.join(unknown) or '(none)'}: use some of {', '.join(AGENT_ORDER)}.")
    for name, needs in requires.items():
        for other, minimum in needs.items():
            if name not in AGENT_ORDER or other not in AGENT_ORDER:
                raise ToolError(f"--requires {name}:{other}: both must be agents ({', '.join(AGENT_ORDER)}).")
            parse_version(minimum)
    when = _now(now)
    signers, targets = _open_release(feed, keys, when)
    compatibility = _compatibility(feed, targets)
    published: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="godwit-release-") as tmp:
        for name in agents:
            package = build_package(source, name=name, version=version, out_dir=Path(tmp))
            manifest = read_manifest(package)
            path = target_path(name, version)
            published.append(_add_target(feed, targets, path, package.read_bytes(), replace=False))
            earlier = compatibility.release(name, version)  # the same package again: keep what it required
            needs = dict(requires[name]) if name in requires else dict(earlier.requires if earlier else {})
            compatibility.agents.setdefault(name, {})[version] = AgentRelease(
                name=name, version=version, links=dict(manifest.links), requires=needs)
    compat_bytes = (json.dumps(compatibility.to_json(), indent=2, sort_keys=True) + "\n").encode()
    published.append(_add_target(feed, targets, TARGET_COMPATIBILITY, compat_bytes, replace=True))
    _sign_release(feed, signers, targets, now=when, expires=expires, timestamp_expires=timestamp_expires)
    for path in [*(target_path(name, version) for name in agents), TARGET_COMPATIBILITY]:
        info = targets.targets[path]
        print(f"Published {path} ({info.length} bytes, sha256 {info.hashes['sha256']}) in {feed}")
    return published


def publish_target(feed: Path, keys: Path, path: str, data: bytes, *, now: datetime | None = None) -> Path:
    """Publish (or replace) one arbitrary target and sign a new release: for tests that need a correctly
    signed but wrong file (a malformed compatibility.json)."""
    when = _now(now)
    signers, targets = _open_release(feed, keys, when)
    out = _add_target(feed, targets, path, data, replace=True)
    _sign_release(feed, signers, targets, now=when, expires=None, timestamp_expires=None)
    return out


def timestamp_bytes(feed: Path, keys: Path, *, expires: datetime, version: int | None = None) -> bytes:
    """A timestamp for the feed's current snapshot, signed with ``keys``' timestamp key (which need not be
    the feed's: tests forge one with a key the root does not name), at ``version`` (default: the next)."""
    signer = ensure_keys(keys)["timestamp"]
    old = load_timestamp(feed)
    if old is None:
        raise ToolError(f"{feed} has no release yet: publish one first.")
    timestamp = Timestamp(version=version if version is not None else old.signed.version + 1,
                          expires=expires.astimezone(UTC).replace(microsecond=0),
                          snapshot_meta=MetaFile(version=old.signed.snapshot_meta.version))
    md = Metadata(timestamp)
    md.sign(signer)
    return _dump(md)


def write_timestamp(feed: Path, keys: Path, *, expires: datetime, version: int | None = None) -> Path:
    """Re-sign the feed's timestamp (:func:`timestamp_bytes`) and write it: how a maintainer keeps a feed fresh
    between releases."""
    path = feed / "metadata" / "timestamp.json"
    _write(path, timestamp_bytes(feed, keys, expires=expires, version=version))
    return path


def renew_root(feed: Path, keys: Path, *, now: datetime | None = None) -> Path:
    """Sign the next root version (the same keys, expiring 365 days from ``now``) and write ``N.root.json``.
    Do this before the root expires: a client whose newest root has expired refuses the feed. Clients
    walk the chain of root versions from the one they trust, so every ``N.root.json`` stays published."""
    when = _now(now)
    signers = ensure_keys(keys, create=False)
    _check_keys(feed, signers)
    root = load_root(feed).signed
    root.version += 1
    root.expires = when + EXPIRES["root"]
    md = Metadata(root)
    md.sign(signers["root"])
    out = feed / "metadata" / f"{root.version}.root.json"
    _write(out, _dump(md))
    print(f"Root version {root.version}, expiring {root.expires:%Y-%m-%d}: {out}")
    return out


def export_root(feed: Path, out: Path) -> Path:
    """Copy the feed's newest root metadata to ``out`` (what Godwit ships as its trusted root)."""
    source = root_path(feed)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, out)
    print(f"Root {source.name} (sha256 {hashlib.sha256(source.read_bytes()).hexdigest()}) -> {out}")
    return out


# --- command line -----------------------------------------------------------------------------------
def _parse_requires(values: Sequence[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for value in values:
        match = _REQUIRES.match(value.strip())
        if match is None:
            raise ToolError(f"--requires {value!r}: write AGENT:OTHER>=VERSION, e.g. "
                            "process-server:log-processor>=0.3.0.")
        out.setdefault(match.group(1), {})[match.group(2)] = match.group(3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Publish Godwit agent releases to a TUF update feed.")
    parser.add_argument("--feed", type=Path, required=True, help="the feed repository (made if missing)")
    parser.add_argument("--keys", type=Path, required=True, help="the signing keys, one per role (made if missing)")
    parser.add_argument("--version", help="the version to publish, MAJOR.MINOR.PATCH")
    parser.add_argument("--agents", default="all", help=f"comma-separated, of {','.join(AGENT_ORDER)}; or all")
    parser.add_argument("--source", type=Path, default=REPO_ROOT, help="the checkout to build (default: this one)")
    parser.add_argument("--requires", action="append", default=[], metavar="AGENT:OTHER>=VER",
                        help="AGENT at this version needs OTHER at VER or newer (repeat as needed)")
    parser.add_argument("--expires-days", type=int, help="days until targets and snapshot expire (90 and 30)")
    parser.add_argument("--timestamp-expires-hours", type=float, help="hours until the timestamp expires (168)")
    parser.add_argument("--renew-root", action="store_true",
                        help="sign the next root version with the same keys (before the root expires)")
    parser.add_argument("--export-root", type=Path, metavar="FILE", help="write the current root.json there")
    args = parser.parse_args(argv)
    try:
        if args.version is None and args.export_root is None and not args.renew_root:
            raise ToolError("give --version to publish, --renew-root, or --export-root FILE.")
        if args.renew_root:
            renew_root(args.feed, args.keys)
        if args.version is not None:
            agents = list(AGENT_ORDER) if args.agents == "all" else [a.strip() for a in args.agents.split(",") if a]
            if args.expires_days is not None and args.expires_days < 1:
                raise ToolError("--expires-days must be at least 1.")
            if args.timestamp_expires_hours is not None and args.timestamp_expires_hours <= 0:
                raise ToolError("--timestamp-expires-hours must be more than 0.")
            publish(args.feed, args.keys, version=args.version, agents=agents, source=args.source,
                    requires=_parse_requires(args.requires),
                    expires=timedelta(days=args.expires_days) if args.expires_days else None,
                    timestamp_expires=timedelta(hours=args.timestamp_expires_hours)
                    if args.timestamp_expires_hours else None)
        elif not args.renew_root:
            signers = ensure_keys(args.keys, create=not _has_root(args.feed))
            ensure_repository(args.feed, signers)
            _check_keys(args.feed, signers)
        if args.export_root is not None:
            export_root(args.feed, args.export_root)
    except (ToolError, UpdateError) as exc:
        print(f"release: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
