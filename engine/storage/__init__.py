"""Cache and target storage behind one narrow interface.

The process server puts durable segments into a :class:`CacheStore`; the log processor applies
them, in order, to a :class:`TargetDisk` per source disk (the seed disk) and takes recovery points
there; exports read a point back. ``local`` (directories and sparse files in the data directory)
is the only backend today; an Azure Blob backend maps the same calls to block blobs (segments), a
page blob per seed disk and blob snapshots (points) without changing any caller.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from engine.codec import Block
from engine.config import DataDir


@dataclass(frozen=True)
class PointInfo:
    """A recovery point of one disk."""

    id: int
    created_at: float
    kind: str  # "crash-consistent" | "app-consistent" | "not-crash-consistent"
    source_time: float


class CacheStore(Protocol):
    def put_segment(self, replica: str, disk: int, seq: int, data: bytes) -> None:
        """Store a segment durably (it survives a power cut once this returns)."""

    def segments(self, replica: str, disk: int) -> list[int]:
        """Sequence numbers present, ascending."""

    def get_segment(self, replica: str, disk: int, seq: int) -> bytes: ...

    def delete_segment(self, replica: str, disk: int, seq: int) -> None: ...

    def used_bytes(self) -> int: ...

    def acked_seq(self, replica: str, disk: int) -> int:
        """The last acknowledged sequence number: only segments up to it may be applied."""

    def set_aside(self, replica: str, disk: int, seq: int) -> None:
        """Keep a refused segment for inspection, out of the apply order."""


class TargetDisk(Protocol):
    size: int
    applied_seq: int
    refused_seq: int
    refused_gen: int
    resync_done: int
    #: The latest resync generation whose pass had segments applied (where the stream stands).
    resync_seen: int

    def refuse(self, seq: int, generation: int) -> None:
        """Remember durably that segment ``seq`` was refused while the stream stood in resync pass
        ``generation`` (0: none yet): only a later pass mends it."""

    def skip(self, seq: int) -> None:
        """Step over segment ``seq`` without applying it (durable): a resync that mends a refusal
        rewrites every block, so what came before its first segment is not needed."""

    def mended(self) -> None:
        """The resync that mends the refusal has begun: forget the refusal (durable)."""

    def locked(self, *, blocking: bool = True) -> AbstractContextManager[None]:
        """Exclusive use across processes: the log processor while applying, an export while reading."""

    def apply(self, seq: int, blocks: list[Block], *, point: PointInfo | None = None,
              resync_pass: int | None = None, resync_done: int | None = None) -> None:
        """Write a segment's blocks; durable, and idempotent if repeated after a crash. The point, the
        resync pass the segment belongs to and the resync generation it completes are recorded
        atomically with ``applied_seq``."""

    def points(self) -> list[PointInfo]: ...

    def delete_point(self, point_id: int) -> None: ...

    def read_point(self, point_id: int | None, chunk: int) -> Iterator[tuple[int, bytes | None]]:
        """The disk as it was at a point (``None``: now), as ``(offset, data)`` chunks in order;
        ``data`` is None for a chunk of zeros."""


class Storage(Protocol):
    """The configured backend: the only thing that knows where cache and target data live."""

    def delete_server(self, server_id: str) -> None:
        """Delete every copy of a server's cache and target data (replication was disabled)."""

    def target_disk(self, replica: str, disk: int, size: int) -> TargetDisk:
        """A seed disk (created empty, ``size`` bytes, if new)."""


def open_storage(data_dir: DataDir) -> Storage:
    """The backend of this appliance (``local`` today)."""
    from engine.storage.local import LocalStorage

    return LocalStorage(data_dir.cache, data_dir.target)


def open_local_cache(root: Path) -> CacheStore:
    from engine.storage.local import LocalCache

    return LocalCache(root)


def replica(server_id: str, epoch: int) -> str:
    """Which copy of a server: each enabling of replication is a new epoch with storage of its own,
    so nothing left from an earlier copy (segments, seed disks, stream state) is ever mistaken for it."""
    return f"{server_id}/{epoch}"


def open_local_target(root: Path, replica: str, disk: int, size: int) -> TargetDisk:
    from engine.storage.local import LocalTargetDisk

    return LocalTargetDisk(root / replica / f"disk{disk}", size)
