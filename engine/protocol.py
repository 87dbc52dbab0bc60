"""The data port's wire format: a batch of changed runs of one disk, as a mobility service sends it.

A batch is one HTTP request body::

    header  ">8sIQBBQQdI"  magic b"GDWBAT01", disk index, sequence number, kind, bookmark,
                           cycle id, initial high-water offset, source timestamp, run count
    runs    ">QIB16s"      offset, length, flags, xxh3-128 digest of the run's bytes
            then ``length`` bytes of data, unless the run is a zero run (flag ZERO: nothing) or
            packed (flag PACKED, data 1.2: ">I" packed length, then one zstd frame that says its
            content size and holds the ``length`` bytes)

Sequence numbers count from 1 per disk and never repeat; the process server accepts only
``last acknowledged + 1`` and acknowledges a batch only when it is durable in the cache.
A run is at most :data:`MAX_RUN` bytes and starts on a :data:`BLOCK` boundary; a packed one is smaller
packed than its data, and its digest is checked on the data it unpacks to. A batch holds at most
:data:`MAX_RUNS` runs, :data:`MAX_DATA` bytes of data and describes at most :data:`MAX_DESCRIBED`
bytes of the disk (zero runs included), so that applying one costs what its size says.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import IntEnum

import xxhash
import zstandard

from engine.errors import ProtocolError

BLOCK = 64 * 1024
MAX_RUN = 1024 * 1024
#: A sender cuts a batch once it holds this much data or MAX_RUNS runs ...
BATCH_DATA = 8 * 1024 * 1024
MAX_RUNS = 2048
#: ... so it never holds more data than this (it cuts after the run that crossed BATCH_DATA) ...
MAX_DATA = BATCH_DATA + MAX_RUN
#: ... nor describes more of the disk than this, zero runs included (a zero run costs the log
#: processor a write, not the sender a byte) ...
MAX_DESCRIBED = 256 * 1024 * 1024
#: ... and no batch body is larger than this.
MAX_BATCH = MAX_DATA + (MAX_RUNS + 1) * 29 + 64
_HEADER = struct.Struct(">8sIQBBQQdI")
#: Bytes of a batch's header: enough to tell which batch it is (:func:`batch_seq`).
HEADER_SIZE = _HEADER.size
_RUN = struct.Struct(">QIB16s")
MAGIC = b"GDWBAT01"


class Kind(IntEnum):
    INITIAL = 0
    DELTA = 1
    #: A full pass the admin asked for: every block is sent (zeros as zero runs). For this kind the
    #: header's ``initial_done`` field carries the resync generation instead of an offset.
    RESYNC = 2


class Bookmark(IntEnum):
    NONE = 0
    #: End of a delta cycle (or of initial replication): the disk is consistent here.
    CYCLE_END = 1
    #: A cycle end at which a crash-consistent recovery point is due.
    CRASH_POINT = 2
    #: A cycle end taken between the pre- and post-snapshot hooks: an app-consistent point.
    APP_POINT = 3
    #: A point is due but the disks could not be taken at one instant (a disk that can be neither
    #: frozen nor cloned was written meanwhile): a point, labelled for what it is.
    INCONSISTENT_POINT = 4


ZERO = 1  # run flag: the run is all zeros and carries no data
PACKED = 2  # run flag (data 1.2): the run's data comes as one zstd frame
_PACKED_LENGTH = struct.Struct(">I")
#: A sender packs a run only when that saves at least this share of its bytes.
PACK_SAVING = 0.03


@dataclass(frozen=True)
class Run:
    offset: int
    length: int
    flags: int
    digest: bytes
    #: None for zero runs, and for packed ones (their data was unpacked once, to check its digest, and let go).
    data: memoryview | None
    #: The zstd frame a packed run came as: stored as it is, not packed again.
    packed: memoryview | None = None


@dataclass(frozen=True)
class BatchHeader:
    disk: int
    seq: int
    kind: Kind
    bookmark: Bookmark
    cycle: int
    initial_done: int
    source_time: float
    count: int


def digest(data: bytes | bytearray | memoryview) -> bytes:
    return xxhash.xxh3_128_digest(data)


def pack_header(header: BatchHeader) -> bytes:
    """A batch's header (:data:`HEADER_SIZE` bytes)."""
    return _HEADER.pack(MAGIC, header.disk, header.seq, header.kind, header.bookmark, header.cycle,
                        header.initial_done, header.source_time, header.count)


def append_run(body: bytearray, offset: int, length: int, data: bytes | bytearray | memoryview | None,
               packer: zstandard.ZstdCompressor | None = None) -> None:
    """Append one run to a batch being built in ``body``: ``data`` None for a run of zeros. With a ``packer``
    (data 1.2) the data goes packed when that saves :data:`PACK_SAVING` of it."""
    if data is None:
        body += _RUN.pack(offset, length, ZERO, b"\0" * 16)
        return
    if packer is not None:
        packed = packer.compress(data)
        if len(packed) <= (1 - PACK_SAVING) * length:
            body += _RUN.pack(offset, length, PACKED, digest(data))
            body += _PACKED_LENGTH.pack(len(packed))
            body += packed
            return
    body += _RUN.pack(offset, length, 0, digest(data))
    body += data


def encode_batch(header: BatchHeader, runs: Sequence[tuple[int, int, bytes | bytearray | memoryview | None]],
                 packer: zstandard.ZstdCompressor | None = None) -> bytes:
    """Build a batch from ``(offset, length, data)`` runs; ``data`` is ``None`` for a zero run (``header.count`` is
    taken from ``runs``); with a ``packer``, runs that compress go packed (data 1.2)."""
    body = bytearray(pack_header(replace(header, count=len(runs))))
    for offset, length, data in runs:
        append_run(body, offset, length, data, packer)
    return bytes(body)


def batch_seq(body: bytes | bytearray | memoryview) -> int:
    """The sequence number a batch says it is (only its header read: nothing checked but that)."""
    if len(body) < _HEADER.size:
        raise ProtocolError("The batch is shorter than its header.")
    if bytes(body[:len(MAGIC)]) != MAGIC:
        raise ProtocolError("The batch does not start with the Godwit batch magic.")
    return int(_HEADER.unpack_from(body)[2])


def decode_batch(body: bytes | bytearray | memoryview, *, disk_size: int,
                 unpacker: zstandard.ZstdDecompressor | None = None) -> tuple[BatchHeader, list[Run]]:
    """Parse and check a batch: structure, bounds, alignment and every run's digest. Packed runs are unpacked with
    ``unpacker`` (a new one per batch if none is given: a caller that decodes many reuses its own)."""
    if len(body) < _HEADER.size:
        raise ProtocolError("The batch is shorter than its header.")
    magic, disk, seq, kind, bookmark, cycle, initial_done, source_time, count = _HEADER.unpack_from(body)
    if magic != MAGIC:
        raise ProtocolError("The batch does not start with the Godwit batch magic.")
    try:
        header = BatchHeader(disk, seq, Kind(kind), Bookmark(bookmark), cycle, initial_done, source_time, count)
    except ValueError as exc:
        raise ProtocolError("The batch header has an unknown kind or bookmark.") from exc
    if kind != Kind.RESYNC and initial_done > disk_size:  # for a resync it is the generation
        raise ProtocolError("The batch's initial offset lies beyond the disk.")
    if len(body) > MAX_BATCH:
        raise ProtocolError(f"The batch is larger than {MAX_BATCH} bytes.")
    if count > MAX_RUNS:
        raise ProtocolError(f"The batch has {count} runs; at most {MAX_RUNS} are allowed.")
    view = memoryview(body)
    pos = _HEADER.size
    runs: list[Run] = []
    described = carried = 0
    for _ in range(count):
        if pos + _RUN.size > len(body):
            raise ProtocolError("The batch is truncated inside a run header.")
        offset, length, flags, dig = _RUN.unpack_from(body, pos)
        pos += _RUN.size
        if length == 0 or length > MAX_RUN or offset % BLOCK or offset + length > disk_size:
            raise ProtocolError(f"Run at offset {offset} (+{length}) is outside the disk or not block-aligned.")
        if length % BLOCK and offset + length != disk_size:
            raise ProtocolError(f"Run at offset {offset} has a length that is not whole blocks.")
        described += length
        if described > MAX_DESCRIBED:
            raise ProtocolError(f"The batch describes more than {MAX_DESCRIBED // 1024 // 1024} MiB of the disk.")
        if flags & ZERO:
            runs.append(Run(offset, length, flags, dig, None))
            continue
        if flags & PACKED:
            if unpacker is None:
                unpacker = zstandard.ZstdDecompressor()
            run, pos = _unpack_run(view, pos, offset, length, flags, dig, unpacker)
            carried += length
            if carried > MAX_DATA:
                raise ProtocolError(f"The batch carries more than {MAX_DATA} bytes of data.")
            runs.append(run)
            continue
        if pos + length > len(body):
            raise ProtocolError(f"The batch is truncated inside the run at offset {offset}.")
        carried += length
        if carried > MAX_DATA:
            raise ProtocolError(f"The batch carries more than {MAX_DATA} bytes of data.")
        data = view[pos:pos + length]
        pos += length
        if digest(data) != dig:
            raise ProtocolError(f"The run at offset {offset} does not match its digest.")
        runs.append(Run(offset, length, flags, dig, data))
    if pos != len(body):
        raise ProtocolError("The batch has bytes after its last run.")
    return header, runs



def _unpack_run(view: memoryview, pos: int, offset: int, length: int, flags: int, dig: bytes,
                unpacker: zstandard.ZstdDecompressor) -> tuple[Run, int]:
    """A packed run at ``pos`` (just after its run header), checked: its frame is smaller than its data, says its
    content size (exactly ``length``: nothing larger is ever unpacked) and is all there is; the data it unpacks to
    matches the digest. Returns the run and where the next one starts."""
    if pos + _PACKED_LENGTH.size > len(view):
        raise ProtocolError(f"The batch is truncated inside the run at offset {offset}.")
    (size,) = _PACKED_LENGTH.unpack_from(view, pos)
    pos += _PACKED_LENGTH.size
    if not 0 < size < length:
        raise ProtocolError(f"The packed run at offset {offset} is not smaller than its data.")
    if pos + size > len(view):
        raise ProtocolError(f"The batch is truncated inside the run at offset {offset}.")
    packed = view[pos:pos + size]
    try:
        if zstandard.frame_content_size(packed) != length:
            raise ProtocolError(f"The packed run at offset {offset} does not say it holds its {length} bytes.")
        data = unpacker.decompress(packed, max_output_size=length, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise ProtocolError(f"The packed run at offset {offset} does not unpack ({exc}).") from exc
    if len(data) != length:
        raise ProtocolError(f"The packed run at offset {offset} does not unpack to its {length} bytes.")
    if digest(data) != dig:
        raise ProtocolError(f"The run at offset {offset} does not match its digest.")
    return Run(offset, length, flags, dig, None, packed), pos + size
