"""Mobility updates, the appliance's side: which mobility version each source server is offered, when it may
install it, and what the sources report back.

The updater installs the ``mobility-package`` agent like any other (:mod:`engine.updater.service`) and, beside
the unpacked version, exports the verified part of the update feed that holds the package::

    <data>/agents/mobility-package/current.json           {"version", "previous", ...}
    <data>/agents/mobility-package/<version>/release.json  {"version", "target": {path, name, version, length,
                                                            sha256}}
    <data>/agents/mobility-package/<version>/feed/         metadata/ and targets/ (FeedClient.export)

The replication-manager serves that feed to registered servers (``GET /v1/mobility/feed/...``, mutual TLS);
the heartbeat answer names the version (:class:`~engine.links.management.MobilityUpdate`) and says whether to
install it now. A source verifies the package against the same trusted root the appliance does, so the
appliance (or anyone between) cannot hand it anything the feed's keys did not sign.

When a source installs:

- auto mode (``updates_mode`` unset or "auto"): each server gets a slot, from a hash of its server id, spread
  over :data:`STAGGER_SECONDS` after the appliance first offered the release; at most :data:`MAX_UPDATING`
  servers update at once;
- manual mode: only the servers an admin asked for (:meth:`MobilityUpdates.request`; the same request in auto
  mode skips the wait for the slot).

A server told to install says so with its next heartbeat (``updating``), then reports the outcome. A version
that failed on a server (its report: not verified, not installed, or rolled back after its trial; or no word
within :data:`ACK_TIMEOUT`: a service from before these updates) is not offered to it for installing again
until the admin asks (or a newer version comes). What must survive
an engine restart is in the state database (table ``mobility_updates``, meta ``mobility_release``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.config import DataDir
from engine.errors import EngineError, UnknownServer, UpdateError
from engine.events import EventHub
from engine.files import write_atomically
from engine.links.management import MobilityUpdate, UpdateReport
from engine.state import MobilityUpdateRecord, ServerRecord, StateDB
from engine.updater import MOBILITY_PACKAGE, update_mode, version_tuple
from engine.updater.feed import FeedTarget
from engine.updater.package import parse_version
from engine.updater.store import AgentStore

log = logging.getLogger(__name__)

#: Auto mode spreads the servers' installs over this many seconds after a release is first offered
#: (``GODWIT_MOBILITY_STAGGER`` overrides it: tests).
STAGGER_SECONDS = 600.0
STAGGER_ENV = "GODWIT_MOBILITY_STAGGER"
#: At most this many servers are told to install at once.
MAX_UPDATING = 4
#: A server told to install says so with its next heartbeat; one silent this long does not follow mobility updates
#: (a service from before them, or one stuck): the update counts as failed there, and it is not told again.
ACK_TIMEOUT = 120.0
#: An update a server said it is at and did not report on within this long no longer counts as under way (its
#: place goes to another server; it is told again, and a service still at it ignores that).
UPDATING_TIMEOUT = 900.0
_META = "mobility_release"


@dataclass(frozen=True)
class MobilityRelease:
    """The mobility version the appliance offers: its package in the feed at ``feed_dir``."""

    version: str
    target: FeedTarget
    feed_dir: Path


def _read_json(path: Path) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read(64 * 1024))


def write_release(folder: Path, target: FeedTarget) -> None:
    """Write ``release.json`` into an installed mobility version's ``folder``: the package sources are offered."""
    release = {"version": target.version, "target": {"path": target.path, "name": target.name,
                                                     "version": target.version, "length": target.length,
                                                     "sha256": target.sha256}}
    write_atomically(folder / "release.json", json.dumps(release).encode(), mode=0o644)


def mobility_release(data_dir: DataDir) -> MobilityRelease | None:
    """The mobility version installed on the appliance with its feed, or None when there is nothing to offer
    (only the bootstrap version, which has no release.json; or a file that is missing or damaged)."""
    installed = AgentStore(data_dir.agents).current(MOBILITY_PACKAGE)
    if installed is None:
        return None
    version, folder = installed.version, installed.path
    try:
        release = _read_json(folder / "release.json")
        raw = release["target"]
        target = FeedTarget(path=str(raw["path"]), name=str(raw["name"]), version=str(raw["version"]),
                            length=int(raw["length"]), sha256=str(raw["sha256"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("mobility.release-unreadable folder=%s: %s", folder, exc)
        return None
    feed_dir = folder / "feed"
    if release.get("version") != version or target.name != MOBILITY_PACKAGE or target.version != version or \
            not (feed_dir / "metadata" / "timestamp.json").is_file():
        log.warning("mobility.release-inconsistent folder=%s version=%s target=%s", folder, version, target)
        return None
    return MobilityRelease(version=version, target=target, feed_dir=feed_dir)


class MobilityUpdates:
    """The mobility version offered to each source server, and their updates' outcomes. Used from the
    supervisor's event loop (the state database's one connection)."""

    def __init__(self, *, state: StateDB, hub: EventHub, data_dir: DataDir, stagger: float | None = None,
                 max_updating: int = MAX_UPDATING) -> None:
        self._state = state
        self._hub = hub
        self._data_dir = data_dir
        self._store = AgentStore(data_dir.agents)
        self.stagger = stagger if stagger is not None else float(os.environ.get(STAGGER_ENV, STAGGER_SECONDS))
        self.max_updating = max_updating
        #: The release as last read, and the file stamps it was read at (re-read when they change).
        self._release: tuple[tuple[int, ...], MobilityRelease | None] | None = None
        #: When each release was first offered (version, epoch seconds), as the meta key holds it.
        self._since: tuple[str, float] | None = None
        #: The last report taken per server: a report sent again (its answer was lost) is not a second event.
        self._reports: dict[str, UpdateReport] = {}

    def __repr__(self) -> str:
        release = self.release()
        updating = sum(1 for r in self._state.mobility_updates() if self._under_way(r, release))
        return (f"<MobilityUpdates mode={self.mode} release={release.version if release else None} "
                f"stagger={self.stagger:g} updating={updating}>")

    # --- the release --------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return update_mode(self._state)

    def _stamps(self) -> tuple[int, ...]:
        """What tells that the offered release changed: the stamps of ``current.json`` and of its ``release.json``."""
        out: list[int] = []
        installed = self._store.current(MOBILITY_PACKAGE)
        paths = [self._store.folder(MOBILITY_PACKAGE) / "current.json"]
        if installed is not None:
            paths.append(installed.path / "release.json")
        for path in paths:
            with contextlib.suppress(OSError):
                st = path.stat()
                out += [st.st_mtime_ns, st.st_ino, st.st_size]
        return tuple(out)

    def release(self) -> MobilityRelease | None:
        """The release offered now (read again whenever its files change)."""
        stamps = self._stamps()
        if self._release is None or self._release[0] != stamps:
            release = mobility_release(self._data_dir)
            self._release = (stamps, release)
            if release is not None:
                self._offered_since(release, time.time())  # the stagger counts from the first sight
        return self._release[1]

    def _offered_since(self, release: MobilityRelease, now: float) -> float:
        """When this release was first offered (the stagger counts from then; ``now`` the first time it is asked,
        noted durably)."""
        if self._since is not None and self._since[0] == release.version:
            return self._since[1]
        since = now
        try:
            raw = json.loads(self._state.get_meta(_META) or "{}")
            if raw.get("version") == release.version and isinstance(raw.get("since"), int | float):
                since = float(raw["since"])
            else:
                self._state.set_meta(_META, json.dumps({"version": release.version, "since": since}))
                how = f"auto mode, spread over {self.stagger:g} s" if self.mode == "auto" else \
                    "manual mode: each updates when asked"
                self._hub.record("info", "mobility-release",
                                 f"Mobility {release.version} is offered to the source servers ({how}).")
        except (ValueError, AttributeError, EngineError) as exc:  # a full disk: counted from now, noted later
            log.warning("mobility.release-not-noted version=%s: %s", release.version, exc)
            return since
        self._since = (release.version, since)
        return since

    def slot(self, server_id: str) -> float:
        """Seconds after a release is first offered when this server's turn comes in auto mode."""
        digest = hashlib.sha256(server_id.encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 * self.stagger

    # --- per server -----------------------------------------------------------------------------------
    def _under_way(self, record: MobilityUpdateRecord, release: MobilityRelease | None,
                   now: float | None = None) -> bool:
        """Told to install the release, and at it (or not yet silent for long)."""
        now = time.time() if now is None else now
        if release is None or record.started_version != release.version or record.started_at is None:
            return False
        if record.acknowledged_at is None:
            return now - record.started_at < ACK_TIMEOUT
        return now - record.acknowledged_at < UPDATING_TIMEOUT

    def _silent(self, row: ServerRecord, record: MobilityUpdateRecord, release: MobilityRelease,
                now: float) -> MobilityUpdateRecord:
        """A server told to install that never said it is at it: the update failed there (said once)."""
        if record.started_version != release.version or record.started_at is None or \
                record.acknowledged_at is not None or now - record.started_at < ACK_TIMEOUT:
            return record
        reason = (f"It was told to install it {ACK_TIMEOUT:.0f} s ago and did not start: its mobility service may "
                  "be from before automatic updates (install the new version on the server by hand), or stuck.")
        after = replace(record, requested=None, started_version=None, started_at=None, failed_version=release.version,
                        failed_reason=reason)
        self._save(record, after)
        self._hub.record("warning", "mobility-update-failed", f"{row.name}: the mobility service was not updated to "
                         f"{release.version}: {reason}", server=row.name)
        return after

    def _save(self, before: MobilityUpdateRecord, after: MobilityUpdateRecord) -> None:
        if after != before:
            self._state.set_mobility_update(after)

    def offer(self, row: ServerRecord, running_version: str) -> MobilityUpdate | None:
        """What a heartbeat answer offers this server: None when there is nothing newer than what it runs;
        else the release, with ``install`` when its turn has come (and an update it was told to install is
        noted as under way)."""
        release = self.release()
        running = version_tuple(running_version)
        if release is None or running is None:
            return None
        record = self._state.mobility_update(row.server_id)
        if running >= parse_version(release.version):
            # Done (or newer by other means): what was asked or under way is over.
            self._save(record, replace(record, requested=None, started_version=None, started_at=None,
                                       acknowledged_at=None))
            return None
        now = time.time()
        record = self._silent(row, record, release, now)
        install = self._may_install(record, release, now)
        if install and not self._under_way(record, release, now):
            self._save(record, replace(record, started_version=release.version, started_at=now,
                                       acknowledged_at=None))
            self._reports.pop(row.server_id, None)  # what it reports about this attempt is news
            log.info("mobility.install-offered server=%s from=%s to=%s", row.name, running_version, release.version)
        target = release.target
        return MobilityUpdate(version=release.version, target=target.path, length=target.length,
                              sha256=target.sha256, install=install)

    def _may_install(self, record: MobilityUpdateRecord, release: MobilityRelease, now: float) -> bool:
        if self._under_way(record, release, now):
            return True  # told already: say it again (a service that is at it ignores it)
        if record.failed_version == release.version:
            return False  # until the admin asks again, or a newer version comes
        asked = record.requested == release.version
        if not asked and (self.mode != "auto" or now < self._offered_since(release, now) + self.slot(record.server_id)):
            return False
        busy = sum(1 for r in self._state.mobility_updates()
                   if r.server_id != record.server_id and self._under_way(r, release, now))
        return busy < self.max_updating

    def status_of(self, row: ServerRecord, running_version: str) -> str:
        """"up-to-date", "update-available", "updating" or "update-failed"; "" when nothing is offered (or the
        version the server runs is not one this appliance can compare)."""
        release = self.release()
        running = version_tuple(running_version)
        if release is None or running is None:
            return ""
        if running >= parse_version(release.version):
            return "up-to-date"
        record = self._state.mobility_update(row.server_id)
        if self._under_way(record, release):
            return "updating"
        if record.failed_version == release.version:
            return "update-failed"
        return "update-available"

    def request(self, names: list[str]) -> None:
        """The admin's Update for these servers (one, or the selected ones): each installs the offered version at
        its next heartbeat (at most :data:`MAX_UPDATING` at once), also after it failed there before. Unknown
        names are refused before anything changes (:class:`UnknownServer`); servers already up to date are left
        alone, and it is an :class:`UpdateError` when every one named is."""
        rows = []
        for name in dict.fromkeys(names):
            row = self._state.server(name=name)
            if row is None:
                raise UnknownServer(f"No server named {name!r} is registered. `godwit vm list` shows the names.")
            rows.append(row)
        release = self.release()
        if release is None:
            raise UpdateError("This appliance offers no mobility version to install: the mobility package it has is "
                              "the one it came with. Update the Mobility package agent first (Agents page, or "
                              "`godwit agents update mobility-package`).")
        wanted = parse_version(release.version)
        outdated = [row for row in rows if (v := version_tuple(row.agent_version)) is None or v < wanted]
        if not outdated:
            raise UpdateError(f"{', '.join(r.name for r in rows)} already run{'s' if len(rows) == 1 else ''} "
                              f"mobility {release.version} or newer: nothing to update.")
        for row in outdated:
            self._reports.pop(row.server_id, None)
            record = self._state.mobility_update(row.server_id)
            self._save(record, replace(record, requested=release.version,
                                       failed_version=None if record.failed_version == release.version
                                       else record.failed_version,
                                       failed_reason=None if record.failed_version == release.version
                                       else record.failed_reason))
        names_text = ", ".join(r.name for r in outdated)
        self._hub.record("info", "mobility-update-requested", f"Update of the mobility service to {release.version} "
                         f"requested for {names_text}: each installs it at its next heartbeat.")
        log.info("mobility.update-requested version=%s servers=%s", release.version, names_text)

    def reported(self, row: ServerRecord, report: UpdateReport) -> None:
        """What a server's heartbeat said about its own update: the outcomes are events (once each) and decide
        whether it is told to install again."""
        if self._reports.get(row.server_id) == report:
            return
        record = self._state.mobility_update(row.server_id)
        name, version = row.name, report.version
        now = time.time()
        if report.outcome == "updating":
            told = record.started_version == version and record.started_at is not None
            self._save(record, replace(record, started_version=version, started_at=record.started_at if told else now,
                                       acknowledged_at=now,
                                       failed_version=None if record.failed_version == version
                                       else record.failed_version,
                                       failed_reason=None if record.failed_version == version
                                       else record.failed_reason))
        elif report.outcome == "updated":
            self._save(record, replace(record, requested=None, started_version=None, started_at=None,
                                       acknowledged_at=None, failed_version=None, failed_reason=None))
            self._hub.record("info", "mobility-updated", f"{name}: the mobility service was updated from "
                             f"{report.previous or 'its earlier version'} to {version}; replication goes on.",
                             server=name)
        else:
            reason = (report.reason or "it did not say why").rstrip()
            reason += "" if reason.endswith((".", "!", "?")) else "."
            self._save(record, replace(record, requested=None, started_version=None, started_at=None,
                                       acknowledged_at=None, failed_version=version, failed_reason=reason))
            if report.outcome == "rolled-back":
                back = report.previous or "the version before"
                self._hub.record("warning", "mobility-rolled-back",
                                 f"{name}: mobility {version} was rolled back to {back}: {reason} Replication goes on "
                                 f"with {back}; Update tries {version} again.", server=name)
            else:
                self._hub.record("warning", "mobility-update-failed",
                                 f"{name}: the mobility service was not updated to {version}: {reason} It runs its "
                                 "version as before; Update tries again.", server=name)
        self._reports[row.server_id] = report
        log.info("mobility.reported server=%s version=%s outcome=%s", name, version, report.outcome)

    def forget(self, server_id: str) -> None:
        """A server is gone (its database row goes with it)."""
        self._reports.pop(server_id, None)
