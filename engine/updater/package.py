"""An agent package: its format, building one from a checkout, reading and unpacking one.

The format (version 1, ``PACKAGE_FORMAT``):

- a gzip-compressed POSIX tar (pax) archive, built deterministically: members sorted by name, every
  mtime 0, uid/gid 0 with empty owner names, mode 0755 for folders and executable files and 0644 for
  the rest, a gzip header without a file name and with mtime 0. The same checkout gives the same
  bytes, so a release can be rebuilt and compared.
- ``agent.json`` at the root (:class:`PackageManifest`): which agent and version this is, the module
  the supervisor runs, and the link protocol versions this build speaks.
- ``engine/``: the whole engine library of the checkout (every ``*.py`` file and the ``*.json`` and
  ``*.txt`` package data, never ``__pycache__``). Every agent ships all of it because agents share it;
  the agent's own module is named in the manifest.

Only regular files and folders are allowed; at most ``MAX_MEMBERS`` members and ``MAX_PACKAGE_BYTES``
both packed and unpacked.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import posixpath
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from engine.diskspace import NO_SPACE
from engine.errors import UpdateError
from engine.files import fsync_dir, fsync_tree
from engine.updater import AGENT_MODULES, AGENT_ORDER, version_tuple

log = logging.getLogger(__name__)

PACKAGE_FORMAT = "godwit-agent"
#: The cap on a package's size, and on its unpacked size.
MAX_PACKAGE_BYTES = 64 * 1024 * 1024
#: The cap on the number of members of a package (the engine has under a hundred files).
MAX_MEMBERS = 5000
#: The name of the manifest at the root of a package.
MANIFEST = "agent.json"
#: The package data shipped with the engine's Python files.
_DATA_SUFFIXES = (".py", ".json", ".txt")
_MANIFEST_MAX = 64 * 1024
#: A link's name and version as a manifest or the compatibility record names them ("management", "1.2").
LINK_NAME = re.compile(r"^[a-z-]{1,32}$")
LINK_VERSION = re.compile(r"^(\d{1,4})\.(\d{1,4})$")
_MODULE = re.compile(r"^engine(\.[a-z_][a-z0-9_]*)+$")


def parse_version(text: str) -> tuple[int, int, int]:
    """``"MAJOR.MINOR.PATCH"`` as a comparable tuple (:func:`~engine.updater.version_tuple`); ValueError if it is
    not one."""
    parsed = version_tuple(text)
    if parsed is None:
        raise ValueError(f"{text!r} is not a version (MAJOR.MINOR.PATCH, digits only, each at most 9999)")
    return parsed


@dataclass(frozen=True)
class PackageManifest:
    """``agent.json``: which agent and version a package holds and what it speaks."""

    #: One of :data:`engine.updater.AGENT_ORDER`.
    name: str
    #: ``MAJOR.MINOR.PATCH`` (:func:`parse_version`).
    version: str
    #: The module the supervisor runs (:data:`engine.updater.AGENT_MODULES`); None for the mobility package.
    module: str | None
    #: The link protocol versions this build speaks: ``{"management": "1.1", "agent": "1.1", ...}``.
    links: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"format": PACKAGE_FORMAT, "name": self.name, "version": self.version, "module": self.module,
                "links": dict(sorted(self.links.items()))}

    @classmethod
    def from_json(cls, data: Any) -> PackageManifest:
        """The manifest from its JSON values; :class:`UpdateError` naming the first thing wrong with it."""

        def bad(why: str) -> UpdateError:
            return UpdateError(f"The package manifest ({MANIFEST}) {why}: this is not a Godwit agent package. "
                               "Download the package again from the update feed.")

        if not isinstance(data, dict):
            raise bad("is not a JSON object")
        if data.get("format") != PACKAGE_FORMAT:
            raise bad(f"has format {str(data.get('format'))[:40]!r}, not {PACKAGE_FORMAT!r}")
        name, version, module, links = (data.get(k) for k in ("name", "version", "module", "links"))
        if not isinstance(name, str) or name not in AGENT_ORDER:
            raise bad(f"names agent {str(name)[:40]!r}, which is not one of {', '.join(AGENT_ORDER)}")
        if not isinstance(version, str):
            raise bad("has no version")
        try:
            parse_version(version)
        except ValueError:
            raise bad(f"has version {version[:40]!r}, not MAJOR.MINOR.PATCH") from None
        if module is not None and (not isinstance(module, str) or not _MODULE.match(module)):
            raise bad(f"names module {str(module)[:60]!r}, which is not an engine module")
        if not isinstance(links, dict) or not all(
                isinstance(k, str) and LINK_NAME.match(k) and isinstance(v, str) and LINK_VERSION.match(v)
                for k, v in links.items()):
            raise bad("has link versions that are not {name: \"MAJOR.MINOR\"}")
        return cls(name=name, version=version, module=module, links=dict(links))


# --- links of a checkout ----------------------------------------------------------------------------
_LINKS_SCRIPT = """
import importlib, json, os, pkgutil, sys
root = os.path.realpath(sys.argv[1])
import engine, engine.links
where = os.path.realpath(engine.__file__)
if not where.startswith(root + os.sep):
    sys.exit("engine was imported from " + where + ", not from " + root)
out = {}
for info in pkgutil.iter_modules(engine.links.__path__):
    module = importlib.import_module("engine.links." + info.name)
    for value in vars(module).values():
        if isinstance(value, engine.links.Link):
            out[value.name] = "%d.%d" % (value.major, value.minor)
print(json.dumps(out, sort_keys=True))
"""


def links_of(source_root: Path) -> dict[str, str]:
    """The link protocol versions (``name -> "major.minor"``) of the checkout at ``source_root``: every
    :class:`~engine.links.Link` defined in its ``engine.links`` modules.

    A different tree cannot be imported into this process (its ``engine`` would clash with ours), so
    this runs ``sys.executable -P -B`` with ``PYTHONPATH=source_root``, which imports nothing from the
    current directory and writes no ``__pycache__`` into the checkout. Raises :class:`UpdateError` if
    that fails."""
    root = source_root.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(root)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    try:
        res = subprocess.run([sys.executable, "-P", "-B", "-c", _LINKS_SCRIPT, str(root)], env=env, cwd=root,
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpdateError(f"Could not read the link versions of {root}: {exc}. Check that it is a Godwit "
                          "checkout.") from exc
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise UpdateError(f"Could not read the link versions of {root}: {last}. Check that it is a Godwit "
                          "checkout that imports.")
    try:
        links = json.loads(res.stdout)
    except ValueError as exc:
        raise UpdateError(f"Could not read the link versions of {root}: it printed {res.stdout[:80]!r}.") from exc
    if not isinstance(links, dict) or not all(isinstance(v, str) for v in links.values()):
        raise UpdateError(f"Could not read the link versions of {root}: it printed {res.stdout[:80]!r}.")
    return {str(k): str(v) for k, v in links.items()}


# --- building ---------------------------------------------------------------------------------------
def _engine_files(source_root: Path) -> list[tuple[str, Path]]:
    """``(archive name, file)`` for every file of ``source_root/engine`` a package carries, sorted."""
    engine_dir = source_root / "engine"
    if not (engine_dir / "__init__.py").is_file():
        raise UpdateError(f"{source_root} has no engine/__init__.py: give the root of a Godwit checkout.")
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(engine_dir):
        # Caches and hidden folders (editor, tool state) are never part of the engine.
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for filename in sorted(filenames):
            if filename.startswith(".") or not filename.endswith(_DATA_SUFFIXES):
                continue
            path = Path(dirpath, filename)
            if not stat.S_ISREG(path.lstat().st_mode):
                raise UpdateError(f"{path} is not a regular file (a link?): a package holds only files. "
                                  "Replace it with the file itself.")
            found.append((path.relative_to(source_root).as_posix(), path))
    return sorted(found)


def _member(name: str, *, size: int = 0, directory: bool = False, executable: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory or executable else 0o644
    info.size = 0 if directory else size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_package(source_root: Path, *, name: str, version: str, out_dir: Path) -> Path:
    """Build the package of agent ``name`` at ``version`` from the checkout at ``source_root`` and write it
    to ``out_dir/{name}-{version}.tar.gz`` (replacing one there: the file is whole or absent, durable when
    this returns). Deterministic: the same checkout gives the same bytes. Raises :class:`UpdateError`."""
    if name not in AGENT_ORDER:
        raise UpdateError(f"{name!r} is not an agent: use one of {', '.join(AGENT_ORDER)}.")
    try:
        parse_version(version)
    except ValueError as exc:
        raise UpdateError(f"{exc}: give a version such as 0.2.0.") from None
    log.info("package.build.started name=%s version=%s source=%s", name, version, source_root)
    files = _engine_files(source_root)
    manifest = PackageManifest(name=name, version=version, module=AGENT_MODULES[name], links=links_of(source_root))
    manifest_bytes = (json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n").encode()

    entries: dict[str, tuple[Path | None, bytes | None]] = {MANIFEST: (None, manifest_bytes)}
    for arcname, path in files:
        parent = posixpath.dirname(arcname)
        while parent and parent not in entries:
            entries[parent] = (None, None)
            parent = posixpath.dirname(parent)
        entries[arcname] = (path, None)
    if len(entries) > MAX_MEMBERS:
        raise UpdateError(f"The package would hold {len(entries)} members, more than {MAX_MEMBERS}.")

    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}-{version}.tar.gz"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out_dir)
    tmp = Path(tmp_name)
    unpacked = 0
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz, \
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for arcname in sorted(entries):
                    source, data = entries[arcname]
                    if source is None and data is None:
                        tar.addfile(_member(arcname, directory=True))
                        continue
                    if data is None:
                        assert source is not None
                        data = source.read_bytes()
                        executable = bool(source.stat().st_mode & stat.S_IXUSR)
                    else:
                        executable = False
                    unpacked += len(data)
                    if unpacked > MAX_PACKAGE_BYTES:
                        raise UpdateError(f"The package would unpack to more than {MAX_PACKAGE_BYTES} bytes.")
                    tar.addfile(_member(arcname, size=len(data), executable=executable), io.BytesIO(data))
            raw.flush()
            os.fsync(raw.fileno())
        size = tmp.stat().st_size
        if size > MAX_PACKAGE_BYTES:
            raise UpdateError(f"The package would be {size} bytes, more than {MAX_PACKAGE_BYTES}.")
        os.replace(tmp, out)
        fsync_dir(out_dir)
    except OSError as exc:
        raise UpdateError(f"Could not write {out}: {exc.strerror or exc}. Check the folder and its free space.") \
            from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("package.build.complete name=%s version=%s files=%d bytes=%d unpacked=%d path=%s", name, version,
             len(files), size, unpacked, out)
    return out


# --- reading ----------------------------------------------------------------------------------------
def _damaged(archive: Path, why: str) -> UpdateError:
    return UpdateError(f"The package {archive.name} is damaged or not a package ({why}): download it again "
                       "from the update feed.")


def read_manifest(archive: Path) -> PackageManifest:
    """The manifest of the package at ``archive`` (read without unpacking anything). Raises
    :class:`UpdateError` for a file that is not a package."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name != MANIFEST:
                    continue
                if not member.isfile() or member.size > _MANIFEST_MAX:
                    raise _damaged(archive, f"its {MANIFEST} is not a small file")
                f = tar.extractfile(member)
                assert f is not None
                return _parse_manifest(archive, f)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise _damaged(archive, type(exc).__name__) from exc
    except OSError as exc:
        if exc.errno is None:  # gzip.BadGzipFile and friends: the content, not the disk
            raise _damaged(archive, "not gzip") from exc
        raise UpdateError(f"Could not read {archive}: {exc.strerror}.") from exc
    raise _damaged(archive, f"it has no {MANIFEST}")


def _parse_manifest(archive: Path, f: IO[bytes]) -> PackageManifest:
    try:
        data = json.loads(f.read(_MANIFEST_MAX + 1))
    except ValueError as exc:
        raise _damaged(archive, f"its {MANIFEST} is not JSON") from exc
    return PackageManifest.from_json(data)


# --- unpacking --------------------------------------------------------------------------------------
def _unsafe(archive: Path, member: tarfile.TarInfo, why: str) -> UpdateError:
    return UpdateError(f"The package {archive.name} holds {member.name[:120]!r}, {why}; a package holds only files "
                       "and folders inside it. Refused: download it again from the update feed.")


def _checked_members(archive: Path, tar: tarfile.TarFile, seen: dict[str, int]) -> list[tarfile.TarInfo]:
    """Every member of ``tar``, each checked, read before anything is extracted (headers only: stops at the
    first member over a cap, so a hostile archive costs little)."""
    members: list[tarfile.TarInfo] = []
    total = 0
    for count, member in enumerate(tar, start=1):
        if count > MAX_MEMBERS:
            raise _damaged(archive, f"more than {MAX_MEMBERS} members")
        if not (member.isfile() or member.isdir()):
            raise _unsafe(archive, member, "which is not a regular file or a folder")
        name = member.name
        norm = posixpath.normpath(name)
        if name.startswith("/") or norm == ".." or norm.startswith("../") or "\\" in name or "\0" in name:
            raise _unsafe(archive, member, "which points outside the package")
        total += member.size
        if total > MAX_PACKAGE_BYTES:
            raise _damaged(archive, f"it unpacks to more than {MAX_PACKAGE_BYTES} bytes")
        seen[norm] = member.size
        members.append(member)
    return members


def unpack_package(archive: Path, dest: Path, *, name: str, version: str) -> PackageManifest:
    """Unpack the package ``archive``, which must be agent ``name`` at ``version``, into ``dest``.

    ``dest`` must not exist. Every member header is checked first (regular files and folders only, nothing
    outside, at most ``MAX_MEMBERS`` members and ``MAX_PACKAGE_BYTES`` unpacked); then the package is
    unpacked into a sibling ``.partial-<name>-<version>-<random>`` folder (tar's ``data`` filter as a
    second guard), its manifest checked, every file and folder fsynced, then renamed to ``dest`` and
    ``dest.parent`` fsynced: when this returns ``dest`` is whole and durable. On any failure the partial
    folder is removed, ``dest`` does not exist, and :class:`UpdateError` says what happened and what to do."""
    if dest.exists() or dest.is_symlink():
        raise UpdateError(f"{dest} exists already: {name} {version} is unpacked there or something else is. "
                          "Remove it and try again.")
    log.info("package.unpack.started name=%s version=%s archive=%s dest=%s", name, version, archive, dest)
    partial = dest.parent / f".partial-{name}-{version}-{secrets.token_hex(4)}"
    seen: dict[str, int] = {}
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial.mkdir()
        try:
            size = archive.stat().st_size
            if size > MAX_PACKAGE_BYTES:
                raise _damaged(archive, f"{size} bytes, more than {MAX_PACKAGE_BYTES}")
            with tarfile.open(archive, "r:gz") as tar:
                tar.errorlevel = 2  # every extraction problem is an error, never a log line
                members = _checked_members(archive, tar, seen)
                tar.extractall(partial, members=members, filter="data")
            if seen.get(MANIFEST) is None:
                raise _damaged(archive, f"it has no {MANIFEST}")
            with open(partial / MANIFEST, "rb") as f:
                manifest = _parse_manifest(archive, f)
            if (manifest.name, manifest.version) != (name, version):
                raise UpdateError(f"The package {archive.name} is {manifest.name} {manifest.version}, not {name} "
                                  f"{version}: it was published or named wrongly. Refused: download {name} {version} "
                                  "again from the update feed.")
            fsync_tree(partial)
            if dest.exists() or dest.is_symlink():  # appeared meanwhile: never replace it
                raise UpdateError(f"{dest} appeared while {name} {version} was unpacked. Remove it and try again.")
            os.rename(partial, dest)
            fsync_dir(dest.parent)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    except UpdateError:
        raise
    except tarfile.FilterError as exc:
        member = getattr(exc, "tarinfo", None)
        what = member.name[:120] if isinstance(member, tarfile.TarInfo) else "a member"
        raise UpdateError(f"The package {archive.name} holds {what!r}, which cannot be unpacked safely; a package "
                          "holds only files and folders inside it. Refused: download it again from the update "
                          "feed.") from exc
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise _damaged(archive, type(exc).__name__) from exc
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise UpdateError(f"Not enough space in {dest.parent} to unpack {name} {version}: free some space and "
                              "try again.") from exc
        if exc.errno is None:  # gzip.BadGzipFile: the content, not the disk
            raise _damaged(archive, "not gzip") from exc
        raise UpdateError(f"Could not unpack {name} {version} into {dest.parent}: {exc.strerror}. Check the folder "
                          "and try again.") from exc
    log.info("package.unpack.complete name=%s version=%s members=%d bytes=%d dest=%s", name, version, len(seen),
             sum(seen.values()), dest)
    return manifest
