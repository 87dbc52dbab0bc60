"""Apply committed segments, in order, to each seed disk; create and prune recovery points.

Per disk, segment ``applied + 1`` is read from the cache, authenticated and decrypted, applied to
the target disk (durably), and only then deleted from the cache. A crash anywhere repeats at most
the one segment, which applying is idempotent for. A segment that fails authentication (or is
missing) is set aside, reported, and never applied; that disk waits until the admin resyncs it, and
one resync mends it whatever else was damaged before the resync's first segment.

Servers are applied concurrently and fairly: each disk has its own task that applies a bounded
slice at a time in a small pool, and one server holds at most one worker, so a busy or hostile
server cannot hold back another's recovery points. A disk whose target cannot be written (out of
space, an I/O error) pauses with a reason and retries by itself; the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from engine import diskspace
from engine.agents import AgentContext
from engine.backoff import Backoff
from engine.codec import SEGMENT_MAX, Block, Buffers, SegmentCorrupt, SegmentIdent, open_segment
from engine.errors import EngineError, TargetUnreachable, TargetUnwritable
from engine.files import write_atomically
from engine.keys import DataKeys, master_key
from engine.links.agent import Ack, AppliedPoint, AppliedReport, Replicating
from engine.protocol import MAX_DATA, BatchHeader, Bookmark, Kind
from engine.records import HealthCause
from engine.storage import PointInfo, TargetDisk, open_storage, replica

log = logging.getLogger(__name__)

POLL = 0.1
REFRESH = 1.0
#: Two cores: one worker can always serve another server while a busy one holds the other.
WORKERS = 2
#: A slice of work on one disk ends after this long (or when nothing is left); then others get a turn.
SLICE = 0.25
#: A disk paused by an error of its target retries after this long (doubling up to the last value).
PAUSE_BACKOFF = Backoff((2.0, 4.0, 8.0, 15.0))
_KINDS = {Bookmark.CRASH_POINT: "crash-consistent", Bookmark.APP_POINT: "app-consistent",
          Bookmark.INCONSISTENT_POINT: "not-crash-consistent"}


class SteadyClock:
    """Wall-clock seconds that advance only with the machine's boot clock (CLOCK_BOOTTIME), so a wall
    clock stepped forward or back does not move them. Anchored once per boot in a file, so a restarted
    log processor keeps the same clock; a reboot anchors it anew."""

    def __init__(self, path: Path) -> None:
        try:
            boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            boot_id = ""
        try:
            anchor = json.loads(path.read_text())
            if anchor["boot_id"] == boot_id and boot_id:
                self._wall, self._boot = float(anchor["wall"]), float(anchor["boottime"])
                return
        except (OSError, ValueError, KeyError, TypeError):
            pass
        self._wall, self._boot = time.time(), time.clock_gettime(time.CLOCK_BOOTTIME)
        with contextlib.suppress(OSError):  # without it, only this process keeps the clock
            write_atomically(path, json.dumps({"boot_id": boot_id, "wall": self._wall,
                                               "boottime": self._boot}).encode())

    def __repr__(self) -> str:
        return f"<SteadyClock now={self.now():.0f} wall={time.time():.0f}>"

    def now(self) -> float:
        return self._wall + time.clock_gettime(time.CLOCK_BOOTTIME) - self._boot


@dataclass
class DiskJob:
    server_id: str
    disk: int
    target: TargetDisk
    retention: float
    epoch: int = 0
    resync_gen: int = 0
    #: Why applying stopped, for the admin (None: it runs); ``error_code`` says what kind of stop.
    error: str | None = None
    error_code: HealthCause | None = None
    bookmark_time: float | None = None
    bookmark_source_time: float | None = None
    #: The resync generation whose full pass had segments applied here (this run), and how far into the disk
    #: they reach (bytes): the resync's progress the admin sees.
    resync_pass: int = 0
    resync_offset: int = 0
    dirty: bool = True
    points: list[PointInfo] = field(default_factory=list)
    pauses: int = 0
    #: When the target storage stopped answering (while the cause is target-unreachable).
    unreachable_since: float = 0.0

    @property
    def replica(self) -> str:
        return replica(self.server_id, self.epoch)

    def note_resync(self, generation: int, blocks: list[Block]) -> None:
        """A segment of resync ``generation``'s full pass was applied: its blocks are how far the pass is (a
        pass sends the disk in order, zeros as zero runs)."""
        if generation < self.resync_pass:  # an older pass's segment: not where the stream stands
            return
        if generation > self.resync_pass:
            self.resync_pass, self.resync_offset = generation, 0
        if blocks:
            self.resync_offset = max(self.resync_offset, max(b.offset + b.length for b in blocks))

    def fail(self, code: HealthCause, message: str) -> None:
        self.error_code, self.error = code, message

    def clear(self) -> None:
        self.error_code = self.error = None


class LogProcessor:
    def __init__(self, ctx: AgentContext) -> None:
        _, store = ctx.require_appliance()
        data_dir = ctx.data_dir
        self.keys = DataKeys(data_dir.keys, master_key(store))
        self.storage = open_storage(data_dir, store)
        self.cache = self.storage.cache
        self.link = ctx.supervisor_link()
        self.ctx = ctx
        self._ready = False
        self.pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="apply")
        for _ in range(WORKERS):  # start the workers now: later, short of memory, a new thread may not start
            self.pool.submit(time.sleep, 0.05)
        self.jobs: dict[tuple[str, int], DiskJob] = {}
        self._drivers: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._servers: dict[str, asyncio.Lock] = {}
        self._local = threading.local()
        #: What segments are read into, and what their blocks are decrypted and decompressed into.
        self._segments = Buffers(SEGMENT_MAX, keep=1)
        self._blocks = Buffers(MAX_DATA, keep=1)
        self._steady = SteadyClock(data_dir.run_dir / "steady-clock.json")
        self.out_of_memory = False

    def __repr__(self) -> str:
        busy = sum(1 for lock in self._servers.values() if lock.locked())
        return f"<LogProcessor disks={len(self.jobs)} servers_applying={busy}>"

    def refresh(self, replicating: Replicating) -> None:
        wanted = set()
        for s in replicating.servers:
            desired = s.desired
            if desired.policy is None or desired.epoch is None:
                continue
            for d in desired.disks:
                key = (s.server_id, d.index)
                wanted.add(key)
                retention, epoch = desired.policy.retention, desired.epoch
                if key in self.jobs and self.jobs[key].epoch != epoch:
                    self._drop(key)  # disabled and enabled again: that target was deleted
                if key not in self.jobs:
                    try:
                        target = self.storage.target_disk(replica(key[0], epoch), key[1], d.size)
                    except (OSError, EngineError) as exc:  # the target storage cannot be reached: at a later refresh
                        log.warning("target.unavailable server=%s disk=%s: %s", key[0], key[1], exc)
                        continue
                    self.jobs[key] = DiskJob(key[0], key[1], target, retention, epoch=epoch, points=target.points())
                self.jobs[key].retention = retention
                self.jobs[key].resync_gen = desired.resync_gen
        for key in set(self.jobs) - wanted:
            self._drop(key)

    def _drop(self, key: tuple[str, int]) -> None:
        del self.jobs[key]
        task = self._drivers.pop(key, None)
        if task is not None:
            task.cancel()

    def _sweep(self, epochs: dict[str, int]) -> None:
        """Delete what earlier enablings of a replicating server left (a late write can outrun a disable)."""
        for server_id, epoch in epochs.items():
            self.storage.delete_older_copies(server_id, epoch)

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "decompressor", None)
        if d is None:  # one per pool thread: a decompressor is not safe to share
            d = self._local.decompressor = zstandard.ZstdDecompressor()
        return d

    def apply_pending(self, job: DiskJob, budget: float = SLICE) -> tuple[bool, bool]:
        """Runs in the pool: apply the acknowledged segments that are next in order, for about
        ``budget`` seconds. Returns (anything changed, more is waiting)."""
        target = job.target
        try:
            with target.locked(blocking=False):  # an export holds it: come back to this disk later
                self._prune(job)  # first: on a full disk, what the retention lets go makes room
                return self._apply_locked(job, budget)
        except BlockingIOError:
            return False, False
        finally:
            job.points = target.points()

    def _apply_locked(self, job: DiskJob, budget: float) -> tuple[bool, bool]:
        target = job.target
        if target.refused_seq:
            # After a refusal every segment is stepped over until the first one of a resync pass that
            # began after it (a later generation than the stream had reached): that pass rewrites every
            # block. Until the admin asks for that resync, the disk is in error.
            if job.resync_gen <= target.refused_gen:
                if job.error is None:
                    job.fail(HealthCause.SEGMENT_CORRUPT, f"Segment {target.refused_seq} of disk {job.disk} was "
                             "refused and set aside; resync this server.")
            elif job.error_code == HealthCause.SEGMENT_CORRUPT:
                job.clear()
                log.info("resync.mending server=%s disk=%s generation=%s", job.server_id, job.disk, job.resync_gen)
        changed = False
        acked = self._acked(job)
        present = set(self.cache.segments(job.replica, job.disk))
        for seq in sorted(s for s in present if s <= target.applied_seq):
            self.cache.delete_segment(job.replica, job.disk, seq)  # applied before a crash
        if target.applied_seq >= acked:
            return changed, False
        arena = self._blocks.take()  # what this slice's segments are decrypted into, one after the other
        try:
            return self._apply_segments(job, acked, present, budget, arena, changed)
        finally:
            self._blocks.give(arena)  # no block outlives its segment's apply

    def _apply_segments(self, job: DiskJob, acked: int, present: set[int], budget: float, arena: bytearray,
                        changed: bool) -> tuple[bool, bool]:
        target = job.target
        began = time.monotonic()
        while target.applied_seq < acked:
            if time.monotonic() - began > budget:
                return changed, True
            seq = target.applied_seq + 1
            header, blocks, refusal = self._open(job, seq, present, arena)
            if target.refused_seq and (header is None or not _starts_resync(header, after=target.refused_gen)):
                target.skip(seq)
                self.cache.delete_segment(job.replica, job.disk, seq)
                log.info("segment.skipped server=%s disk=%s seq=%s reason=%s", job.server_id, job.disk, seq,
                         refusal or "before the mending resync")
                changed = True
                continue
            if header is None:
                job.fail(HealthCause.SEGMENT_CORRUPT, f"{refusal} It was not applied; resync this server.")
                target.refuse(seq, target.resync_seen)
                log.error("segment.refused server=%s disk=%s seq=%s: %s", job.server_id, job.disk, seq, refusal)
                return True, False
            if target.refused_seq:
                target.mended()
                if job.error_code == HealthCause.SEGMENT_CORRUPT:  # the pass may come before we learn it was asked
                    job.clear()
                log.info("resync.mended server=%s disk=%s seq=%s", job.server_id, job.disk, seq)
            resync_pass = header.initial_done if header.kind == Kind.RESYNC else None
            resync_done = resync_pass if header.bookmark else None
            point = None
            # No point while a resync is under way: the disk is a mix until the pass completes.
            if header.bookmark in _KINDS and max(target.resync_done, resync_done or 0) >= job.resync_gen:
                point = PointInfo(id=header.cycle, created_at=time.time(), kind=_KINDS[header.bookmark],
                                  source_time=header.source_time)
            target.apply(seq, blocks, point=point, resync_pass=resync_pass, resync_done=resync_done)
            if resync_pass is not None:
                job.note_resync(resync_pass, blocks)
            if point is not None:
                self._prune(job)
            if header.bookmark != Bookmark.NONE:
                job.bookmark_time, job.bookmark_source_time = time.time(), header.source_time or None
            self.cache.delete_segment(job.replica, job.disk, seq)
            changed = True
        return changed, False

    def _acked(self, job: DiskJob) -> int:
        """The last segment the process server acknowledged: only those may be applied. A segment
        stored but not acknowledged (a crash in between) is sent again and replaced."""
        try:
            state = self.cache.stream_state(job.replica, job.disk)
        except ValueError:  # unreadable: as if nothing were acknowledged yet
            return 0
        return state.acked_seq if state is not None else 0

    def _open(self, job: DiskJob, seq: int, present: set[int],
              arena: bytearray) -> tuple[BatchHeader | None, list[Block], str]:
        """Segment ``seq`` authenticated and decrypted (its blocks are views of ``arena``), or None and why it
        cannot be applied (a corrupt one is set aside)."""
        missing = f"Segment {seq} of disk {job.disk} is missing from the cache."
        if seq not in present:  # acknowledged means it was durable: deleted or moved behind our back
            return None, [], missing
        buffer = self._segments.take()
        try:
            try:
                raw = self.cache.read_segment(job.replica, job.disk, seq, buffer)
            except FileNotFoundError:
                return None, [], missing
            try:
                header, blocks = open_segment(self.keys.get(job.server_id), raw,
                                              SegmentIdent(job.server_id, job.disk, seq, job.epoch),
                                              self._decompressor(), arena)
            except SegmentCorrupt as exc:
                self.cache.set_aside(job.replica, job.disk, seq)
                return None, [], exc.message
            return header, blocks, ""  # the blocks are in the arena: the buffer can serve the next segment
        finally:
            self._segments.give(buffer)

    def _prune(self, job: DiskJob) -> None:
        """Delete points older than the retention. A point must be that old by the wall clock *and* by the
        steady clock: a wall clock that jumps forward (or back, for points stamped after it) makes points
        live longer, never shorter."""
        points = job.target.points()
        now, steady = time.time(), self._steady.now()
        while len(points) > 1 and now - points[0].created_at > job.retention \
                and steady - points[0].created_at > job.retention:
            job.target.delete_point(points[0].id)
            points.pop(0)

    def _paused(self, job: DiskJob, exc: OSError | TargetUnwritable) -> float:
        """A target that cannot be written: say why once, and when to try again."""
        if isinstance(exc, TargetUnwritable):  # the account refused (a credential, a container, another writer)
            code, message = HealthCause.TARGET_UNWRITABLE, (
                f"{exc.message} Disk {job.disk}'s changes wait in the cache; applying retries by itself.")
        elif isinstance(exc, TargetUnreachable):
            if job.error_code != HealthCause.TARGET_UNREACHABLE:
                job.unreachable_since = time.time()
            since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(job.unreachable_since))
            code, message = HealthCause.TARGET_UNREACHABLE, (
                f"The target storage does not answer since {since}: {exc.strerror or exc}. Disk {job.disk}'s "
                "changes wait safely in the cache, and applying resumes by itself when it answers; check the "
                "appliance's network and the storage account.")
        elif diskspace.is_no_space(exc):
            fs = self.storage.target_room()
            code, message = HealthCause.TARGET_FULL, (
                f"{fs[0].upper()}{fs[1:]} is full: disk {job.disk}'s seed disk cannot take more changes. They "
                "wait safely in the cache; free space on the appliance and applying resumes by itself.")
        else:
            code, message = HealthCause.TARGET_UNWRITABLE, (
                f"Disk {job.disk}'s seed disk under {self.storage.target_location()} cannot be written "
                f"({exc.strerror or exc}). Changes wait in the cache; check the appliance's storage. Applying "
                "retries by itself.")
        if job.error_code != code:  # said once (a log line, an event), not at every retry
            log.warning("apply.paused server=%s disk=%s: %s", job.server_id, job.disk, message)
            job.fail(code, message)
            job.dirty = True
        delay = PAUSE_BACKOFF.delay(job.pauses)
        job.pauses += 1
        return delay

    async def _drive(self, job: DiskJob, stop: asyncio.Event) -> None:
        """Apply one disk's segments, a slice at a time, for as long as it replicates. Never ends on
        an error but running out of memory (then the whole agent ends and a fresh one starts)."""
        server = self._servers.setdefault(job.server_id, asyncio.Lock())
        while not stop.is_set():
            try:
                wait = await self._slice(job, server)
                if job.dirty:
                    with contextlib.suppress(EngineError):
                        await self.report(job)
            except MemoryError:  # nothing here frees memory
                self.out_of_memory = True
                stop.set()
                return
            except Exception:  # a bug: said once with its traceback, then the disk is tried again
                log.exception("apply.failed server=%s disk=%s", job.server_id, job.disk)
                wait = PAUSE_BACKOFF.longest
            if wait:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await stop.wait()
            else:
                await asyncio.sleep(0)  # a turn for the others' reports

    async def _slice(self, job: DiskJob, server: asyncio.Lock) -> float:
        """One slice of work on a disk; returns how long to wait before the next."""
        loop = asyncio.get_running_loop()
        try:
            async with server:  # one worker per server at most: the others keep theirs
                changed, more = await loop.run_in_executor(self.pool, self.apply_pending, job)
        except FileNotFoundError:
            return REFRESH  # its files went away under us: disabled, the next refresh drops it
        except (OSError, TargetUnwritable) as exc:
            return self._paused(job, exc)
        except EngineError as exc:
            log.warning("log-processor: %s", exc)
            return 1.0
        if job.error_code is not None and job.error_code.pauses_applying:
            log.info("apply.resumed server=%s disk=%s", job.server_id, job.disk)
            job.clear()
            changed = True
        job.pauses = 0
        job.dirty |= changed
        return 0 if more else POLL

    async def report(self, job: DiskJob) -> None:
        report = AppliedReport(server_id=job.server_id, disk=job.disk, epoch=job.epoch,
                               applied_seq=job.target.applied_seq, resync_done=job.target.resync_done,
                               bookmark_time=job.bookmark_time, bookmark_source_time=job.bookmark_source_time,
                               error=job.error, error_code=job.error_code,
                               points=tuple(AppliedPoint(p.id, p.created_at, p.kind) for p in job.points),
                               resync_pass=job.resync_pass, resync_offset=job.resync_offset)
        await self.link.call("POST", "/agent/applied", report, Ack)
        job.dirty = False

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    replicating = await self.link.call("GET", "/agent/replicating", None, Replicating)
                    self.refresh(replicating)
                    if not self._ready:  # it reached the supervisor and knows its work
                        self.ctx.ready()
                        self._ready = True
                    # Deleting what earlier enablings left can take a while: not on this loop.
                    await asyncio.get_running_loop().run_in_executor(
                        self.pool, self._sweep, {s.server_id: s.desired.epoch for s in replicating.servers
                                                 if s.desired.epoch is not None})
                    for key, job in self.jobs.items():
                        if key not in self._drivers or self._drivers[key].done():
                            self._drivers[key] = asyncio.create_task(self._drive(job, stop),
                                                                     name=f"apply-{key[0]}-{key[1]}")
                except EngineError as exc:
                    log.warning("log-processor: %s", exc)
                except OSError as exc:  # e.g. a disabled server's files removed under us
                    log.warning("log-processor: %s", exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REFRESH):
                        await stop.wait()
        finally:
            for task in self._drivers.values():
                task.cancel()
            await asyncio.gather(*self._drivers.values(), return_exceptions=True)


def _starts_resync(header: BatchHeader, *, after: int) -> bool:
    """Whether a segment belongs to the full pass of a resync of a generation later than ``after``."""
    return bool(header.kind == Kind.RESYNC and header.initial_done > after)


async def serve(ctx: AgentContext) -> None:
    processor = LogProcessor(ctx)
    try:
        await processor.run(ctx.stop)
    finally:
        await processor.link.aclose()
        processor.pool.shutdown(wait=True)
    if processor.out_of_memory:
        raise MemoryError
