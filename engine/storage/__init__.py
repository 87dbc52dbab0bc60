"""Cache and target storage behind one narrow interface.

The process server puts durable segments and each disk's stream state into the :class:`CacheStore`;
the log processor applies acknowledged segments, in order, to a :class:`TargetDisk` per source disk
(the seed disk) and takes recovery points there; exports read a point back under the disk's lock.
Everything reaches storage through the one :class:`Storage` that :func:`open_storage` returns: no
other module knows where (or how) cache and target data are kept. The cache is always ``local``
(directories in the data directory, :mod:`engine.storage.local`); seed disks are there too, or in an
Azure Blob Storage container (:mod:`engine.storage.azure`: a page blob per seed disk, blob snapshots
for points), as the admin chose (:mod:`engine.storage.target`), without any caller knowing which.
``tests/engine/test_storage_contract.py`` is what a backend must pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from engine.codec import Block
from engine.config import DataDir
from engine.links.data import StreamState

if TYPE_CHECKING:
    from engine.secrets import SecretStore
    from engine.storage.target import RoutedStorage


@dataclass(frozen=True)
class PointInfo:
    """A recovery point of one disk."""

    id: int
    created_at: float
    kind: str  # "crash-consistent" | "app-consistent" | "not-crash-consistent"
    source_time: float


@dataclass(frozen=True)
class StoredStream:
    """A disk's stream state as the cache holds it (see :meth:`CacheStore.stream_states`)."""

    server_id: str
    disk: int
    state: StreamState


class CacheStore(Protocol):
    """Segments waiting to be applied, and where each disk's stream stands. Copies of a server are
    named by :func:`replica`."""

    def put_segment(self, replica: str, disk: int, seq: int, data: bytes | memoryview) -> None:
        """Store a segment durably (it survives a power cut once this returns), replacing one of the
        same number. Raises :class:`~engine.errors.CacheFull` if there is no room for it."""

    def segments(self, replica: str, disk: int) -> list[int]:
        """Sequence numbers present (not those set aside), ascending."""

    def get_segment(self, replica: str, disk: int, seq: int) -> bytes:
        """A segment's bytes; FileNotFoundError if it is not there (deleted, set aside, never stored)."""

    def read_segment(self, replica: str, disk: int, seq: int, buffer: bytearray) -> memoryview:
        """A segment's bytes read into ``buffer`` (a larger segment is read into a buffer of its own): a view
        of them, valid while ``buffer`` is not reused. FileNotFoundError as :meth:`get_segment`."""

    def delete_segment(self, replica: str, disk: int, seq: int) -> None:
        """Delete a segment (applied, or stepped over); nothing happens if it is not there."""

    def used_bytes(self) -> int:
        """Bytes of the segments waiting to be applied, of every copy (those set aside are not counted)."""

    def used_bytes_by_server(self) -> dict[str, int]:
        """:meth:`used_bytes` for each server id that has segments waiting (every copy of the server)."""

    def set_aside(self, replica: str, disk: int, seq: int) -> None:
        """Keep a refused segment for inspection, out of the apply order."""

    def stream_state(self, replica: str, disk: int) -> StreamState | None:
        """Where the disk's stream stands, as last saved (None: never saved). Only segments up to its
        ``acked_seq`` were acknowledged, so only those may be applied. Raises ValueError if what is
        stored cannot be read."""

    def save_stream_state(self, replica: str, disk: int, state: StreamState) -> None:
        """Replace the disk's stream state, durably (whole or not at all). Saved after the segment it
        acknowledges: a segment stored without it was never acknowledged, is sent again and replaced.
        Raises :class:`~engine.errors.CacheFull` if there is no room for it."""

    def stream_states(self) -> list[StoredStream]:
        """Every stream state stored, of every copy (unreadable ones are left out)."""

    def check_room(self, incoming: int) -> None:
        """Raise :class:`~engine.errors.CacheFull`, with a sentence naming where and how much room is
        left, if storing ``incoming`` more bytes would leave less than the appliance's reserve."""


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
        """Exclusive use across processes: the log processor while applying, an export while reading.
        Non-blocking, raises BlockingIOError if another holder (any process) has it."""

    def apply(self, seq: int, blocks: list[Block], *, point: PointInfo | None = None,
              resync_pass: int | None = None, resync_done: int | None = None) -> None:
        """Write a segment's blocks; durable, and idempotent if repeated after a crash. The point, the
        resync pass the segment belongs to and the resync generation it completes are recorded
        atomically with ``applied_seq``. A segment at or below ``applied_seq`` changes nothing."""

    def points(self) -> list[PointInfo]:
        """The disk's recovery points, oldest first."""

    def delete_point(self, point_id: int) -> None:
        """Delete the oldest point (ValueError for any other): newer points do not need it."""

    def read_point(self, point_id: int | None, chunk: int) -> Iterator[tuple[int, bytes | None]]:
        """The disk as it was at a point (``None``: now), as ``(offset, data)`` in order, ``chunk``
        bytes each (the last may be shorter); ``data`` is None for a chunk of zeros. KeyError for a
        point the disk does not have. Hold :meth:`locked` while reading, or the point may go."""


class RefusalRecord:
    """The refusal and skip bookkeeping every backend's seed disk keeps the same way: the fields change, then
    the backend's own ``_save_meta`` makes them durable."""

    applied_seq: int
    refused_seq: int
    refused_gen: int

    def _save_meta(self) -> None:
        raise NotImplementedError

    def refuse(self, seq: int, generation: int) -> None:
        self.refused_seq, self.refused_gen = seq, generation
        self._save_meta()

    def skip(self, seq: int) -> None:
        if seq > self.applied_seq:
            self.applied_seq = seq
            self._save_meta()

    def mended(self) -> None:
        if self.refused_seq:
            self.refused_seq = 0
            self._save_meta()


@dataclass(frozen=True)
class PointImage:
    """A recovery point opened for reading: the disk's size and its chunks (see :meth:`Storage.open_point`)."""

    point: PointInfo
    size: int
    chunks: Iterator[tuple[int, bytes | None]]


class Storage(Protocol):
    """The configured backend: the only thing that knows where cache and target data live."""

    @property
    def kind(self) -> str:
        """The backend's name as the admin chooses it: ``local`` or ``azure``."""

    @property
    def cache(self) -> CacheStore:
        """The cache: segments and stream states."""

    def target_disk(self, replica: str, disk: int, size: int) -> TargetDisk:
        """A seed disk (created empty, ``size`` bytes, if new). Each call reads its metadata anew."""

    def open_point(self, replica: str, disk: int, size: int, point_id: int, *, chunk: int,
                   name: str) -> AbstractContextManager[PointImage]:
        """A point of a seed disk for reading, in ``chunk``-byte chunks: the disk's lock is taken
        first (blocking: the log processor holds it for a slice at a time), then its metadata is read,
        so the point cannot be pruned while it is read; the lock is released on exit. Raises
        :class:`~engine.errors.NotFound` naming the server (``name``) if the point is gone."""

    def delete_server(self, server_id: str) -> None:
        """Delete every copy of a server's cache and target data (replication was disabled)."""

    def delete_older_copies(self, server_id: str, epoch: int) -> None:
        """Delete what copies of a server older than ``epoch`` left (a late write can outrun a disable);
        the copy of ``epoch`` and later ones are kept."""

    def target_location(self) -> str:
        """Where seed disks live, for a message: a directory (``local``), a container (``azure``)."""

    def target_room(self) -> str:
        """The room where seed disks live, in a phrase for a message that says it is full: ``the file
        system at /srv (1.2 GiB free of 4.0 GiB, 30 %)``."""

    def probe_target(self) -> str:
        """Write, read back and delete a small probe where seed disks live; return what was found (a phrase).
        Raises :class:`~engine.errors.EngineError` with what to do when the target cannot be written."""


def open_storage(data_dir: DataDir, secrets: SecretStore | None = None) -> RoutedStorage:
    """This appliance's storage: the local cache, and each copy's seed disks on the target it began on
    (:mod:`engine.storage.target`). ``secrets`` opens the Azure target's credential and data keys. Opening it
    creates nothing."""
    from engine.storage.target import RoutedStorage

    return RoutedStorage(data_dir, secrets)


def replica(server_id: str, epoch: int) -> str:
    """Which copy of a server: each enabling of replication is a new epoch with storage of its own,
    so nothing left from an earlier copy (segments, seed disks, stream state) is ever mistaken for it."""
    return f"{server_id}/{epoch}"


def rechunk(blocks: Iterable[tuple[int, bytes | None]], *, size: int, unit: int,
            chunk: int) -> Iterator[tuple[int, bytes | None]]:
    """Regroup consecutive ``(offset, data)`` pieces of ``unit`` bytes (the last one of a disk of
    ``size`` bytes may be shorter; ``data`` None for zeros) into ``chunk``-byte chunks, the same way:
    a backend that reads in its own unit honours any chunk size a reader asks for."""
    if chunk <= 0:
        raise ValueError("a chunk is at least one byte")
    start, filled = 0, 0
    buf: bytearray | None = None  # None while the chunk so far is all zeros
    for off, data in blocks:
        n = len(data) if data is not None else min(unit, size - off)
        if n == chunk and filled == 0:  # the reader's unit is the backend's: pass it through
            yield off, data
            start += chunk
            continue
        pos = 0
        while pos < n:
            take = min(n - pos, chunk - filled)
            if data is not None:
                if buf is None:
                    buf = bytearray(filled)
                buf += data[pos:pos + take]
            elif buf is not None:
                buf += bytes(take)
            filled += take
            pos += take
            if filled == chunk:
                yield start, None if buf is None else bytes(buf)
                start, filled, buf = start + chunk, 0, None
    if filled:
        yield start, None if buf is None else bytes(buf)
