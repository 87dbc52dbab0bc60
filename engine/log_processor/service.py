"""Apply committed segments, in order, to each seed disk; create and prune recovery points.

Per disk, segment ``applied + 1`` is read from the cache, authenticated and decrypted, applied to
the target disk (durably), and only then deleted from the cache. A crash anywhere repeats at most
the one segment, which applying is idempotent for. A segment that fails authentication is moved
aside, reported, and never applied; that disk's replication stops until the admin resyncs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import zstandard

from engine.agents import AgentContext
from engine.client import UnixJsonClient
from engine.codec import SegmentCorrupt, SegmentIdent, open_segment
from engine.config import DataDir
from engine.errors import ConfigError, EngineError
from engine.identity import ApplianceIdentity
from engine.keys import DataKeys, master_key
from engine.protocol import Bookmark, Kind
from engine.storage import PointInfo, TargetDisk, open_local_cache, open_local_target, replica

log = logging.getLogger(__name__)

POLL = 0.1
REFRESH = 1.0
_KINDS = {Bookmark.CRASH_POINT: "crash-consistent", Bookmark.APP_POINT: "app-consistent",
          Bookmark.INCONSISTENT_POINT: "not-crash-consistent"}


@dataclass
class DiskJob:
    server_id: str
    disk: int
    target: TargetDisk
    retention: float
    epoch: int = 0
    resync_gen: int = 0
    error: str | None = None
    bookmark_time: float | None = None
    dirty: bool = True
    points: list[PointInfo] = field(default_factory=list)

    @property
    def replica(self) -> str:
        return replica(self.server_id, self.epoch)


class LogProcessor:
    def __init__(self, data_dir: DataDir) -> None:
        ident = ApplianceIdentity.load(data_dir)
        if ident is None:
            raise ConfigError("log-processor must be started by the engine supervisor.")
        self.data_dir = data_dir
        self.keys = DataKeys(data_dir.keys, master_key(ident.secrets(data_dir)))
        self.cache = open_local_cache(data_dir.cache)
        self.link = UnixJsonClient(data_dir.agent_socket, what="The engine supervisor is not reachable.")
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apply")
        self.jobs: dict[tuple[str, int], DiskJob] = {}
        self._decompressor = zstandard.ZstdDecompressor()

    def __repr__(self) -> str:
        return f"<LogProcessor disks={len(self.jobs)}>"

    def refresh(self, servers: list[dict[str, Any]]) -> None:
        wanted = set()
        for s in servers:
            for d in s.get("disks", []):
                key = (s["server_id"], int(d["index"]))
                wanted.add(key)
                retention = float(s["policy"]["retention"])
                epoch = int(s["epoch"])
                if key in self.jobs and self.jobs[key].epoch != epoch:
                    del self.jobs[key]  # disabled and enabled again: that target was deleted
                if key not in self.jobs:
                    target = open_local_target(self.data_dir.target, replica(key[0], epoch), key[1], int(d["size"]))
                    self.jobs[key] = DiskJob(key[0], key[1], target, retention, epoch=epoch, points=target.points())
                self.jobs[key].retention = retention
                self.jobs[key].resync_gen = int(s.get("resync_gen", 0))
        for key in set(self.jobs) - wanted:
            del self.jobs[key]
        self._sweep({s["server_id"]: int(s["epoch"]) for s in servers})

    def _sweep(self, epochs: dict[str, int]) -> None:
        """Delete what earlier enablings of a replicating server left (a late write can outrun a disable)."""
        import shutil

        for root in (self.data_dir.cache, self.data_dir.target):
            for server_id, epoch in epochs.items():
                base = root / server_id
                if not base.is_dir():
                    continue
                for old in base.iterdir():
                    if old.name.isdigit() and int(old.name) < epoch:
                        shutil.rmtree(old, ignore_errors=True)

    def apply_pending(self, job: DiskJob) -> bool:
        """Runs in the pool: apply every acknowledged segment that is next in order. True if anything changed."""
        target = job.target
        if target.refused_seq:
            # Only a resync asked for after the refusal mends it: one already under way then would end
            # without the refused segment's blocks.
            if job.resync_gen <= target.refused_gen:
                job.error = job.error or (f"Segment {target.refused_seq} of disk {job.disk} was refused (it failed "
                                          "authentication) and set aside; resync this server.")
                return False
            target.start_resync()
            job.error = None
            log.info("resync.start server=%s disk=%s generation=%s", job.server_id, job.disk, job.resync_gen)
        changed = False
        acked = self.cache.acked_seq(job.replica, job.disk)
        for seq in self.cache.segments(job.replica, job.disk):
            if seq <= target.applied_seq:
                self.cache.delete_segment(job.replica, job.disk, seq)  # applied before a crash
                continue
            if seq != target.applied_seq + 1 or seq > acked:
                break  # a gap (still arriving), or written but not yet acknowledged
            raw = self.cache.get_segment(job.replica, job.disk, seq)
            try:
                header, blocks = open_segment(self.keys.get(job.server_id), raw,
                                              SegmentIdent(job.server_id, job.disk, seq, job.epoch), self._decompressor)
            except SegmentCorrupt as exc:
                job.error = f"{exc.message} It was set aside and not applied; resync this server."
                target.refuse(seq, job.resync_gen)
                self.cache.set_aside(job.replica, job.disk, seq)
                log.error("segment.refused server=%s disk=%s seq=%s: %s", job.server_id, job.disk, seq, exc)
                return True
            resync_done = header.initial_done if header.kind == Kind.RESYNC and header.bookmark else None
            point = None
            # No point while a resync is under way: the disk is a mix until the pass completes.
            if header.bookmark in _KINDS and max(target.resync_done, resync_done or 0) >= job.resync_gen:
                point = PointInfo(id=header.cycle, created_at=time.time(), kind=_KINDS[header.bookmark],
                                  source_time=header.source_time)
            try:
                with target.locked(blocking=False):  # an export holds it: come back to this disk later
                    target.apply(seq, blocks, point=point, resync_done=resync_done)
                    self._prune(job)
            except BlockingIOError:
                break
            if header.bookmark != Bookmark.NONE:
                job.bookmark_time = min(time.time(), header.source_time or time.time())
            self.cache.delete_segment(job.replica, job.disk, seq)
            changed = True
        job.points = job.target.points()
        return changed

    def _prune(self, job: DiskJob) -> None:
        points = job.target.points()
        cutoff = time.time() - job.retention
        while len(points) > 1 and points[0].created_at < cutoff:
            job.target.delete_point(points[0].id)
            points.pop(0)

    async def report(self, job: DiskJob) -> None:
        payload = {"server_id": job.server_id, "disk": job.disk, "applied_seq": job.target.applied_seq,
                   "resync_done": job.target.resync_done,
                   "bookmark_time": job.bookmark_time, "error": job.error,
                   "points": [{"id": p.id, "created_at": p.created_at, "kind": p.kind} for p in job.points]}
        await self.link.request("POST", "/agent/applied", payload)
        job.dirty = False

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        refreshed = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() - refreshed > REFRESH:
                    self.refresh(await self.link.request("GET", "/agent/replicating"))
                    refreshed = time.monotonic()
                for job in list(self.jobs.values()):
                    if await loop.run_in_executor(self.pool, self.apply_pending, job):
                        job.dirty = True
                    if job.dirty:
                        await self.report(job)
            except EngineError as exc:
                log.warning("log-processor: %s", exc)
                await asyncio.sleep(1.0)
            except OSError as exc:  # e.g. a disabled server's files removed under us
                log.warning("log-processor: %s", exc)
                refreshed = 0.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL):
                    await stop.wait()


async def serve(ctx: AgentContext) -> None:
    processor = LogProcessor(ctx.data_dir)
    try:
        await processor.run(ctx.stop)
    finally:
        await processor.link.aclose()
        processor.pool.shutdown(wait=True)
