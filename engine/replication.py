"""Replication as the supervisor tracks it: policies, enabling, and what the agents report.

The process server reports what it acknowledged per disk, the log processor what it applied and
which recovery points exist; from these the supervisor derives each server's state, progress,
RPO and health, and tells the mobility services (through heartbeats) what to do.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import BadInput, NotFound
from engine.events import EventHub
from engine.manager.requests import PointFacts
from engine.records import Disk, DiskStatus, Policy, RecoveryPoint
from engine.state import StateDB, disks_from_row

log = logging.getLogger(__name__)

DEFAULT_POLICY = Policy(name="default", rpo_threshold=15 * 60, retention=24 * 3600, crash_consistent_every=5 * 60,
                        app_consistent_every=4 * 3600)
MAX_RETENTION = 15 * 24 * 3600
#: Seconds without acknowledged progress before an initial replication is called stalled.
STALL_AFTER = 120.0
#: Clocks that differ by more than this are a health cause (points and the RPO are still right).
MAX_CLOCK_SKEW = 60.0
#: Seconds without a batch after which a disk shows no rate and no ETA: a rate that old (the
#: appliance refusing batches, the source gone quiet) says nothing about now. At least; longer when
#: at the current rate one batch takes longer (a slow link), so that the rate does not blink.
RATE_STALE_AFTER = 10.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, what: str) -> float:
    match = _DURATION.match(text.lower())
    if not match:
        raise BadInput(f"{what} {text!r} is not a duration such as 30s, 15m, 4h or 2d.")
    return float(match.group(1)) * _UNITS[match.group(2)]


def make_policy(name: str, *, rpo_threshold: str, retention: str, crash_consistent_every: str,
                app_consistent_every: str) -> Policy:
    """A policy from what an admin typed, checked against the product's limits."""
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", name):
        raise BadInput(f"Policy name {name!r}: use letters, digits, '-', '_' or '.' (at most 63).")
    p = Policy(name=name, rpo_threshold=parse_duration(rpo_threshold, "--rpo-threshold"),
               retention=parse_duration(retention, "--retention"),
               crash_consistent_every=parse_duration(crash_consistent_every, "--crash-consistent-every"),
               app_consistent_every=None if app_consistent_every.strip().lower() == "off"
               else parse_duration(app_consistent_every, "--app-consistent-every"))
    if not 0 < p.retention <= MAX_RETENTION:
        raise BadInput("--retention must be more than 0 and at most 15 days.")
    if p.crash_consistent_every < 1:
        raise BadInput("--crash-consistent-every must be at least 1 s.")
    if p.rpo_threshold < 1:
        raise BadInput("--rpo-threshold must be at least 1 s.")
    if p.app_consistent_every is not None and not 3600 <= p.app_consistent_every <= 12 * 3600:
        raise BadInput("--app-consistent-every must be between 1h and 12h, or off.")
    return p


@dataclass
class DiskProgress:
    acked_seq: int = 0
    initial_done: int = 0
    initial_complete: bool = False
    bytes_received: int = 0
    last_progress_at: float = field(default_factory=time.time)
    throughput_bps: float = 0.0
    last_step_bytes: int = 0  #: bytes the last progress report added (one batch or a few)
    applied_seq: int = 0
    resync_done: int = 0
    last_bookmark_time: float | None = None  # appliance time at which the newest applied cycle was applied
    last_bookmark_source: float | None = None  # the source's time at which that cycle started
    points: list[RecoveryPoint] = field(default_factory=list)
    error: str | None = None
    #: What kind of stop ``error`` is: "segment-corrupt" waits for a resync; "target-full" and
    #: "target-unwritable" pause applying until the log processor can write again.
    error_code: str | None = None


class Replication:
    def __init__(self, *, state: StateDB, hub: EventHub, data_root: Path) -> None:
        self._state = state
        self._hub = hub
        self._root = data_root
        self._disks: dict[tuple[str, int], DiskProgress] = {}
        self.cache_full: dict[str, bool] = {}
        #: Why the process server last refused a server's batch, when it says (e.g. the disk's reserve).
        self.cache_full_detail: dict[str, str | None] = {}
        #: How each server's mobility service last said it takes points (from heartbeats).
        self.points_taken: dict[str, PointFacts | None] = {}
        #: How far each source server's clock is ahead of the appliance's (seconds; from heartbeats).
        self.clock_skew: dict[str, float] = {}
        if state.policy(DEFAULT_POLICY.name) is None:
            state.add_policy(DEFAULT_POLICY)

    def __repr__(self) -> str:
        return f"<Replication disks={len(self._disks)}>"

    # --- policies ------------------------------------------------------------------------------
    def create_policy(self, p: Policy) -> Policy:
        if self._state.policy(p.name) is not None:
            raise BadInput(f"A policy named {p.name!r} exists already; `godwit policy show {p.name}` shows it.")
        self._state.add_policy(p)
        self._hub.record("info", "policy-created", f"Replication policy {p.name} created.")
        return p

    def policy(self, name: str) -> Policy:
        p = self._state.policy(name)
        if p is None:
            raise NotFound(f"No policy named {name!r}. `godwit policy list` shows the policies.")
        return p

    # --- enabling ------------------------------------------------------------------------------
    def enable(self, row: Any, policy: str | None) -> None:
        p = self.policy(policy or DEFAULT_POLICY.name)
        if row["replicate"]:  # already replicating: only the policy changes, the copy and its points stay
            if p.name != row["policy"]:
                self._state.set_policy(row["server_id"], p.name)
                self._hub.record("info", "policy-changed", f"{row['name']} now replicates with policy {p.name}.",
                                 server=row["name"])
            return
        disks = disks_from_row(row)
        if not disks or any(d.size == 0 for d in disks):
            raise BadInput(f"{row['name']} reports a missing or empty disk; fix it on the source server first.")
        self._state.set_replication(row["server_id"], replicate=True, policy=p.name,
                                    disk_sizes=[d.size for d in disks])
        self._hub.record("info", "replication-enabled", f"Replication of {row['name']} enabled with policy "
                         f"{p.name}; initial replication starts at its next heartbeat.", server=row["name"])

    def resync(self, row: Any) -> None:
        if not row["replicate"]:
            raise BadInput(f"{row['name']} is not replicating; enable it instead.")
        self._state.request_resync(row["server_id"])
        self._hub.record("info", "resync-requested", f"Resync of {row['name']} requested: every block is sent "
                         "again and compared; recovery points are kept.", server=row["name"])

    def disable(self, row: Any) -> None:
        """Stop replicating and free the server's cache and target data."""
        self._state.set_replication(row["server_id"], replicate=False, policy=None)
        for key in [k for k in self._disks if k[0] == row["server_id"]]:
            del self._disks[key]
        for sub in ("cache", "target"):
            shutil.rmtree(self._root / sub / row["server_id"], ignore_errors=True)
        self._hub.record("warning", "replication-disabled", f"Replication of {row['name']} disabled; its recovery "
                         "points and cached data were deleted.", server=row["name"])

    def desired_state(self, row: Any) -> dict[str, Any]:
        """What the mobility service and the agents should do for this server."""
        replicate = bool(row["replicate"])
        desired: dict[str, Any] = {"replicate": replicate, "max_mbps": row["max_mbps"],
                                   "resync_gen": row["resync_gen"]}
        if replicate:
            desired["epoch"] = epoch(row)
            p = self.policy(row["policy"])
            desired["policy"] = {"name": p.name, "crash_consistent_every": p.crash_consistent_every,
                                 "app_consistent_every": p.app_consistent_every, "retention": p.retention}
            desired["disks"] = [{"index": i, "size": size} for i, size in enumerate(replicated_sizes(row))]
        return desired

    # --- reports from the agents -------------------------------------------------------------------
    def progress(self, server_id: str, disk: int) -> DiskProgress:
        return self._disks.setdefault((server_id, disk), DiskProgress())

    def report_received(self, payload: dict[str, Any]) -> bool:
        """From the process server; returns True when an initial replication just completed."""
        p = self.progress(str(payload["server_id"]), int(payload["disk"]))
        now = time.time()
        received = int(payload["bytes_received"])
        if received > p.bytes_received:
            dt = max(now - p.last_progress_at, 1e-3)
            rate = (received - p.bytes_received) / dt
            p.throughput_bps = rate if p.throughput_bps == 0 else 0.7 * p.throughput_bps + 0.3 * rate
            p.last_progress_at = now
            p.last_step_bytes = received - p.bytes_received
        p.bytes_received = max(p.bytes_received, received)
        p.acked_seq = max(p.acked_seq, int(payload["acked_seq"]))
        p.initial_done = max(p.initial_done, int(payload["initial_done"]))
        completed = bool(payload["initial_complete"]) and not p.initial_complete
        p.initial_complete = p.initial_complete or bool(payload["initial_complete"])
        self.cache_full[str(payload["server_id"])] = bool(payload.get("cache_full"))
        detail = payload.get("cache_full_detail")
        self.cache_full_detail[str(payload["server_id"])] = str(detail)[:1024] if detail else None
        return completed

    def report_applied(self, payload: dict[str, Any]) -> list[RecoveryPoint]:
        """From the log processor; returns the recovery points that are new."""
        p = self.progress(str(payload["server_id"]), int(payload["disk"]))
        p.applied_seq = int(payload["applied_seq"])
        p.resync_done = int(payload.get("resync_done", 0))
        if payload.get("bookmark_time"):
            p.last_bookmark_time = float(payload["bookmark_time"])
            source = payload.get("bookmark_source_time")
            p.last_bookmark_source = float(source) if source else None
        p.error = payload.get("error")
        p.error_code = payload.get("error_code") or ("segment-corrupt" if p.error else None)
        known = {pt.id for pt in p.points}
        p.points = [RecoveryPoint(id=int(x["id"]), created_at=float(x["created_at"]), kind=str(x["kind"]))
                    for x in payload.get("points", [])]
        return [pt for pt in p.points if pt.id not in known]

    # --- what the admin sees ---------------------------------------------------------------------
    def points(self, row: Any) -> list[RecoveryPoint]:
        """Recovery points of the whole server: those every disk has."""
        disks = disks_from_row(row)
        if not disks:
            return []
        per_disk = [{pt.id: pt for pt in self.progress(row["server_id"], i).points} for i in range(len(disks))]
        common = set(per_disk[0]).intersection(*per_disk[1:])
        return sorted((per_disk[0][i] for i in common), key=lambda pt: pt.id)

    def disk_statuses(self, row: Any, disks: tuple[Disk, ...], now: float | None = None) -> tuple[DiskStatus, ...]:
        """Each disk's progress. The rate (and the ETA from it) is the recent one: a disk that received
        no batch for :data:`RATE_STALE_AFTER` seconds (or three times as long as its last batch took)
        shows none."""
        now = time.time() if now is None else now
        out = []
        for i, d in enumerate(disks):
            p = self.progress(row["server_id"], i)
            done = d.size if p.initial_complete else min(p.initial_done, d.size)
            hold = max(RATE_STALE_AFTER, 3 * p.last_step_bytes / p.throughput_bps) if p.throughput_bps else 0.0
            rate = p.throughput_bps if row["replicate"] and now - p.last_progress_at <= hold else 0.0
            eta = None
            if not p.initial_complete and rate > 0:
                eta = (d.size - done) / rate
            out.append(DiskStatus(path=d.path, size=d.size, bytes_done=done if row["replicate"] else 0,
                                  bytes_total=d.size, throughput_bps=rate, eta_seconds=eta, capture=d.capture,
                                  tracking=d.tracking, note=d.note))
        return tuple(out)

    def summary(self, row: Any, now: float) -> dict[str, Any]:
        """State, RPO, last point and the replication health cause (if any) of a server."""
        disks = disks_from_row(row)
        if not row["replicate"]:
            return {"state": "registered", "rpo": None, "last_point": None, "cause": None}
        progress = [self.progress(row["server_id"], i) for i in range(len(disks))]
        points = self.points(row)
        last_point = points[-1].created_at if points else None
        changed = disk_change(row)
        if changed is not None:  # nothing is lost, but nothing moves until the disk is back or re-enabled
            return {"state": "paused", "rpo": None, "last_point": last_point, "cause": changed}
        stops = [(p.error_code or "segment-corrupt", p.error) for p in progress if p.error]
        if stops:  # a refused segment needs the admin; a target that cannot be written heals by itself
            state = "error" if stops[0][0] == "segment-corrupt" else "paused"
            return {"state": state, "rpo": None, "last_point": last_point, "cause": stops[0]}
        complete = bool(progress) and all(p.initial_complete for p in progress)
        state = "protected" if complete and points else "initial-replication"
        if complete and any(p.resync_done < row["resync_gen"] for p in progress):
            state = "resyncing"
        # The newest consistent instant, in the appliance's time: the source's time of the cycle taken back
        # by the clocks' difference, never later than when it was applied.
        skew = self.clock_skew.get(row["server_id"], 0.0)
        bookmarks = [min(p.last_bookmark_time, p.last_bookmark_source - skew) if p.last_bookmark_source
                     else p.last_bookmark_time for p in progress if p.last_bookmark_time is not None]
        rpo = now - min(bookmarks) if complete and len(bookmarks) == len(progress) else None
        cause = None
        policy = self._state.policy(row["policy"])
        if self.cache_full.get(row["server_id"]) and self.cache_full_detail.get(row["server_id"]):
            # the process server refused its last batch for the disk's reserve (it says so); until a batch is
            # taken again, that is this server's cause (the supervisor records the disk's events itself)
            cause = ("disk-full", self.cache_full_detail[row["server_id"]])
        elif self.cache_full.get(row["server_id"]):
            cause = ("cache-full", "The appliance's cache is full: replication waits until the log processor "
                     "catches up. Free space on the appliance or add cache storage.")
        elif state == "initial-replication" and progress and \
                min(now - p.last_progress_at for p in progress) > STALL_AFTER:
            cause = ("initial-replication-stalled", "Initial replication made no progress for "
                     f"{STALL_AFTER / 60:.0f} min. Check that the source server reaches the data port.")
        elif (taken := self.points_taken.get(row["server_id"])) is not None and taken.deferred:
            cause = ("point-deferred", taken.deferred)
        elif taken is not None and taken.inconsistent:
            cause = ("points-not-crash-consistent", f"The last recovery point is not crash-consistent: "
                     f"{taken.inconsistent}. Stop that writer during points, or add a pre-snapshot hook that "
                     "quiesces it.")
        elif abs(skew) > MAX_CLOCK_SKEW:
            cause = ("clock-skew", f"The clock of {row['hostname'] or row['name']} is {_duration(abs(skew))} "
                     f"{'ahead of' if skew > 0 else 'behind'} the appliance's. Points and the RPO are reckoned with "
                     "the difference taken out; set both clocks right (NTP).")
        elif rpo is not None and policy is not None and rpo > policy.rpo_threshold:
            cause = ("rpo-exceeded", f"The RPO is {rpo / 60:.1f} min, above the policy's threshold of "
                     f"{policy.rpo_threshold / 60:.0f} min. Check the source server's network and the appliance's "
                     "load.")
        return {"state": state, "rpo": rpo, "last_point": points[-1].created_at if points else None,
                "cause": cause}


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def replicated_sizes(row: Any) -> list[int]:
    """Disk sizes as they were when replication was enabled (the seed disks' sizes)."""
    raw = row["replicated_disks"]
    return [int(x) for x in json.loads(raw)] if raw else [d.size for d in disks_from_row(row)]


def disk_change(row: Any) -> tuple[str, str] | None:
    """A source disk that vanished or changed size since replication was enabled, as a health cause."""
    now = disks_from_row(row)
    then = replicated_sizes(row)
    for i, size in enumerate(then):
        if i >= len(now) or now[i].size == 0:
            path = now[i].path if i < len(now) else f"disk {i}"
            return ("disk-missing", f"{path} is gone from {row['name']} (or cannot be read): replication of it is "
                    "paused. Reattach it, or disable and enable replication to start over without it.")
        if now[i].size != size:
            return ("disk-size-changed", f"{now[i].path} on {row['name']} changed size from {size} to "
                    f"{now[i].size} bytes: replication is paused. Disable and enable replication to start over "
                    "with the new size.")
    return None


def epoch(row: Any) -> int | None:
    """Which enabling of replication is current (ms timestamp): state left from an earlier one is
    never reused. None when the server does not replicate."""
    return int(row["enabled_at"] * 1000) if row["replicate"] else None
