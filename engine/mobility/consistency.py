"""Taking a source server's disks at one instant: freezing file systems, cloning files, extent maps.

- A block device with mounted file systems: ``FIFREEZE`` on each (after a ``syncfs`` outside the
  freeze, so the freeze itself has little to flush) blocks writers for the few milliseconds in which
  the remainder of a point is read; ``FITHAW`` lets them go. Mounts are found in
  ``/proc/self/mountinfo`` by device number (the disk or one of its partitions).
- A file on a file system with reflinks (XFS, btrfs): ``FICLONE`` is an instant copy. Consecutive
  clones share every extent that was not written in between, so comparing their extent maps
  (``FIEMAP``) finds the changed ranges without reading.
- Anything else is checked instead of frozen: a point is consistent only if nothing was written
  while it was read (see ``replicator.py``).

A frozen file system that nobody thaws stops its server, so a marker file lists what is frozen
until it is thawed; the next start of the mobility service thaws whatever a killed one left.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import stat
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FIFREEZE = 0xC0045877
FITHAW = 0xC0045878
FICLONE = 0x40049409
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNKNOWN = 0x2
FIEMAP_EXTENT_DELALLOC = 0x4
FIEMAP_EXTENT_UNWRITTEN = 0x800
_FIEMAP = struct.Struct("=QQIIII")  # start, length, flags, mapped extents (out), extent count, reserved
_EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, reserved x2, flags, reserved x3
_EXTENTS_PER_CALL = 512

_libc = ctypes.CDLL(None, use_errno=True)


def mounts_on(device: str) -> list[str]:
    """Mount points of file systems on a block device or on one of its partitions."""
    rdev = os.stat(device).st_rdev
    major, minor = os.major(rdev), os.minor(rdev)
    devices = {f"{major}:{minor}"}
    sys_dir = Path(f"/sys/dev/block/{major}:{minor}")
    with contextlib.suppress(OSError):
        for part in sys_dir.resolve().iterdir():
            dev_file = part / "dev"
            if (part / "partition").exists() and dev_file.exists():
                devices.add(dev_file.read_text().strip())
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        mount = fields[4].replace("\\040", " ")
        if fields[2] in devices:
            out.append(mount)
        elif fields[2].startswith("0:") and " - " in line:  # btrfs shows an anonymous device: use the source
            source = line.split(" - ", 1)[1].split()[1:2]
            with contextlib.suppress(OSError, IndexError):
                st = os.stat(source[0])
                if stat.S_ISBLK(st.st_mode) and f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" in devices:
                    out.append(mount)
    return out


def syncfs(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    finally:
        os.close(fd)


def _fithaw(mount: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(mount, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, FITHAW, 0)
        finally:
            os.close(fd)


class Freezer:
    """Freezes and thaws file systems, keeping a durable list of what may be frozen (ours, and those a
    ``--freeze`` hook freezes). A watchdog thaws them all if a window is not closed within ``limit``
    seconds: a hung read or hook must not stop the server."""

    def __init__(self, marker: Path, limit: float = 5.0) -> None:
        self.marker = marker
        self.limit = limit
        self._frozen: list[tuple[str, int]] = []
        self._armed: list[str] = []
        self._lock = threading.Lock()
        self._watchdog: threading.Timer | None = None

    def thaw_leftovers(self) -> list[str]:
        """Thaw what a killed mobility service left frozen; returns those mount points."""
        try:
            mounts = [str(m) for m in json.loads(self.marker.read_text())]
        except (OSError, ValueError, TypeError):
            return []
        for mount in mounts:
            _fithaw(mount)
        self.marker.unlink(missing_ok=True)
        return mounts

    def arm(self, mounts: list[str]) -> None:
        """Before anything is frozen (by us or by a hook): write the marker, so that a kill -9 inside
        the window is mended at the next start, and start the watchdog. :meth:`finish` undoes both."""
        self._armed = list(mounts)
        if not mounts:
            return
        self.marker.write_text(json.dumps(mounts))
        self._watchdog = threading.Timer(self.limit, self._expired)
        self._watchdog.daemon = True
        self._watchdog.start()

    def freeze(self, mounts: list[str]) -> list[tuple[str, str]]:
        """Freeze every mount that can be (each must have been armed); returns ``(mount, why)`` for those
        that could not (frozen by someone else, or a file system without freezing). Logs nothing and
        writes no file: either may be on a frozen file system."""
        skipped = []
        for mount in mounts:
            try:
                fd = os.open(mount, os.O_RDONLY)
            except OSError as exc:
                skipped.append((mount, exc.strerror or str(exc)))
                continue
            try:
                fcntl.ioctl(fd, FIFREEZE, 0)
            except OSError as exc:
                os.close(fd)
                skipped.append((mount, "frozen by someone else" if exc.errno == errno.EBUSY
                                else exc.strerror or str(exc)))
                continue
            with self._lock:
                self._frozen.append((mount, fd))
        return skipped

    def _expired(self) -> None:
        failed = self._thaw()
        for mount in self._armed:  # what a hook froze too
            _fithaw(mount)
        log.error("a point's window stayed open %.0f s: its file systems were thawed%s", self.limit,
                  f" (thaw failed: {failed})" if failed else "")

    def thaw(self) -> None:
        """Thaw what :meth:`freeze` froze."""
        failed = self._thaw()
        if failed:
            log.error("thaw failed: %s", failed)

    def finish(self) -> None:
        """The window is closed and every hook undone: stop the watchdog, forget the marker."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._armed:
            self.marker.unlink(missing_ok=True)
        self._armed = []

    def _thaw(self) -> list[str]:
        """Thaw ours; returns what failed (logged by the caller, once nothing is frozen)."""
        failed = []
        with self._lock:
            while self._frozen:
                mount, fd = self._frozen.pop()
                try:
                    fcntl.ioctl(fd, FITHAW, 0)
                except OSError as exc:
                    failed.append(f"{mount}: {exc.strerror or exc}")
                finally:
                    os.close(fd)
        return failed


def clone(src: str, dst: str) -> None:
    """An instant copy of ``src`` sharing its extents (raises ``OSError`` where reflinks do not exist)."""
    s = os.open(src, os.O_RDONLY)
    try:
        d = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fcntl.ioctl(d, FICLONE, s)
        except OSError:
            os.close(d)
            os.unlink(dst)
            raise
        os.close(d)
    finally:
        os.close(s)


def can_clone(path: str) -> bool:
    probe = f"{os.path.dirname(path)}/.godwit-reflink-probe-{os.getpid()}"
    try:
        clone(path, probe)
    except OSError:
        return False
    os.unlink(probe)
    return True


@dataclass(frozen=True)
class Extent:
    logical: int
    physical: int
    length: int
    unwritten: bool


def extents(path: str) -> list[Extent]:
    """The file's extent map (FIEMAP, after a sync of its data)."""
    fd = os.open(path, os.O_RDONLY)
    out: list[Extent] = []
    try:
        start = 0
        while True:
            buf = bytearray(_FIEMAP.size + _EXTENT.size * _EXTENTS_PER_CALL)
            _FIEMAP.pack_into(buf, 0, start, 2**64 - 1 - start, FIEMAP_FLAG_SYNC, 0, _EXTENTS_PER_CALL, 0)
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
            mapped = _FIEMAP.unpack_from(buf, 0)[3]
            if not mapped:
                return out
            last = False
            for i in range(mapped):
                at = _FIEMAP.size + i * _EXTENT.size
                logical, physical, length, _r1, _r2, flags, *_ = _EXTENT.unpack_from(buf, at)
                if flags & (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC):
                    physical = -1  # no stable address: counts as changed
                out.append(Extent(logical, physical, length, bool(flags & FIEMAP_EXTENT_UNWRITTEN)))
                last = bool(flags & FIEMAP_EXTENT_LAST)
                start = logical + length
            if last:
                return out
    finally:
        os.close(fd)


def changed_ranges(old: list[Extent], new: list[Extent], size: int, block: int) -> list[tuple[int, int]]:
    """Block-aligned byte ranges where two clones of a file may differ: wherever the same logical
    bytes do not map to the same physical bytes (a write moved them), or one is a hole."""

    def where(exts: list[Extent], pos: int) -> tuple[int, int, bool] | None:
        """(physical address at pos, bytes until the mapping changes, unwritten) or None for a hole."""
        lo, hi = 0, len(exts)
        while lo < hi:
            mid = (lo + hi) // 2
            if exts[mid].logical + exts[mid].length <= pos:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(exts) and exts[lo].logical <= pos:
            e = exts[lo]
            return e.physical + (pos - e.logical), e.logical + e.length - pos, e.unwritten
        return None

    def next_start(exts: list[Extent], pos: int) -> int:
        return next((e.logical for e in exts if e.logical > pos), size)

    out: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        a, b = where(old, pos), where(new, pos)
        span_a = a[1] if a else next_start(old, pos) - pos
        span_b = b[1] if b else next_start(new, pos) - pos
        step = max(1, min(span_a, span_b, size - pos))
        same = (a is None and b is None) or (a is not None and b is not None and a[0] == b[0] and a[2] == b[2]
                                             and a[0] >= 0)
        if not same:
            lo, hi = pos // block * block, min(size, -(-(pos + step) // block) * block)
            if out and lo <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], hi))
            else:
                out.append((lo, hi))
        pos += step
    return out


@dataclass(frozen=True)
class FileStamp:
    """What changes when a file is written: compared before and after reading it."""

    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: str) -> FileStamp:
        st = os.stat(path)
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def is_block_device(path: str) -> bool:
    return stat.S_ISBLK(os.stat(path).st_mode)
