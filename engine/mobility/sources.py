"""The source disks of a server, by kind: how changes are found and how a point is taken.

- Block device (root, tracefs): changes from the block-layer trace (:mod:`tracking`); a point
  freezes its mounted file systems, reads the remainder and checks that no write arrived meanwhile.
- Block device otherwise: every block compared each cycle; never crash-consistent.
- File on XFS/btrfs (reflinks): changes from the extent maps of consecutive clones; a point is a
  ``FICLONE``.
- Any other file: skipped while its ctime/mtime/size/inode stay; compared in full when they moved; a
  point is consistent only if the file was not written since it was last read.

Each cycle asks every disk for a *pass* (what to read now, while the server keeps writing); a point
cycle then opens a short *window* (file systems frozen) in which every disk :meth:`captures`
what is left and reports whether it is consistent.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.files import data_extents
from engine.mobility import consistency
from engine.mobility.consistency import FileStamp
from engine.mobility.tracking import BlockTracer, TrackingUnavailable
from engine.protocol import BLOCK, MAX_RUN

log = logging.getLogger(__name__)

#: (offset, length, is_hole): what a pass reads, in MAX_RUN pieces, ascending.
Work = list[tuple[int, int, bool]]
#: Fills the view with the disk's bytes at the offset; returns how many it read.
Reader = Callable[[int, memoryview], int]


class WindowOverrun(Exception):
    """The remainder of a point did not fit in the freeze budget; nothing was taken."""


@dataclass
class Captured:
    """What a disk holds at the instant of a point, to be sent after the window closes."""

    work: Work = field(default_factory=list)
    reader: Reader | None = None
    consistent: bool = True
    why_not: str | None = None
    #: Work that is worked out after the window (reading extent maps is not instant).
    later: Callable[[], tuple[Work, Reader]] | None = None
    #: Gives back what the capture took, when the window is abandoned.
    undo: Callable[[], None] | None = None


def pieces(ranges: list[tuple[int, int]]) -> Work:
    return [(off, min(MAX_RUN, hi - off), False) for lo, hi in ranges for off in range(lo, hi, MAX_RUN)]


def full_work(fd: int, size: int, start: int, was_data: Callable[[int], bool]) -> Work:
    """Every data extent from ``start``, plus the blocks that are holes now but held data before
    (``was_data(block)``): those are sent as zeros."""
    extents = data_extents(fd, start, size, block=BLOCK)
    if extents is None:
        extents = [(start // BLOCK * BLOCK, size)] if start < size else []
    covered = bytearray(-(-size // BLOCK))
    for lo, hi in extents:
        covered[lo // BLOCK:-(-hi // BLOCK)] = b"\x01" * (-(-hi // BLOCK) - lo // BLOCK)
    work: Work = [(b * BLOCK, min(BLOCK, size - b * BLOCK), True)
                  for b in range(start // BLOCK, len(covered)) if not covered[b] and was_data(b)]
    return sorted(work + pieces(extents))


class SourceDisk:
    """Base: a disk read whole whenever asked; never crash-consistent on its own."""

    capture_method = "none"
    tracking_method = "full-compare"

    def __init__(self, index: int, path: str, size: int) -> None:
        self.index = index
        self.path = path
        self.size = size
        #: True when the next pass must compare every block (start, lost tracking, resync).
        self.full = True
        #: Why the next full pass runs (an event for the admin), or None if nothing was lost.
        self.full_reason: str | None = None
        #: The server's only disk: its capture need not be of the same instant as any other's.
        self.alone = False
        self.buf = mmap.mmap(-1, MAX_RUN)  # page-aligned: O_DIRECT reads need it
        # A device is read past its page cache: that can hold stale pages of blocks a file system wrote
        # with its own bios.
        self._fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if consistency.is_block_device(path) else 0))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.index}:{self.path} full={self.full}>"

    NOTE = "Neither frozen nor cloned, and its changes are not tracked: points are labelled not crash-consistent."

    @property
    def note(self) -> str:
        return self.NOTE

    def facts(self) -> dict[str, str]:
        return {"capture": self.capture_method, "tracking": self.tracking_method, "note": self.note}

    def close(self) -> None:
        os.close(self._fd)
        self.buf.close()

    def lost(self) -> str | None:
        """Why tracking lost writes since the last call (a full compare follows), or None."""
        return None

    def need_full(self, why: str | None) -> None:
        self.full = True
        self.full_reason = self.full_reason or why

    def read(self, off: int, view: memoryview) -> int:
        return os.preadv(self._fd, [view], off)

    def pass_work(self, was_data: Callable[[int], bool], start: int = 0) -> tuple[Work, Reader]:
        """What to read now while the server keeps writing (from ``start`` in a full pass); clears ``full``."""
        self.full = False
        self.full_reason = None
        return full_work(self._fd, self.size, start, was_data), self.read

    def pending_bytes(self) -> int:
        """Roughly what a capture would have to read in the window."""
        return 0

    def flush(self) -> None:
        """Before the window: push what writers left in caches to the disk (so the freeze has little to do)."""

    def capture(self, was_data: Callable[[int], bool], deadline: float) -> Captured:
        """Inside the window: what is left, and whether the disk is consistent at this instant.
        Raises :class:`WindowOverrun` past ``deadline`` (``perf_counter`` clock)."""
        return Captured(consistent=False, why_not=self.note)

    def verify(self, captured: Captured) -> None:
        """At the end of the window: mark ``captured`` inconsistent if the disk moved meanwhile."""


class TrackedDevice(SourceDisk):
    """A block device whose writes are traced; its mounted file systems are frozen for a point."""

    capture_method = "freeze"
    tracking_method = "block-trace"

    def __init__(self, index: int, path: str, size: int, tracer_name: str) -> None:
        """Tracking starts here, before anything of the disk is read (initial replication included)."""
        super().__init__(index, path, size)
        try:
            self.tracer = BlockTracer(path, size, name=tracer_name)
        except TrackingUnavailable:
            super().close()
            raise
        self._marks = 0

    UNMOUNTED_NOTE = ("No mounted file system to freeze: a point is crash-consistent only if nothing writes to the "
                      "device while its remainder is read; writes tracked in the block layer.")

    @property
    def note(self) -> str:
        return describe(self.path).get("note", self.UNMOUNTED_NOTE)

    def mounts(self) -> list[str]:
        return consistency.mounts_on(self.path)

    def flush(self) -> None:
        for mount in self.mounts():
            consistency.syncfs(mount)
        os.fsync(self._fd)  # what was written to the raw device through its page cache

    def close(self) -> None:
        self.tracer.close()
        super().close()

    def lost(self) -> str | None:
        return self.tracer.reset_lost()

    def pass_work(self, was_data: Callable[[int], bool], start: int = 0) -> tuple[Work, Reader]:
        self.tracer.barrier()
        bits = self.tracer.map.take()
        if self.full:
            return super().pass_work(was_data, start)
        return pieces(self.tracer.map.runs(bits, self.size)), self.read

    def pending_bytes(self) -> int:
        return self.size if self.full else self.tracer.map.count() * BLOCK

    def capture(self, was_data: Callable[[int], bool], deadline: float) -> Captured:
        if not self.tracer.barrier() or self.tracer.lost:
            return Captured(consistent=False, why_not=f"change tracking of {self.path} lost writes")
        self._marks = self.tracer.map.marks
        bits = self.tracer.map.take()
        saved: dict[int, bytes] = {}
        work = pieces(self.tracer.map.runs(bits, self.size))
        try:
            for off, length, _ in work:
                if time.perf_counter() > deadline:
                    raise WindowOverrun
                view = memoryview(self.buf)[:length]
                n = self.read(off, view)
                saved[off] = bytes(view[:n])
        except BaseException:
            self.tracer.map.put_back(bits)
            raise

        def from_memory(off: int, view: memoryview) -> int:
            data = saved[off]
            view[:len(data)] = data
            return len(data)

        return Captured(work=work, reader=from_memory, undo=lambda: self.tracer.map.put_back(bits))

    def verify(self, captured: Captured) -> None:
        if not captured.consistent:
            return
        if not self.tracer.barrier() or self.tracer.lost:
            captured.consistent = False
            captured.why_not = f"change tracking of {self.path} lost writes"
        elif self.tracer.map.marks != self._marks:
            captured.consistent = False
            captured.why_not = f"{self.path} was written while its point was read (nothing froze the writer)"


class PlainFile(SourceDisk):
    """An image file on a file system without reflinks: skipped while unchanged, compared in full when
    it changed; consistent at a point only if it was not written since it was last read."""

    capture_method = "idle-check"
    tracking_method = "file-stamp"

    def __init__(self, index: int, path: str, size: int) -> None:
        super().__init__(index, path, size)
        self._read_stamp: FileStamp | None = None  # taken just before the last pass that read it

    NOTE = ("A file on a file system without reflinks: a point is crash-consistent only when the file is not being "
            "written; otherwise it is labelled not crash-consistent.")

    def pass_work(self, was_data: Callable[[int], bool], start: int = 0) -> tuple[Work, Reader]:
        stamp = FileStamp.of(self.path)
        if not self.full and stamp == self._read_stamp:
            return [], self.read
        if stamp.ino != os.fstat(self._fd).st_ino:  # replaced by another file (rsync, mv): read the new one
            os.close(self._fd)
            self._fd = os.open(self.path, os.O_RDONLY)
        self._read_stamp = stamp
        return super().pass_work(was_data, start)

    def capture(self, was_data: Callable[[int], bool], deadline: float) -> Captured:
        if self.full or FileStamp.of(self.path) != self._read_stamp:
            return Captured(consistent=False, why_not=f"{self.path} was written while it was read")
        return Captured()

    def verify(self, captured: Captured) -> None:
        # Unchanged until every other disk was captured too: the instants overlap.
        if captured.consistent and not self.alone and FileStamp.of(self.path) != self._read_stamp:
            captured.consistent = False
            captured.why_not = f"{self.path} was written while the point was taken"


class ClonedFile(SourceDisk):
    """An image file on a file system with reflinks: each pass reads from a fresh clone, and only the
    ranges whose extents moved since the previous clone."""

    capture_method = "clone"
    tracking_method = "extent-map"

    def __init__(self, index: int, path: str, size: int, clone_prefix: str) -> None:
        super().__init__(index, path, size)
        self._prefix = clone_prefix
        self._n = 0
        self._clone: str | None = None
        self._clone_fd: int | None = None
        self._clone_stamp: FileStamp | None = None
        self._stamp_before: FileStamp | None = None
        for old in Path(path).parent.glob(os.path.basename(clone_prefix) + "*"):
            old.unlink(missing_ok=True)  # left by a killed service

    NOTE = "Cloned (reflink) for each point: an instant copy, no freeze needed; changes found in extent maps."

    def close(self) -> None:
        self._drop()
        super().close()

    def _drop(self) -> None:
        if self._clone_fd is not None:
            os.close(self._clone_fd)
            self._clone_fd = None
        if self._clone is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._clone)
            self._clone = None

    def _take_clone(self) -> tuple[str, FileStamp]:
        self._n += 1
        name = f"{self._prefix}{self._n}"
        stamp = FileStamp.of(self.path)
        consistency.clone(self.path, name)
        return name, stamp

    def _work_since(self, name: str, was_data: Callable[[int], bool], start: int = 0) -> tuple[Work, Reader]:
        """Replace the kept clone by ``name``; the work is what differs between the two."""
        old = self._clone
        fd = os.open(name, os.O_RDONLY)
        if old is None or self.full:
            self.full = False
            self.full_reason = None
            work = full_work(fd, self.size, start, was_data)
        else:
            ranges = consistency.changed_ranges(consistency.extents(old), consistency.extents(name), self.size, BLOCK)
            work = pieces(ranges)
        self._drop()
        self._clone, self._clone_fd = name, fd

        def from_clone(off: int, view: memoryview) -> int:
            return os.preadv(fd, [view], off)

        return work, from_clone

    def pass_work(self, was_data: Callable[[int], bool], start: int = 0) -> tuple[Work, Reader]:
        if not self.full and self._clone is not None and FileStamp.of(self.path) == self._clone_stamp:
            return [], self.read  # unchanged since the last clone: no clone, no reads
        name, stamp = self._take_clone()
        work, reader = self._work_since(name, was_data, start)
        self._clone_stamp = stamp
        return work, reader

    def capture(self, was_data: Callable[[int], bool], deadline: float) -> Captured:
        self._stamp_before = FileStamp.of(self.path)
        if not self.full and self._clone is not None and self._stamp_before == self._clone_stamp:
            return Captured()  # the kept clone is this instant already
        name, stamp = self._take_clone()

        def later() -> tuple[Work, Reader]:
            work, reader = self._work_since(name, was_data)
            self._clone_stamp = stamp
            return work, reader

        return Captured(later=later, undo=lambda: os.unlink(name))

    def verify(self, captured: Captured) -> None:
        # A clone is an instant by itself; with other disks, it must not have moved until every one of
        # them was captured (clones are taken one after another).
        if not self.alone and FileStamp.of(self.path) != self._stamp_before:
            captured.consistent = False
            captured.why_not = f"{self.path} was written while the point's clones were taken"


def open_disk(index: int, path: str, size: int, *, tracer_name: str) -> SourceDisk:
    """The right kind of :class:`SourceDisk` for ``path``; says why when it falls back."""
    if consistency.is_block_device(path):
        try:
            return TrackedDevice(index, path, size, tracer_name=tracer_name)
        except TrackingUnavailable as exc:
            log.warning("disk %s: block-layer tracking unavailable (%s); every cycle compares the whole disk", path,
                        exc)
            return SourceDisk(index, path, size)
    if consistency.can_clone(path):
        return ClonedFile(index, path, size, clone_prefix=f"{os.path.dirname(path)}/.{os.path.basename(path)}"
                                                          f".godwit-clone-")
    return PlainFile(index, path, size)


def describe(path: str) -> dict[str, str]:
    """How a disk will be tracked and taken at a point, without opening it for replication (for
    registration and heartbeats before replication is enabled); empty if it cannot be read."""
    try:
        if consistency.is_block_device(path):
            if os.geteuid() != 0:
                return {"capture": "none", "tracking": "full-compare",
                        "note": "Block-layer tracking and freezing need root: every block is compared each cycle "
                                "and points are labelled not crash-consistent."}
            mounts = consistency.mounts_on(path)
            note = (f"Frozen for each point (file systems at {', '.join(mounts)}); writes tracked in the block layer."
                    if mounts else TrackedDevice.UNMOUNTED_NOTE)
            return {"capture": "freeze", "tracking": "block-trace", "note": note}
        kind: type[SourceDisk] = ClonedFile if consistency.can_clone(path) else PlainFile
        return {"capture": kind.capture_method, "tracking": kind.tracking_method, "note": kind.NOTE}
    except OSError:
        return {}
