"""The mobility service's data path: initial replication, then delta cycles, to the data port.

Which blocks to read comes from each disk's change tracking (``sources.py``); whether to send a
block read comes from its digest (``digests.py``, updated only after the process server
acknowledged the block, so after any crash a block is sent again rather than lost). Each pass is
read and cut into batches (``batches.py``) by this thread and sent by sender threads (:meth:`send`,
over ``appliance_client.py``), so that reading overlaps with the network: to an appliance that speaks
data 1.1, ``SENDERS`` batches are in flight at once, each on its own connection (the appliance seals
them side by side and makes them durable in order), and their digests are committed in order. Where initial
replication stands is asked from the process server (the source of truth for what is durable), so it
resumes, never restarts. A cycle that is due a recovery point catches up in passes while the server
writes, then takes every disk at one instant in a short window (``_window``).
Runs in its own thread; the heartbeat loop hands it the desired state.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import zstandard

from engine.backoff import Backoff
from engine.errors import ApplianceUnreachable, EngineError, FingerprintMismatch, Revoked, VersionMismatch
from engine.links.data import EPOCH_HEADER, SENDER_HEADER, StreamState, StreamStates
from engine.links.management import PointFacts, PolicyTerms
from engine.mobility import consistency
from engine.mobility.appliance_client import ApplianceClient, data_client
from engine.mobility.batches import Batch, Labels, cut_batches
from engine.mobility.digests import Tracker
from engine.mobility.sources import Captured, Reader, SourceDisk, TrackedDevice, WindowOverrun, Work, open_disk
from engine.mobility.tracking import remove_stale_instances
from engine.protocol import BLOCK, Bookmark, Kind

log = logging.getLogger(__name__)

#: Tells the admin once, as an event with the next heartbeat: ``notify(severity, code, message)``.
Notify = Callable[[Literal["info", "warning"], str, str], None]

#: How long a batch the appliance did not take waits before it is sent again.
BATCH_RETRY = Backoff((0.5, 1.0, 2.0, 4.0, 8.0, 15.0))
#: Seconds between delta cycles at most (sooner if the policy's crash-consistent cadence is shorter).
MAX_CYCLE_INTERVAL = 5.0
#: Catch-up passes before a point's window, at most; windows tried before a point is labelled
#: not crash-consistent.
MAX_PASSES = 6
WINDOW_ATTEMPTS = 2
#: How long writers may be held up for a point, by default.
FREEZE_BUDGET = 0.2
#: Batches in flight at once, each on its own connection, to an appliance that speaks data 1.1 (one to an older
#: one): while one is made durable the next crosses the network and is sealed.
SENDERS = 2
#: zstd level of the runs packed here (data 1.2): the process server's own.
PACK_LEVEL = 1


def retryable(exc: EngineError) -> bool:
    """Worth trying again later: the appliance was not reached, or it reported trouble of its own
    (5xx: its engine restarting, its disk or cache full, an internal error). A refusal that only the
    admin can undo (a revoked registration, a wrong passphrase or name, a batch that is not the
    protocol), a wrong identity (a CA other than the pinned one) or an appliance that speaks another
    major version of the protocol is not."""
    if isinstance(exc, Revoked | FingerprintMismatch | VersionMismatch):
        return False
    return isinstance(exc, ApplianceUnreachable) or exc.status >= 500


@dataclass
class Desired:
    """What the appliance last asked for (set by the heartbeat loop)."""

    data_port: int
    policy: PolicyTerms
    max_mbps: float | None
    disk_sizes: list[int]
    resync_gen: int = 0
    epoch: int = 0


@dataclass
class SnapshotHooks:
    """Commands that quiesce the source's applications (pre) and resume them (post), and file
    systems to freeze with fsfreeze around an app-consistent cycle."""

    pre_command: str | None = None
    post_command: str | None = None
    freeze: tuple[str, ...] = ()
    timeout: float = 60.0

    @property
    def configured(self) -> bool:
        return bool(self.pre_command or self.freeze)

    def _run(self, argv: list[str], what: str) -> bool:
        import subprocess

        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("%s failed (%s): this point is crash-consistent only", what, exc)
            return False
        if res.returncode != 0:
            log.warning("%s exited %d (%s): this point is crash-consistent only", what, res.returncode,
                        (res.stderr.strip().splitlines() or [""])[-1][:200])
            return False
        return True

    def pre(self) -> bool:
        """Quiesce; on failure undo what was done and return False."""
        if self.pre_command and not self._run(["sh", "-c", self.pre_command], "pre-snapshot hook"):
            self._resume(())
            return False
        for i, mount in enumerate(self.freeze):
            if not self._run(["fsfreeze", "--freeze", mount], f"fsfreeze of {mount}"):
                self._resume(self.freeze[:i])
                return False
        return True

    def post(self) -> None:
        self._resume(self.freeze)

    def _resume(self, frozen: tuple[str, ...]) -> None:
        for mount in reversed(frozen):
            self._run(["fsfreeze", "--unfreeze", mount], f"fsfreeze --unfreeze of {mount}")
        if self.post_command:
            self._run(["sh", "-c", self.post_command], "post-snapshot hook")


class ReadRate:
    """How fast the source's disks read (bytes/s, smoothed): sizes what fits in a freeze."""

    def __init__(self, initial: float = 200e6) -> None:
        self.bytes_per_second = initial

    def add(self, nbytes: int, seconds: float) -> None:
        if nbytes >= BLOCK and seconds > 0:
            self.bytes_per_second = 0.8 * self.bytes_per_second + 0.2 * (nbytes / seconds)


@dataclass
class CaptureStats:
    """How points are being taken, for heartbeats (the admin's health view) and the logs."""

    freeze_budget: float = FREEZE_BUDGET
    freezes: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    freezing: float = 0.0  #: how long the freeze call itself takes (smoothed, seconds)
    deferred: str | None = None  #: why the last point was deferred, if it was
    inconsistent: str | None = None  #: why the last point is not crash-consistent, if it is not

    def facts(self) -> PointFacts:
        return PointFacts(last_freeze_ms=round(self.freezes[-1] * 1000, 1) if self.freezes else None,
                          deferred=self.deferred, inconsistent=self.inconsistent)


class RateLimit:
    """The admin's cap on the data port (Mbit/s), shared by the sender threads."""

    def __init__(self) -> None:
        self.mbps: float | None = None
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self, nbytes: int, stop: threading.Event) -> None:
        with self._lock:
            now = time.monotonic()
            if not self.mbps:
                self._next = now
                return
            self._next = due = max(self._next, now) + nbytes * 8 / (self.mbps * 1e6)
        if due - now > 0:
            stop.wait(due - now)


class Replicator(threading.Thread):
    def __init__(self, *, host: str, state_dir: Path, disks: list[str], context: ssl.SSLContext,
                 desired: Desired, hooks: SnapshotHooks | None = None, freeze_budget: float = FREEZE_BUDGET,
                 notify: Notify | None = None) -> None:
        super().__init__(name="replicator", daemon=True)
        self.host = host
        self.hooks = hooks or SnapshotHooks()
        #: Tells the admin (through the next heartbeat): ``notify(severity, code, message)``.
        self.notify = notify or (lambda severity, code, message: None)
        self.capture = CaptureStats(freeze_budget=freeze_budget)
        self.sources: list[SourceDisk] = []
        self._freezer = consistency.Freezer(state_dir / "frozen.json")
        self._read_rate = ReadRate()
        self._last_app_point = 0.0
        self.state_dir = state_dir
        self.disks = disks
        self.context = context
        #: Set when the desired state changes: the wait between two cycles ends, so a resync or new policy terms
        #: start now rather than at the next cycle.
        self._changed = threading.Event()
        self._desired = desired
        self.stop = threading.Event()
        self.rate = RateLimit()
        #: The data port; its port is the desired state's when this replicator started (another port
        #: starts another replicator). One connection per sender thread; the first also asks the stream states.
        self.clients = [data_client(host, desired.data_port, context) for _ in range(SENDERS)]
        self.client = self.clients[0]
        #: This run of the sender, to the appliance (data 1.1): only its own batches follow one another in flight.
        self.sender_id = secrets.token_hex(8)
        self._seq: dict[int, int] = {}
        #: Packs runs (used by this thread only, which cuts the batches).
        self._zstd: zstandard.ZstdCompressor | None = None
        #: Per disk, the last batch whose digests were committed (they are committed in order).
        self._committed: dict[int, int] = {}
        self._commits = threading.Condition()
        self._last_point = 0.0
        self.error: EngineError | None = None
        #: Why this replicator stopped on a source disk it could not read (None: it did not).
        self.read_failure: str | None = None
        #: Delta cycles completed: one means the disks are being read again.
        self.cycles_done = 0
        #: Batches read and encoded, waiting for a sender thread (one ready beside those in flight).
        self._outbox: queue.Queue[tuple[Batch, Tracker]] = queue.Queue(maxsize=1)
        self._sender_error: Exception | None = None

    def __repr__(self) -> str:
        return f"<Replicator {self.host}:{self.desired.data_port} seq={self._seq} committed={self._committed}>"

    @staticmethod
    def tracking_dir(state_dir: Path, epoch: int) -> Path:
        """Change tracking of one enabling of replication: never mixed with an earlier one's."""
        path = state_dir / f"epoch-{epoch}"
        path.mkdir(exist_ok=True, mode=0o700)
        return path

    # --- sending: the data port -------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {EPOCH_HEADER: str(self.desired.epoch), SENDER_HEADER: self.sender_id}

    def _senders(self) -> int:
        """How many batches may be in flight: several only to an appliance that speaks data 1.1."""
        version = self.client.peer_version
        return SENDERS if version is not None and version >= (1, 1) else 1

    def _packer(self) -> zstandard.ZstdCompressor | None:
        """What packs runs before they cross the network, for an appliance that speaks data 1.2 (None: they go as
        they are). Packing here costs the source less CPU than sending the bytes it saves over TLS."""
        version = self.client.peer_version
        if version is None or version < (1, 2):
            return None
        if self._zstd is None:
            self._zstd = zstandard.ZstdCompressor(level=PACK_LEVEL)
        return self._zstd

    def send(self, disk: int, body: bytes | bytearray, client: ApplianceClient | None = None) -> StreamState:
        """The sending step: one batch until it is acknowledged. What is :func:`retryable` (the appliance
        busy, its disk or cache full, an internal error, unreachable) is sent again with a growing wait,
        one line each time saying why; a refusal raises; :class:`InterruptedError` once stopped."""
        attempt = 0
        while not self.stop.is_set():
            self.rate.mbps = self.desired.max_mbps
            self.rate.wait(len(body), self.stop)
            try:
                state = (client or self.client).call("POST", f"/v1/streams/{disk}/batches", body, StreamState,
                                                     headers=self._headers())
            except EngineError as exc:
                if not retryable(exc):
                    raise
                delay = BATCH_RETRY.delay(attempt)
                log.warning("disk %d: batch not taken (%s): %s. Retrying in %.1f s.", disk, exc.code,
                            str(exc).rstrip("."), delay)
                self.stop.wait(delay)
                attempt += 1
                continue
            if attempt:
                log.info("disk %d: the appliance takes batches again", disk)
            return state
        raise InterruptedError

    def _queue(self, batch: Batch, tracker: Tracker) -> None:
        """Hand a batch to the sender thread, so that reading the next one overlaps with this one's trip."""
        while not self.stop.is_set():
            self._raise_sender_error()
            try:
                self._outbox.put((batch, tracker), timeout=0.2)
                return
            except queue.Full:
                continue
        raise InterruptedError

    def _drain(self) -> None:
        """Wait until every queued batch is acknowledged (the end of a cycle)."""
        while self._outbox.unfinished_tasks:
            self._raise_sender_error()
            if self.stop.wait(0.005):
                raise InterruptedError
        self._raise_sender_error()

    def _raise_sender_error(self) -> None:
        if self._sender_error is not None:
            raise self._sender_error

    def _sender(self, client: ApplianceClient) -> None:
        while not self.stop.is_set():
            try:
                batch, tracker = self._outbox.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.send(batch.disk, batch.body, client)
                # Only what the appliance acknowledged counts as sent, in the order it was: a block carried by two
                # batches in flight ends up with the later one's digest.
                with self._commits:
                    while self._committed[batch.disk] != batch.seq - 1:
                        if self.stop.is_set() or self._sender_error is not None:
                            raise InterruptedError
                        self._commits.wait(0.2)
                    tracker.commit(batch.digests, batch.token)
                    self._committed[batch.disk] = batch.seq
                    self._commits.notify_all()
            except InterruptedError:
                return
            except Exception as exc:  # handed to the replicator thread, which stops (and is restarted)
                self._sender_error = exc
                return
            finally:
                self._outbox.task_done()

    # --- reading the source ---------------------------------------------------------------------------
    def _send(self, disk: int, tracker: Tracker, work: Work, reader: Reader, *, kind: Kind, bookmark: Bookmark,
              cycle: int, generation: int = 0) -> int:
        """Read the work's blocks and queue for sending those whose content differs from what the
        appliance has (:func:`cut_batches`). Returns the bytes queued. The last batch carries
        ``bookmark`` (nothing is sent for an empty work without a bookmark)."""
        sent = 0
        for batch in cut_batches(self.sources[disk], tracker, work, reader, Labels(kind, bookmark, cycle, generation),
                                 first_seq=self._seq[disk], stop=self.stop, disk_read=self._read_rate.add,
                                 packer=self._packer()):
            self._seq[disk] = batch.seq + 1
            self._queue(batch, tracker)
            sent += batch.data_bytes
        return sent

    # --- the loop ------------------------------------------------------------------------------------------
    @property
    def desired(self) -> Desired:
        return self._desired

    @desired.setter
    def desired(self, desired: Desired) -> None:
        """The desired state applies live; a different one also ends the wait for the next cycle."""
        changed = desired != self._desired
        self._desired = desired
        if changed:
            self._changed.set()

    def _pause(self, seconds: float) -> None:
        """Until the next cycle is due, the desired state changes, or the replicator stops."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if self._changed.wait(min(left, 0.25)):
                break
        self._changed.clear()

    def _bookmark(self, now: float) -> Bookmark:
        app_every = self.desired.policy.app_consistent_every
        if self.hooks.configured and app_every is not None and now - self._last_app_point >= float(app_every):
            return Bookmark.APP_POINT
        every = self.desired.policy.crash_consistent_every
        if now - self._last_point >= every:
            return Bookmark.CRASH_POINT
        return Bookmark.CYCLE_END

    def _resync_done(self) -> int:
        try:
            path = self.tracking_dir(self.state_dir, self.desired.epoch) / "resync.json"
            return int(json.loads(path.read_text())["done"])
        except (OSError, ValueError, KeyError):
            return 0

    def _resync(self, trackers: list[Tracker], cycle: int) -> None:
        """A full pass: forget what the appliance is thought to have, send every block; the next cycle
        takes a point."""
        generation = self.desired.resync_gen
        log.info("resync %d: sending every block again", generation)
        for i, tracker in enumerate(trackers):
            tracker.forget()
            self.sources[i].need_full(None)
            work, reader = self.sources[i].pass_work(tracker.was_data)
            self._send(i, tracker, work, reader, kind=Kind.RESYNC, bookmark=Bookmark.CYCLE_END, cycle=cycle,
                       generation=generation)
        self._drain()
        path = self.tracking_dir(self.state_dir, self.desired.epoch) / "resync.json"
        path.write_text(json.dumps({"done": generation}))
        self._last_point = 0.0
        log.info("resync %d complete", generation)

    def _note_lost(self) -> None:
        """Disks whose tracking lost writes get a full compare, and the admin an event saying why."""
        for src in self.sources:
            why = src.lost()
            if why:
                src.need_full(why)
                self.notify("warning", "tracking-lost", f"{src.path}: change tracking lost writes ({why}); "
                            "comparing the whole disk once.")
            elif src.full and src.full_reason:
                self.notify("info", "full-compare", f"{src.path}: {src.full_reason}; comparing the whole disk once.")

    def _pass(self, trackers: list[Tracker], cycle: int, bookmark: Bookmark) -> int:
        """One pass over every disk: send what changed, while the server keeps writing."""
        sent = 0
        for i, (src, tracker) in enumerate(zip(self.sources, trackers, strict=True)):
            work, reader = src.pass_work(tracker.was_data)
            sent += self._send(i, tracker, work, reader, kind=Kind.DELTA, bookmark=bookmark, cycle=cycle)
        return sent

    def _window_bytes(self) -> int:
        """What can be read inside the freeze budget once freezing itself took its usual time, with room
        to spare (freezing a busy file system flushes its journal: tens of milliseconds)."""
        left = self.capture.freeze_budget - self.capture.freezing
        return int(self._read_rate.bytes_per_second * max(0.0, left) * 0.5)

    def _window(self, trackers: list[Tracker], app: bool) -> tuple[list[Captured], bool] | None:
        """Freeze, take every disk at this instant, thaw. Returns what was captured and whether the
        app hooks ran; None when the remainder did not fit in the budget (nothing was taken).
        Nothing in the window logs or writes a file: either may be on a frozen file system."""
        mounts = list(dict.fromkeys(m for src in self.sources if isinstance(src, TrackedDevice) for m in src.mounts()))
        # Armed before the hook runs: a --freeze mount may hold the state directory or a cloned image.
        self._freezer.arm(mounts + list(self.hooks.freeze if app else ()))
        hooks_ok = False
        captured: list[Captured] = []
        try:
            hooks_ok = app and self.hooks.pre()
            for src in self.sources:  # outside the freeze, so the freeze has little left to flush
                src.flush()
            began = time.perf_counter()
            skipped = self._freezer.freeze(mounts)
            frozen_at = time.perf_counter()
            try:
                deadline = began + self.capture.freeze_budget
                for src, t in zip(self.sources, trackers, strict=True):
                    captured.append(src.capture(t.was_data, deadline))
                for src, c in zip(self.sources, captured, strict=True):
                    src.verify(c)
            except WindowOverrun:
                for c in captured:  # give back what the disks before the overrun took
                    if c.undo is not None:
                        c.undo()
                return None
            finally:
                self._freezer.thaw()
                frozen = time.perf_counter() - began
        finally:
            if hooks_ok:
                self.hooks.post()
            self._freezer.finish()
        for mount, why in skipped:
            log.warning("%s was not frozen (%s): this point is checked instead", mount, why)
        self.capture.freezes.append(frozen)
        self.capture.freezing = 0.7 * self.capture.freezing + 0.3 * (frozen_at - began)
        log.info("point.window frozen_ms=%.1f freezing_ms=%.1f mounts=%d bytes=%d consistent=%s", frozen * 1000,
                 (frozen_at - began) * 1000, len(mounts) - len(skipped), sum(n for c in captured for _, n, _ in c.work),
                 all(c.consistent for c in captured))
        return captured, hooks_ok

    def _point_cycle(self, trackers: list[Tracker], bookmark: Bookmark, cycle: int) -> int:
        """Catch up while the server writes, then take every disk at one instant (see sources.py).
        A point whose remainder does not fit the freeze budget is deferred to the next cycle."""
        sent = 0
        for attempt in range(1, WINDOW_ATTEMPTS + 1):
            if attempt > 1:
                self._note_lost()
            for _ in range(MAX_PASSES):
                sent += self._pass(trackers, cycle, Bookmark.NONE)
                pending = sum(src.pending_bytes() for src in self.sources)
                if pending <= self._window_bytes():
                    break
            window = self._window(trackers, bookmark == Bookmark.APP_POINT) if pending <= self._window_bytes() \
                else None
            if window is None:
                self.capture.deferred = (f"The point was deferred: {pending / 1e6:.1f} MB changed faster than it "
                                         f"could be read within the {self.capture.freeze_budget * 1000:.0f} ms freeze "
                                         "budget. Raise --freeze-budget-ms or reduce the write load.")
                log.warning("point.deferred pending=%d budget_ms=%.0f", pending, self.capture.freeze_budget * 1000)
                self.capture.freezing *= 0.7  # never locked out by one slow freeze: measure again soon
                return sent + self._pass(trackers, cycle, Bookmark.CYCLE_END)
            self.capture.deferred = None
            captured, hooks_ok = window
            consistent = all(c.consistent for c in captured)
            if consistent or attempt == WINDOW_ATTEMPTS:
                mark = (Bookmark.APP_POINT if hooks_ok else Bookmark.CRASH_POINT) if consistent \
                    else Bookmark.INCONSISTENT_POINT
                if not consistent:
                    why = next(c.why_not for c in captured if not c.consistent)
                    log.warning("point.not-crash-consistent %s", why)
                    self.capture.inconsistent = why
                else:
                    self.capture.inconsistent = None
            else:
                mark = Bookmark.NONE  # valid data all the same; try another instant
            for i, (c, tracker) in enumerate(zip(captured, trackers, strict=True)):
                if c.later is not None:
                    c.work, c.reader = c.later()
                assert c.reader is not None or not c.work
                sent += self._send(i, tracker, c.work, c.reader or self.sources[i].read, kind=Kind.DELTA,
                                   bookmark=mark, cycle=cycle)
            if mark != Bookmark.NONE:
                # The cycle's start, which the next cycles' starts are compared with: a point taken a little into
                # its cycle must not make the cycle one interval later look too early for the next point.
                now = cycle / 1000
                self._last_point = now
                if mark == Bookmark.APP_POINT or (bookmark == Bookmark.APP_POINT and not hooks_ok):
                    self._last_app_point = now
                return sent
        raise AssertionError("unreachable: the last attempt always marks")

    def _cycle(self, trackers: list[Tracker], bookmark: Bookmark, cycle: int) -> int:
        self._note_lost()
        if bookmark == Bookmark.CYCLE_END:
            return self._pass(trackers, cycle, Bookmark.CYCLE_END)
        return self._point_cycle(trackers, bookmark, cycle)

    def _open_sources(self) -> None:
        remove_stale_instances()
        for i, path in enumerate(self.disks):
            self.sources.append(open_disk(i, path, self.desired.disk_sizes[i],
                                          tracer_name=f"godwit-{self.desired.epoch}-{os.getpid()}-{id(self):x}-disk{i}"))
        self.sources[0].alone = len(self.sources) == 1

    def run(self) -> None:
        trackers: list[Tracker] = []
        senders: list[threading.Thread] = []
        try:
            self._open_sources()  # tracking starts before anything is read
            streams: dict[int, StreamState] = {}
            while not self.stop.is_set():
                try:
                    states = self.client.call("GET", "/v1/streams", None, StreamStates, headers=self._headers())
                    streams = {d.disk: d.state for d in states.disks}
                    break
                except EngineError as exc:
                    if not retryable(exc):
                        raise
                    log.warning("stream state not read (%s): %s; retrying", exc.code, str(exc).rstrip("."))
                    self.stop.wait(2.0)
            for i, size in enumerate(self.desired.disk_sizes):
                tracker = Tracker(self.tracking_dir(self.state_dir, self.desired.epoch) / f"disk{i}.digests", size)
                acked = streams.get(i, StreamState()).acked_seq
                if tracker.fresh and acked > 0:
                    tracker.forget()  # the appliance has data we no longer know about: compare everything
                elif not tracker.fresh and acked == 0:
                    # the appliance has nothing of this copy although we sent it some (e.g. restored from a backup
                    # without its storage): its seed disk is zeros, so everything with data goes again
                    log.warning("the appliance holds nothing of %s: replicating it from the start", self.disks[i])
                    tracker.reset()
                trackers.append(tracker)
                self._seq[i] = streams.get(i, StreamState()).acked_seq + 1
                self._committed[i] = self._seq[i] - 1
                self.sources[i].need_full("the mobility service started, so writes made while it was not running "
                                          "are unknown")
            for client in self.clients[:self._senders()]:
                senders.append(threading.Thread(target=self._sender, args=(client,), daemon=True,
                                                name=f"replicator-sender-{len(senders)}"))
                senders[-1].start()
            for i, tracker in enumerate(trackers):
                state = streams.get(i, StreamState())
                if not state.initial_complete:
                    start = state.initial_done // BLOCK * BLOCK
                    log.info("initial replication of %s from offset %d", self.disks[i], start)
                    src = self.sources[i]
                    src.need_full(None)
                    src.full_reason = None
                    work, reader = src.pass_work(tracker.was_data, start=start)
                    self._send(i, tracker, work, reader, kind=Kind.INITIAL, bookmark=Bookmark.CYCLE_END,
                               cycle=int(time.time() * 1000))
                    self._drain()
                    if start:  # what was written below ``start`` while the service was not running is unknown
                        src.need_full("initial replication resumed after a restart")
                    log.info("initial replication of %s complete", self.disks[i])
            self._last_point = 0.0  # the first cycle after (any) initial replication is a recovery point
            while not self.stop.is_set():
                started = time.time()
                cycle = int(started * 1000)
                if self.desired.resync_gen > self._resync_done():
                    self._resync(trackers, cycle)
                    continue
                sent = self._cycle(trackers, self._bookmark(started), cycle)
                self._drain()
                self.cycles_done += 1
                log.debug("delta cycle %d: %d bytes in %.3f s", cycle, sent, time.time() - started)
                interval = min(MAX_CYCLE_INTERVAL, self.desired.policy.crash_consistent_every)
                self._pause(interval - (time.time() - started))
        except InterruptedError:
            pass
        except EngineError as exc:
            self.error = exc
            log.error("replication stopped: %s", exc)
        except OSError as exc:  # a disk that vanished or cannot be read; the next heartbeat restarts us
            self.read_failure = f"reading {getattr(exc, 'filename', None) or 'a source disk'} failed " \
                f"({exc.strerror or exc})"
            log.error("replication stopped: %s", self.read_failure)
        except Exception:  # a bug: logged with its traceback; the next heartbeat restarts replication
            log.exception("replication stopped by an internal error")
        finally:
            self.stop.set()
            for client in self.clients:
                client.close()  # unblocks a sender waiting on the network
            deadline = time.monotonic() + 30
            for sender in senders:
                sender.join(timeout=max(0.0, deadline - time.monotonic()))
            if not any(s.is_alive() for s in senders):  # else one may still commit to them; leave them to the end
                for t in trackers:
                    t.close()
            for src in self.sources:
                src.close()
