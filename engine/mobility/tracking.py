"""Change tracking of block devices through the kernel's block-layer tracepoints (no module).

Each tracked disk gets a private tracefs instance whose ``block_bio_queue`` and
``block_rq_complete`` events (and ``block_bio_complete`` for bio-based devices) are filtered to
that disk and to writes and discards. A reader thread turns every event into bits of a
:class:`DirtyMap` (one bit per 64 KiB block). Completion events matter: a write whose queue event
was consumed while it was still in flight is marked again when it completes, so a block read
before the write landed is read again.

A :meth:`BlockTracer.barrier` writes a marker into the instance and waits until the reader has
passed it: every write that completed before the call is in the map afterwards (``trace_pipe``
merges the per-CPU buffers in time order). Lost events (``overrun`` in the per-CPU stats) make the
tracer :attr:`~BlockTracer.lost`: the disk must then be compared in full once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import threading
from pathlib import Path

from engine.protocol import BLOCK

log = logging.getLogger(__name__)

TRACEFS = Path("/sys/kernel/tracing")
#: Per-CPU ring buffer of an instance; the reader empties it continuously.
BUFFER_KB = int(os.environ.get("GODWIT_TRACE_BUFFER_KB", "4096"))
_EVENT = re.compile(rb"block_(?:bio_queue|rq_complete|bio_complete): \d+,\d+ \S+ (?:\([^)]*\) )?(\d+) \+ (\d+)")
_MARK = b"tracing_mark_write: godwit-barrier-"
_SECTOR = 512


class TrackingUnavailable(Exception):
    """Block-layer tracking cannot be used here (not root, no tracefs, not a block device)."""


class DirtyMap:
    """Which 64 KiB blocks of a disk were written since the last :meth:`take`. Thread-safe."""

    def __init__(self, size: int) -> None:
        self.blocks = -(-size // BLOCK)
        self._bits = bytearray(-(-self.blocks // 8))
        self._lock = threading.Lock()
        self.marks = 0  #: how many ranges were ever marked (a quiet check compares two readings)

    def __repr__(self) -> str:
        return f"<DirtyMap blocks={self.blocks} dirty={self.count()} marks={self.marks}>"

    def mark(self, start: int, end: int) -> None:
        """Mark the blocks that bytes [start, end) touch."""
        first, last = start // BLOCK, min(self.blocks, -(-end // BLOCK))
        with self._lock:
            self.marks += 1
            b = first
            while b < last and b & 7:
                self._bits[b >> 3] |= 1 << (b & 7)
                b += 1
            whole = last & ~7  # a discard of a terabyte must not stall the reader
            if b < whole:
                self._bits[b >> 3:whole >> 3] = b"\xff" * ((whole - b) >> 3)
                b = whole
            while b < last:
                self._bits[b >> 3] |= 1 << (b & 7)
                b += 1

    def mark_all(self) -> None:
        with self._lock:
            self.marks += 1
            self._bits[:] = b"\xff" * len(self._bits)

    def take(self) -> bytearray:
        """The dirty bits, and a clean map from now on."""
        with self._lock:
            bits, self._bits = self._bits, bytearray(len(self._bits))
        return bits

    def put_back(self, bits: bytearray) -> None:
        """Mark again what a :meth:`take` returned but was not read after all."""
        n = len(self._bits)
        with self._lock:
            merged = int.from_bytes(self._bits, "little") | int.from_bytes(bits, "little")
            self._bits[:] = merged.to_bytes(n, "little")

    def count(self) -> int:
        with self._lock:
            return int.from_bytes(self._bits, "little").bit_count()

    def runs(self, bits: bytearray, size: int) -> list[tuple[int, int]]:
        """Byte ranges ``[lo, hi)`` of the dirty blocks in ``bits``, ascending and merged."""
        out: list[tuple[int, int]] = []

        def add(first: int, last: int) -> None:  # blocks [first, last)
            last = min(last, self.blocks)
            if first < last:
                lo, hi = first * BLOCK, min(size, last * BLOCK)
                if out and out[-1][1] == lo:
                    out[-1] = (out[-1][0], hi)
                else:
                    out.append((lo, hi))

        for m in _DIRTY.finditer(bits):  # whole bytes at once (a big discard), else bit by bit
            if bits[m.start()] == 0xFF:
                add(m.start() * 8, m.end() * 8)
                continue
            byte, base = bits[m.start()], m.start() * 8
            for j in range(8):
                if byte >> j & 1:
                    add(base + j, base + j + 1)
        return out


_DIRTY = re.compile(rb"\xff+|[^\x00]")
def device_number(path: str) -> int:
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        raise TrackingUnavailable(f"{path} is not a block device")
    return st.st_rdev


def _mount_tracefs() -> None:
    if (TRACEFS / "instances").is_dir():
        return
    if os.geteuid() != 0:
        raise TrackingUnavailable("tracefs is not mounted and only root can mount it")
    import subprocess

    res = subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True, text=True)
    if res.returncode != 0 or not (TRACEFS / "instances").is_dir():
        raise TrackingUnavailable(f"tracefs cannot be mounted ({res.stderr.strip() or res.returncode})")


def remove_stale_instances() -> None:
    """Remove trace instances of mobility services that were killed (their pid is in the name)."""
    instances = TRACEFS / "instances"
    if os.geteuid() != 0 or not instances.is_dir():
        return
    for inst in instances.glob("godwit-*-disk*"):  # godwit-<epoch>-<pid>-<replicator>-disk<N>
        try:
            pid = int(inst.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            _remove_instance(inst)


def _remove_instance(instance: Path) -> None:
    for event in ("block_bio_queue", "block_rq_complete", "block_bio_complete"):
        with contextlib.suppress(OSError):
            (instance / "events" / "block" / event / "enable").write_text("0")
    with contextlib.suppress(OSError):
        instance.rmdir()


class BlockTracer:
    """Writes to one block device, as they reach the block layer, into a :class:`DirtyMap`."""

    def __init__(self, path: str, size: int, *, name: str) -> None:
        if os.geteuid() != 0:
            raise TrackingUnavailable("block-layer tracking needs root")
        rdev = device_number(path)
        _mount_tracefs()
        self.path = path
        self.map = DirtyMap(size)
        self._size = size
        self._instance = TRACEFS / "instances" / name
        self._seen = 0  # barriers the reader has passed
        self._asked = 0
        self._cond = threading.Condition()
        self._overruns = 0
        self.lost: str | None = None  #: why events may have been lost since the last :meth:`reset_lost`
        self._closing = False
        major, minor = os.major(rdev), os.minor(rdev)
        kernel_dev = major << 20 | minor
        request_based = Path(f"/sys/dev/block/{major}:{minor}/mq").is_dir()
        events = ["block_bio_queue", "block_rq_complete" if request_based else "block_bio_complete"]
        _remove_instance(self._instance)  # left by a process that was killed: its events are of no use
        try:
            self._instance.mkdir()
            (self._instance / "buffer_size_kb").write_text(str(BUFFER_KB))
            (self._instance / "options" / "context-info").write_text("0")
            # trace_pipe merges the per-CPU buffers by timestamp: the barrier needs one clock for all CPUs.
            (self._instance / "trace_clock").write_text("global")
            for event in events:
                folder = self._instance / "events" / "block" / event
                # W write, D discard, N anything else with data such as write-zeroes (blk_fill_rwbs); R and F
                # (flush) carry no change.
                (folder / "filter").write_text(f'dev == {kernel_dev} && rwbs ~ "*[WDN]*"')
                (folder / "enable").write_text("1")
            self._pipe = os.open(self._instance / "trace_pipe", os.O_RDONLY)
        except OSError as exc:
            self._remove()
            raise TrackingUnavailable(f"tracefs instance for {path}: {exc.strerror or exc}") from exc
        self._marker = os.open(self._instance / "trace_marker", os.O_WRONLY)
        self._reader = threading.Thread(target=self._read, name=f"trace-{os.path.basename(path)}", daemon=True)
        self._reader.start()
        self._overruns = self._overrun_count()
        log.info("tracking.started disk=%s dev=%d:%d events=%s", path, major, minor, ",".join(events))

    def __repr__(self) -> str:
        return f"<BlockTracer {self.path} {self.map!r} lost={self.lost!r}>"

    def _read(self) -> None:
        tail = b""
        while True:
            try:
                chunk = os.read(self._pipe, 1 << 16)
            except OSError as exc:
                if not self._closing:
                    self.lost = f"reading the trace failed ({exc.strerror})"
                return
            if not chunk:
                return
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            for line in lines:
                m = _EVENT.search(line)
                if m:
                    sectors = int(m.group(2))
                    if sectors:  # a flush ("FWS 0 + 0") carries no data
                        start = int(m.group(1)) * _SECTOR
                        self.map.mark(start, start + sectors * _SECTOR)
                elif _MARK in line:
                    with self._cond:
                        self._seen = max(self._seen, int(line.rsplit(b"-", 1)[1] or 0))
                        self._cond.notify_all()
                    if self._closing:
                        return

    def _overrun_count(self) -> int:
        total = 0
        for stats in (self._instance / "per_cpu").glob("cpu*/stats"):
            for line in stats.read_text().splitlines():
                if line.startswith("overrun:"):
                    total += int(line.split(":")[1])
        return total

    def barrier(self, timeout: float = 2.0) -> bool:
        """Wait until every write completed before this call is in the map. False if the reader did
        not get there in time (then treat the map as incomplete)."""
        with self._cond:
            self._asked += 1
            n = self._asked
        os.write(self._marker, b"godwit-barrier-%d" % n)
        with self._cond:
            ok = self._cond.wait_for(lambda: self._seen >= n or not self._reader.is_alive(), timeout)
        if not ok or not self._reader.is_alive():
            self.lost = self.lost or "the trace reader fell behind"
            return False
        overruns = self._overrun_count()
        if overruns != self._overruns:
            self._overruns = overruns
            self.lost = self.lost or f"the kernel's trace buffer overflowed ({overruns} events lost in all)"
        return True

    def reset_lost(self) -> str | None:
        """Why tracking was lost (None if it was not); from now on it counts again."""
        why, self.lost = self.lost, None
        return why

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            os.write(self._marker, b"godwit-barrier-0")
        self._reader.join(timeout=2)
        if self._reader.is_alive():
            # Closing its pipe under it could hand the number to another tracer's pipe: leave both to the
            # process's end (the instance is removed as stale at the next start).
            log.warning("tracking.close reader still busy disk=%s", self.path)
            return
        for fd in (self._pipe, self._marker):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._remove()

    def _remove(self) -> None:
        _remove_instance(self._instance)
