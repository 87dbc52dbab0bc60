"""The mobility versions a source server installed from its appliance, and which one runs.

Layout under the service's ``--state-dir``::

    versions/<version>/       an unpacked mobility package (agent.json and the engine/ tree it runs from)
    mobility-version.json     {"current", "previous", "trial_until", "confirmed", "report"}: which version runs;
                              written whole (temp file, fsync, rename, fsync of the folder): the switch
    feed-metadata/            the update feed's metadata trusted so far (TUF: never rolled back)
    downloads/                a package while it is verified and unpacked (removed afterwards)

The code installed on the machine (``godwit mobility run``) is the launcher and the bootstrap version: while
no installed version newer than itself is current, it runs the service itself (:func:`plan` is None).
Otherwise it runs the current version as a child process (:mod:`engine.mobility.launcher`).

A switch to a new version starts a **trial**: ``trial_until`` (wall clock) is when the new version must have
reached the appliance (``confirmed``, written by its first heartbeat that got through); until then, and
until ``trial_until`` even once confirmed, a new version that exits on its own is rolled back to ``previous``.
``report`` is the outcome to tell the appliance with the next heartbeat that gets through (updated,
rolled-back), removed once told.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import UpdateError
from engine.files import write_atomically
from engine.updater import MOBILITY_PACKAGE, version_tuple

log = logging.getLogger(__name__)

#: Seconds a new version has to reach the appliance before it is rolled back (``GODWIT_MOBILITY_TRIAL``: tests).
ROLLBACK_AFTER = 120.0
TRIAL_ENV = "GODWIT_MOBILITY_TRIAL"
#: Set by the launcher for the child it runs: the version the child is (its heartbeats say it).
CHILD_ENV = "GODWIT_MOBILITY_VERSION"
#: The exit code of a child that stopped to be started again from the record (a switch to another version).
RESTART_EXIT = 75


def trial_seconds() -> float:
    try:
        return max(1.0, float(os.environ.get(TRIAL_ENV, ROLLBACK_AFTER)))
    except ValueError:
        return ROLLBACK_AFTER


@dataclass(frozen=True)
class VersionRecord:
    """``mobility-version.json``: which installed version runs, and the trial of a new one."""

    current: str
    previous: str | None = None
    #: Until when (epoch seconds) a new version is on trial; None: not on trial.
    trial_until: float | None = None
    #: The new version reached the appliance (a heartbeat got through).
    confirmed: bool = True
    #: The outcome to report with the next heartbeat (the fields of an UpdateReport), or None.
    report: dict[str, str] | None = field(default=None)

    def in_trial(self, now: float) -> bool:
        """A version on trial: not confirmed yet, or confirmed but before the trial's end."""
        return self.trial_until is not None and (not self.confirmed or now < self.trial_until)

    def trial_failed(self, now: float) -> bool:
        """The trial's end passed without the version reaching the appliance."""
        return self.trial_until is not None and not self.confirmed and now >= self.trial_until

    @classmethod
    def from_json(cls, data: Any) -> VersionRecord:
        if not isinstance(data, dict) or version_tuple(data.get("current")) is None:
            raise ValueError("no current version")
        previous = data.get("previous")
        trial = data.get("trial_until")
        report = data.get("report")
        return cls(current=data["current"], previous=previous if version_tuple(previous) else None,
                   trial_until=float(trial) if isinstance(trial, int | float) and not isinstance(trial, bool)
                   else None,
                   confirmed=data.get("confirmed") is not False,
                   report={str(k): str(v) for k, v in report.items()} if isinstance(report, dict) else None)


class VersionStore:
    """The installed mobility versions of one state directory and the record of which runs."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.record_path = state_dir / "mobility-version.json"
        self.versions_dir = state_dir / "versions"
        self.metadata_dir = state_dir / "feed-metadata"
        self.download_dir = state_dir / "downloads"

    def __repr__(self) -> str:
        record = self.read()
        return f"<VersionStore {self.state_dir} record={record} versions={self.versions()}>"

    def read(self) -> VersionRecord | None:
        """The record, or None when there is none (the installed code runs) or it is damaged (said in the log)."""
        try:
            return VersionRecord.from_json(json.loads(self.record_path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("%s is damaged (%s): running the installed mobility service", self.record_path, exc)
            return None

    def write(self, record: VersionRecord) -> None:
        """Write the record whole; durable when it returns (a crash leaves the old record or the new one)."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(self.record_path, json.dumps(asdict(record)).encode(), mode=0o644)

    def code_dir(self, version: str) -> Path | None:
        """The folder a version runs from (it holds ``engine/``), if it is unpacked whole."""
        if version_tuple(version) is None:
            return None
        path = self.versions_dir / version
        return path if (path / "engine" / "__init__.py").is_file() else None

    def versions(self) -> list[str]:
        with contextlib.suppress(FileNotFoundError):
            return sorted((p.name for p in self.versions_dir.iterdir() if version_tuple(p.name) is not None),
                          key=lambda v: version_tuple(v) or (0, 0, 0))
        return []

    def plan(self, installed: str) -> str | None:
        """The version to run as a child, or None when the installed code (version ``installed``) runs itself:
        nothing was installed, the current one is not newer than the installed code, or its folder is gone."""
        record = self.read()
        if record is None:
            return None
        current, own = version_tuple(record.current), version_tuple(installed)
        if current is None or (own is not None and current <= own):
            return None
        if self.code_dir(record.current) is None:
            log.warning("mobility %s is current but %s does not hold it whole: running the installed mobility "
                        "service %s", record.current, self.versions_dir / record.current, installed)
            return None
        return record.current

    def unpack(self, archive: Path, version: str) -> Path:
        """Unpack a verified package as ``versions/<version>`` (whole or not at all; a folder left by an earlier
        attempt is replaced). Raises :class:`UpdateError`."""
        from engine.updater.package import unpack_package

        if version_tuple(version) is None:
            raise UpdateError(f"{version!r} is not a version.")
        dest = self.versions_dir / version
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        unpack_package(archive, dest, name=MOBILITY_PACKAGE, version=version)
        return dest

    def prune(self, keep: set[str | None]) -> list[str]:
        """Remove the installed versions not in ``keep`` and unpacks left by a crash; returns those removed."""
        removed = []
        with contextlib.suppress(FileNotFoundError):
            for entry in self.versions_dir.iterdir():
                if entry.name not in keep:
                    shutil.rmtree(entry, ignore_errors=True)
                    if version_tuple(entry.name) is not None:
                        removed.append(entry.name)
        if removed:
            log.info("removed mobility version(s) %s", ", ".join(removed))
        return removed

    def switch(self, version: str, *, previous: str) -> VersionRecord:
        """Make ``version`` (unpacked whole) the one that runs from the next start, on trial; ``previous`` is
        the one that runs now, the one a failed trial goes back to."""
        if self.code_dir(version) is None:
            raise UpdateError(f"mobility {version} is not unpacked whole in {self.versions_dir}.")
        record = VersionRecord(current=version, previous=previous, trial_until=time.time() + trial_seconds(),
                               confirmed=False,
                               report={"version": version, "outcome": "updated", "previous": previous})
        self.write(record)
        log.info("switched to mobility %s (from %s); on trial until it reaches the appliance", version, previous)
        return record

    def roll_back(self, record: VersionRecord, reason: str) -> VersionRecord:
        """Go back to the version before the one on trial, and keep the outcome for the next heartbeat."""
        back = record.previous or record.current
        rolled = VersionRecord(current=back, previous=record.current, trial_until=None, confirmed=True,
                               report={"version": record.current, "outcome": "rolled-back", "previous": back,
                                       "reason": reason})
        self.write(rolled)
        log.warning("rolled mobility %s back to %s: %s", record.current, back, reason)
        return rolled
