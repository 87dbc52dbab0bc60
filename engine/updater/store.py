"""The agent versions installed under the data directory, and the atomic switch between them.

Layout, one folder per agent (``<data>/agents/<name>/``)::

    <version>/            an unpacked package: agent.json and the engine/ tree it runs from
    current.json          {"version", "previous", "bootstrap", "digest"}: which version runs; written
                          whole (temp file, fsync, rename, fsync of the folder): the switch
    update.json           the journal of an install in progress: {"from", "to", "stage"}
    .partial-*            an unpack in progress (removed at the next start)

The supervisor reads ``current.json`` at every start of an agent (:class:`~engine.supervisor.Launcher`),
so switching is writing that file and restarting the agent. Two versions are kept: the current one
and the previous one, for rollback.

The **bootstrap** version is the engine's own code, copied here at the first start (and again when
the engine installed on this machine is newer, or is the same version with other code: a
developer's tree). Its ``__pycache__`` is copied with it, modification times kept, so the agents
need not compile it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import engine
from engine.errors import UpdateError
from engine.files import fsync_dir, write_atomically
from engine.links import Link
from engine.updater import AGENT_MODULES
from engine.updater.package import PACKAGE_FORMAT, PackageManifest, parse_version, unpack_package

log = logging.getLogger(__name__)

#: Install stages as the journal records them; an install found at another stage than ``done`` at start was
#: interrupted (a kill -9 or a power cut of the supervisor).
Stage = str


@dataclass(frozen=True)
class Installed:
    """The version of an agent that runs."""

    name: str
    version: str
    #: The directory the agent's code is imported from (it holds ``engine/``).
    path: Path
    previous: str | None
    bootstrap: bool

    def __repr__(self) -> str:
        return f"<Installed {self.name} {self.version} previous={self.previous} bootstrap={self.bootstrap}>"


def engine_links() -> dict[str, str]:
    """The link versions this engine speaks (what its own agents speak)."""
    from engine.links.admin import ADMIN
    from engine.links.agent import AGENT_LINK
    from engine.links.data import DATA
    from engine.links.management import MANAGEMENT

    links: tuple[Link, ...] = (MANAGEMENT, DATA, AGENT_LINK, ADMIN)
    return {link.name: f"{link.major}.{link.minor}" for link in links}


def tree_digest(engine_dir: Path) -> str:
    """What identifies a tree of engine code cheaply: the path, size and modification time of every source
    file (a developer's edit changes it; copying with times kept does not)."""
    h = hashlib.sha256()
    for path in sorted(engine_dir.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(engine_dir)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


class AgentStore:
    """The installed versions of every agent, under one folder of the data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"<AgentStore {self.root}>"

    # --- reading ----------------------------------------------------------------------------------
    def folder(self, name: str) -> Path:
        return self.root / name

    def version_dir(self, name: str, version: str) -> Path:
        parse_version(version)  # never a path out of the folder
        return self.folder(name) / version

    def _record(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.folder(name) / "current.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("agents.current-unreadable name=%s: %s", name, exc)
            return None
        return data if isinstance(data, dict) and isinstance(data.get("version"), str) else None

    def current(self, name: str) -> Installed | None:
        """The version that runs, or None before the first start (the engine's own code then)."""
        data = self._record(name)
        if data is None:
            return None
        try:
            path = self.version_dir(name, data["version"])
        except ValueError:
            return None
        previous = data.get("previous")
        return Installed(name=name, version=data["version"], path=path,
                         previous=previous if isinstance(previous, str) else None,
                         bootstrap=bool(data.get("bootstrap")))

    def manifest(self, name: str, version: str) -> PackageManifest | None:
        """The manifest of an installed version (None if it is not installed whole)."""
        try:
            return PackageManifest.from_json(json.loads((self.version_dir(name, version) / "agent.json").read_text()))
        except (OSError, ValueError, UpdateError):
            return None

    def versions(self, name: str) -> list[str]:
        """The versions unpacked here, oldest first."""
        out = []
        with contextlib.suppress(FileNotFoundError):
            for entry in self.folder(name).iterdir():
                with contextlib.suppress(ValueError):
                    parse_version(entry.name)
                    if entry.is_dir():
                        out.append(entry.name)
        return sorted(out, key=parse_version)

    # --- the switch ---------------------------------------------------------------------------------
    def _write_record(self, name: str, *, version: str, previous: str | None, bootstrap: tuple[str, str] | None = None
                      ) -> Installed:
        """Write current.json whole. ``bootstrap`` is (version, digest) of the engine's own code when that was just
        installed; otherwise the one recorded before is kept (a rollback may go back to it)."""
        folder = self.folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        before = self._record(name) or {}
        boot_version, digest = bootstrap or (before.get("bootstrap_version"), before.get("digest"))
        record = {"version": version, "previous": previous, "bootstrap": version == boot_version,
                  "bootstrap_version": boot_version, "digest": digest}
        write_atomically(folder / "current.json", json.dumps(record).encode(), mode=0o644)
        installed = self.current(name)
        assert installed is not None
        return installed

    def switch(self, name: str, version: str) -> Installed:
        """Make ``version`` (unpacked whole) the one that runs; the one that ran becomes the previous.
        Durable when it returns; the agent runs it from its next start."""
        if self.manifest(name, version) is None:
            raise UpdateError(f"{name} {version} is not installed whole on this appliance; update it again.")
        now = self.current(name)
        if now is not None and now.version == version:
            return now
        installed = self._write_record(name, version=version, previous=now.version if now else None)
        log.info("agents.switched name=%s version=%s previous=%s", name, version, installed.previous)
        return installed

    def rollback(self, name: str) -> Installed:
        """Switch back to the previous version; the one rolled back from becomes the previous (so the admin can
        go forward again)."""
        now = self.current(name)
        if now is None or now.previous is None or self.manifest(name, now.previous) is None:
            raise UpdateError(f"{name} has no previous version to roll back to.")
        installed = self._write_record(name, version=now.previous, previous=now.version)
        log.info("agents.rolled-back name=%s version=%s from=%s", name, installed.version, now.version)
        return installed

    # --- installing ----------------------------------------------------------------------------------
    def unpack(self, name: str, archive: Path, version: str) -> PackageManifest:
        """Unpack a verified package beside the installed versions (whole or not at all). A version already
        unpacked whole is kept as it is."""
        existing = self.manifest(name, version)
        if existing is not None:
            return existing
        dest = self.version_dir(name, version)
        if dest.exists():  # there but not whole: never a state a switch can point to; unpack again
            shutil.rmtree(dest, ignore_errors=True)
        self.folder(name).mkdir(parents=True, exist_ok=True)
        return unpack_package(archive, dest, name=name, version=version)

    def ensure_bootstrap(self, name: str) -> Installed:
        """Install the engine's own code as a version of ``name`` when nothing is installed yet, when the engine
        on this machine is newer than what runs, or when it is the bootstrap version itself with other code
        (a developer's tree). Returns what runs now."""
        version = engine.__version__
        engine_dir = Path(engine.__file__).resolve().parent
        digest = tree_digest(engine_dir)
        now = self.current(name)
        record = self._record(name) or {}
        if now is not None and self.manifest(name, now.version) is not None:
            newer = parse_version(version) > parse_version(now.version)
            same_but_other = now.bootstrap and now.version == version and record.get("digest") != digest
            if not newer and not same_but_other:
                return now
        dest = self.version_dir(name, version)
        partial = self.folder(name) / f".partial-{name}-{version}-{uuid.uuid4().hex[:8]}"
        self.folder(name).mkdir(parents=True, exist_ok=True)
        try:
            if AGENT_MODULES.get(name) is not None:  # the mobility package is served, never run: no code to copy
                shutil.copytree(engine_dir, partial / "engine", copy_function=shutil.copy2,
                                ignore=shutil.ignore_patterns("*.tmp"))
            else:
                partial.mkdir()
            manifest = PackageManifest(name=name, version=version, module=AGENT_MODULES.get(name),
                                       links=engine_links())
            write_atomically(partial / "agent.json", json.dumps(manifest.to_json()).encode(), mode=0o644)
            old = None
            if dest.exists():
                old = dest.with_name(f".old-{version}-{uuid.uuid4().hex[:8]}")
                os.rename(dest, old)
            os.rename(partial, dest)
            fsync_dir(dest.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise UpdateError(f"Could not install the engine's own {name} {version} in {self.folder(name)}: "
                              f"{exc.strerror or exc}. Free some space and start the engine again.") from exc
        previous = now.version if now is not None and now.version != version else (now.previous if now else None)
        installed = self._write_record(name, version=version, previous=previous, bootstrap=(version, digest))
        log.info("agents.bootstrap name=%s version=%s package=%s", name, version, PACKAGE_FORMAT)
        return installed

    def prune(self, name: str) -> list[str]:
        """Remove every version that is neither current nor previous, and unpacks left by a crash. Returns the
        versions removed."""
        now = self.current(name)
        keep = {now.version, now.previous} if now else set()
        removed = []
        with contextlib.suppress(FileNotFoundError):
            for entry in self.folder(name).iterdir():
                if entry.name.startswith((".partial-", ".old-")):
                    shutil.rmtree(entry, ignore_errors=True)
                elif entry.is_dir() and entry.name not in keep:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry.name)
        return removed

    # --- the journal of an install ---------------------------------------------------------------------
    def begin(self, name: str, *, from_version: str, to_version: str) -> None:
        self.mark(name, {"from": from_version, "to": to_version, "stage": "downloading"})

    def mark(self, name: str, journal: dict[str, Any]) -> None:
        """Record where an install stands (durable when it returns)."""
        self.folder(name).mkdir(parents=True, exist_ok=True)
        write_atomically(self.folder(name) / "update.json", json.dumps(journal).encode(), mode=0o644)

    def stage(self, name: str, stage: Stage) -> None:
        journal = self.journal(name)
        if journal is not None:
            self.mark(name, {**journal, "stage": stage})

    def journal(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.folder(name) / "update.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def end(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder(name) / "update.json").unlink()
            fsync_dir(self.folder(name))
