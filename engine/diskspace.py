"""Free space of the data directory's file system: levels, the process server's reserve, the state
database's reserve file.

The supervisor measures the file system that holds the data directory every :data:`CHECK_EVERY`
seconds and puts it in one of four levels, with the thresholds appliance admins know:

``ok``
    30 % free or more.
``warning``
    below 30 % free: time to free space or give the data directory a larger disk.
``critical``
    below 25 % free.
``full``
    below :func:`batch_reserve` plus one batch: the process server refuses batches that would
    leave less than the reserve (503 ``cache-full``; mobility services retry), so the log processor,
    the state database and the logs still find room. Replication resumes by itself once space
    is freed.

Percentages are of what ``df`` counts (used + available to unprivileged writers): blocks a file
system keeps for root count as neither, so the figure is 100 % minus ``df``'s Use%. A level is
entered as soon as free space drops below its threshold and left only once free space is a margin
above it, so a file system that hovers at a threshold does not flood the admin with events.

The state database keeps :data:`STATE_RESERVE` bytes of its own in a file (:class:`SpaceReserve`):
released when SQLite reports SQLITE_FULL, so that the write can be retried, and created again once
the file system is out of the ``full`` level.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from engine.errors import CacheFull
from engine.protocol import MAX_BATCH
from engine.records import DiskLevel, DiskSpace

WARNING_FREE = 0.30
CRITICAL_FREE = 0.25
#: The process server keeps this many of the largest batches free, or this share of the file
#: system if that is more: what the log processor needs to apply what is cached, the state
#: database and the logs.
RESERVE_BATCHES = 4
RESERVE_SHARE = 0.01
#: Bytes the state database keeps in its reserve file.
STATE_RESERVE = 8 * 1024 * 1024
#: Seconds between two measurements by the supervisor.
CHECK_EVERY = 2.0
#: errno values that mean "no room left" (ENOSPC; EDQUOT for a user over quota).
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_RANK: dict[DiskLevel, int] = {"ok": 0, "warning": 1, "critical": 2, "full": 3}


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def mount_point(path: Path) -> str:
    """The mount point of the file system that holds ``path`` (which must exist)."""
    current = os.path.realpath(path)
    while not os.path.ismount(current):
        current = os.path.dirname(current)
    return current


def usage(path: Path) -> tuple[int, int]:
    """``(free, size)`` in bytes as ``df`` counts them: available to unprivileged writers, and used
    plus available."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return free, used + free


def batch_reserve(size: int) -> int:
    """What the process server keeps free on a file system of ``size`` bytes."""
    return max(RESERVE_BATCHES * MAX_BATCH, int(size * RESERVE_SHARE))


def _raw_level(free: int, size: int, reserve: int) -> DiskLevel:
    if free < reserve + MAX_BATCH:
        return "full"
    if free < size * CRITICAL_FREE:
        return "critical"
    if free < size * WARNING_FREE:
        return "warning"
    return "ok"


def level_of(free: int, size: int, *, previous: DiskLevel = "ok") -> DiskLevel:
    """The level of a file system with ``free`` of ``size`` bytes free; a better level than
    ``previous`` only once free space is a margin (1 % of the file system, at least one batch) above
    its threshold."""
    reserve = batch_reserve(size)
    raw = _raw_level(free, size, reserve)
    if _RANK[raw] >= _RANK[previous]:
        return raw
    with_margin = _raw_level(free - max(size // 100, MAX_BATCH), size, reserve)
    return with_margin if _RANK[with_margin] < _RANK[previous] else previous


def _percent(free: int, size: int) -> str:
    return f"{int(100 * free / size) if size else 0} %"  # rounded down: never "30 %, below 30 %"


def where(mount: str, free: int, size: int) -> str:
    """The file system in a phrase: ``the file system at /srv (1.2 GiB free of 4.0 GiB, 30 %)``."""
    return f"the file system at {mount} ({human_bytes(free)} free of {human_bytes(size)}, {_percent(free, size)})"


def describe(path: Path, mount: str, free: int, size: int, level: DiskLevel) -> str:
    """What a level means for the admin, in a sentence that names the file system and what to do."""
    reserve = batch_reserve(size)
    fs = where(mount, free, size)
    if level == "ok":
        return f"The data directory {path} has room again: {fs}. Replication goes on normally."
    if level == "full":
        return (f"The appliance's disk is nearly full: {fs} holds the data directory {path}. The appliance "
                f"keeps {human_bytes(reserve)} free, so it refuses replication data that would leave less. "
                "Free space there or move the data directory to a larger disk; replication resumes by itself.")
    threshold = "25 % critical" if level == "critical" else "30 % warning"
    return (f"The appliance's disk space is low: {fs} holds the data directory {path} and is below the "
            f"{threshold} level. Free space there or move the data directory to a larger disk: below "
            f"{human_bytes(reserve + MAX_BATCH)} free the appliance stops accepting replication data.")


def measure(path: Path, *, mount: str | None = None, previous: DiskLevel = "ok") -> DiskSpace:
    """The data directory's file system now (``statvfs``; cheap, but may block on a network file system)."""
    mount = mount or mount_point(path)
    free, size = usage(path)
    level = level_of(free, size, previous=previous)
    return DiskSpace(path=str(path), mount_point=mount, free_bytes=free, size_bytes=size,
                     reserve_bytes=batch_reserve(size), level=level,
                     detail=None if level == "ok" else describe(path, mount, free, size, level))


def check_room(path: Path, mount: str, incoming: int) -> None:
    """Raise :class:`CacheFull` if storing ``incoming`` more bytes would leave less than the reserve."""
    free, size = usage(path)
    reserve = batch_reserve(size)
    if free - incoming < reserve:
        raise CacheFull(f"The appliance's disk is nearly full: {where(mount, free, size)} keeps "
                        f"{human_bytes(reserve)} in reserve, so the batch was not stored. It is sent again by "
                        "itself once space is freed there.")


def out_of_space(path: Path, mount: str) -> CacheFull:
    """The refusal for a write that failed with ENOSPC after :func:`check_room` let it through: another
    writer took the space meanwhile, or the file system has blocks but no inodes left."""
    st = os.statvfs(path)
    free, size = usage(path)
    if st.f_files and st.f_favail == 0:
        what = f"the file system at {mount} has no free inodes left (it holds as many files as it can)"
    else:
        what = f"{where(mount, free, size)} had no room for it"
    return CacheFull(f"The appliance's disk is full: {what}, so the batch was not stored. It is sent again by "
                     "itself once space is freed there.")


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


class SpaceReserve:
    """A file of ``size`` bytes (allocated, not sparse) that holds room for the state database.

    :meth:`release` gives the room back when SQLite reports SQLITE_FULL, so that the write can be
    retried; :meth:`fill` takes it again once there is space. Neither raises on a full disk.
    """

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    def __repr__(self) -> str:
        return f"<SpaceReserve {self.path} held={self.held}>"

    @property
    def held(self) -> bool:
        try:
            return self.path.stat().st_blocks * 512 >= self.size
        except FileNotFoundError:
            return False

    def fill(self) -> bool:
        """Allocate the reserve if it is not held; True if it is held afterwards."""
        if self.size <= 0 or self.held:
            return self.size > 0
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.path.unlink()
            if is_no_space(exc):
                return False
            raise
        return True

    def release(self) -> bool:
        """Delete the reserve; True if there was one to give back."""
        held = self.held
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return held
