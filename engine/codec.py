"""Cache log segments: compress, encrypt and authenticate; and the reverse. Pure, no I/O.

The byte layout, write order and threat model are in ``docs/segment-format.md``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct
import threading
import uuid
from dataclasses import dataclass

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.errors import EngineError
from engine.protocol import MAX_DATA, MAX_RUNS, BatchHeader, Bookmark, Kind, Run

SEG_MAGIC = b"GDWSEG01"
END_MAGIC = b"GDWEND01"
_HEADER = struct.Struct(">8s16sIQBBQQdI")
_RECORD = struct.Struct(">QIBBxxI12s")
_TRAILER = struct.Struct(">8sI12s16s")
ZERO = 1
ZSTD = 2
#: The largest segment a batch within the protocol's limits makes (every run stored as it came).
SEGMENT_MAX = _HEADER.size + MAX_RUNS * (_RECORD.size + 16) + MAX_DATA + _TRAILER.size
#: Compress a run only if zstd makes it at least this much smaller.
MIN_SAVING = 0.97


#: Buffers up to this size come from the heap (the largest, a batch body or a segment, is about 9.5 MiB).
_HEAP_BUFFERS = 32 * 1024 * 1024


def keep_freed_memory(keep: int, largest: int = _HEAP_BUFFERS) -> bool:
    """Make glibc keep the memory of freed batch-sized buffers for the next batch (call once, at an agent's
    start): buffers up to ``largest`` bytes come from the heap, and up to ``keep`` bytes of freed memory stay
    with the process. By default a buffer above the
    allocator's moving threshold is an mmap of its own and freed memory is trimmed: batch bodies, segments
    and blocks of varying sizes then cost fresh pages from the kernel (a page fault and a cleared page each
    4 KiB), which on a virtual machine cost more CPU than zstd and AES together. Returns whether glibc took
    the settings."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, largest)) and bool(libc.mallopt(m_trim_threshold, keep))
    except (OSError, AttributeError):  # not glibc: its allocator decides
        return False


class Buffers:
    """Buffers of one size (batch bodies, segments, decrypted blocks) reused from one batch or segment to the
    next: one costs a copy into a buffer already there, not fresh pages for a new one. A buffer is taken for one
    batch or segment and given back once nothing reads it; the pool keeps ``keep`` (more were needed only for a
    moment, e.g. two workers at once: the rest go). Thread-safe."""

    def __init__(self, size: int, keep: int = 2) -> None:
        self.size = size
        self._free: list[bytearray] = []
        self._keep = keep
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Buffers size={self.size} free={len(self._free)}>"

    def take(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self.size)

    def give(self, buffer: bytearray) -> None:
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(buffer)


class SegmentCorrupt(EngineError):
    """A segment failed authentication or does not parse: it is refused, never applied."""

    code = "segment-corrupt"


@dataclass(frozen=True)
class SegmentIdent:
    server_id: str
    disk: int
    seq: int
    #: The replication epoch; bound into every authentication tag (not stored in the header).
    epoch: int = 0

    @property
    def bound(self) -> bytes:
        return struct.pack(">Q", self.epoch)


@dataclass(frozen=True)
class Block:
    """A run ready to apply: ``data`` is None for zeros (a view into a reused buffer when
    :func:`open_segment` was given one)."""

    offset: int
    length: int
    data: bytes | memoryview | None


def _header(ident: SegmentIdent, batch: BatchHeader, count: int) -> bytes:
    return _HEADER.pack(SEG_MAGIC, uuid.UUID(ident.server_id).bytes, ident.disk, ident.seq, batch.kind,
                        batch.bookmark, batch.cycle, batch.initial_done, batch.source_time, count)


def sealed_size(runs: list[Run]) -> int:
    """The most bytes the segment of these runs can take (every run stored as it came)."""
    return _HEADER.size + sum(_RECORD.size + (0 if _zero(r) else r.length + 16) for r in runs) + _TRAILER.size


def _zero(run: Run) -> bool:
    """A run of zeros, which has no payload (a packed run has its data in its frame)."""
    return bool(run.flags & 1) or (run.data is None and run.packed is None)


def seal(key: bytes, ident: SegmentIdent, batch: BatchHeader, runs: list[Run],
         compressor: zstandard.ZstdCompressor) -> bytes:
    """The segment bytes for one batch (see :func:`seal_into`)."""
    return bytes(seal_into(key, ident, batch, runs, compressor, bytearray(sealed_size(runs))))


def seal_into(key: bytes, ident: SegmentIdent, batch: BatchHeader, runs: list[Run],
              compressor: zstandard.ZstdCompressor, out: bytearray) -> memoryview:
    """The segment for one batch, built in ``out`` (at least :func:`sealed_size` bytes, e.g. a reused buffer
    of :data:`SEGMENT_MAX`); returns the view of ``out`` that holds it. Runs of zeros carry no payload;
    others are zstd (when it pays) then AES-256-GCM with the segment header and the record header as
    associated data, encrypted straight into ``out``."""
    if len(out) < sealed_size(runs):
        raise ValueError("The buffer is too small for this segment.")
    aead = AESGCM(key)
    view = memoryview(out)
    header = _header(ident, batch, len(runs))
    view[:len(header)] = header
    pos = len(header)
    bound = header + ident.bound
    chain = hashlib.blake2b(digest_size=32)
    for run in runs:
        nonce = os.urandom(12)
        if _zero(run):
            record = _RECORD.pack(run.offset, run.length, ZERO, 0, 0, nonce)
            view[pos:pos + _RECORD.size] = record
            pos += _RECORD.size
            chain.update(record)
            chain.update(b"")
            continue
        plain: bytes | memoryview
        if run.packed is not None:  # packed by the sender (smaller than its data): stored as it came
            plain, flags = run.packed, ZSTD
        else:
            assert run.data is not None
            plain, flags = run.data, 0
            packed = compressor.compress(run.data)
            if len(packed) < MIN_SAVING * run.length:
                plain, flags = packed, ZSTD
        record = _RECORD.pack(run.offset, run.length, flags, 0, len(plain) + 16, nonce)
        view[pos:pos + _RECORD.size] = record
        pos += _RECORD.size
        payload = view[pos:pos + len(plain) + 16]
        aead.encrypt_into(nonce, plain, bound + record[:-12], payload)  # no copy of the data, no new buffer
        pos += len(payload)
        chain.update(record)
        chain.update(payload[-16:])
    trailer_nonce = os.urandom(12)
    tag = aead.encrypt(trailer_nonce, b"", bound + chain.digest())
    view[pos:pos + _TRAILER.size] = _TRAILER.pack(END_MAGIC, len(runs), trailer_nonce, tag)
    return view[:pos + _TRAILER.size]


def open_segment(key: bytes, data: bytes | memoryview, expected: SegmentIdent,
                 decompressor: zstandard.ZstdDecompressor,
                 arena: bytearray | None = None) -> tuple[BatchHeader, list[Block]]:
    """Authenticate a whole segment and return its blocks, each decrypted and decompressed once, straight into
    ``arena`` when one is given (at least :data:`~engine.protocol.MAX_DATA` bytes; the blocks are then views of
    it, valid until it is reused), else into bytes of their own. ``data`` itself may be a reused buffer: no
    block refers to it. Raises :class:`SegmentCorrupt` on any alteration, truncation, or a segment that
    belongs to another server, disk or position."""
    name = f"segment {expected.seq} of disk {expected.disk}"
    if len(data) < _HEADER.size + _TRAILER.size:
        raise SegmentCorrupt(f"{name} is truncated.")
    magic, server, disk, seq, kind, bookmark, cycle, initial_done, source_time, count = _HEADER.unpack_from(data)
    if magic != SEG_MAGIC:
        raise SegmentCorrupt(f"{name} is not a Godwit segment.")
    if (uuid.UUID(bytes=server), disk, seq) != (uuid.UUID(expected.server_id), expected.disk, expected.seq):
        raise SegmentCorrupt(f"{name} was swapped: it belongs to another server, disk or position.")
    view = memoryview(data)
    header = bytes(view[:_HEADER.size])
    bound = header + expected.bound
    end_magic, end_count, t_nonce, tag = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    if end_magic != END_MAGIC or end_count != count:
        raise SegmentCorrupt(f"{name} is truncated or its trailer is damaged.")
    aead = AESGCM(key)
    chain = hashlib.blake2b(digest_size=32)
    blocks: list[Block] = []
    pos, end = _HEADER.size, len(data) - _TRAILER.size
    out = memoryview(arena) if arena is not None else None
    used = 0
    try:
        for _ in range(count):
            if pos + _RECORD.size > end:
                raise SegmentCorrupt(f"{name} is truncated inside a record.")
            record = bytes(view[pos:pos + _RECORD.size])
            offset, length, flags, _, payload_len, nonce = _RECORD.unpack(record)
            pos += _RECORD.size
            chain.update(record)
            if flags & ZERO:
                chain.update(b"")
                blocks.append(Block(offset, length, None))
                continue
            if pos + payload_len > end or payload_len < 16:
                raise SegmentCorrupt(f"{name} is truncated inside a record's payload.")
            payload = view[pos:pos + payload_len]
            pos += payload_len
            chain.update(payload[-16:])
            if out is not None and used + length <= len(out):
                blocks.append(Block(offset, length, _open_into(aead, decompressor, nonce, payload,
                                                               bound + record[:-12], flags, out[used:used + length],
                                                               name)))
                used += length
                continue
            plain = aead.decrypt(nonce, payload, bound + record[:-12])  # any buffer: no copy of the payload
            if flags & ZSTD:
                plain = decompressor.decompress(plain, max_output_size=length)
            if len(plain) != length:
                raise SegmentCorrupt(f"{name} has a record whose length does not match.")
            blocks.append(Block(offset, length, plain))
        if pos != end:
            raise SegmentCorrupt(f"{name} has bytes after its last record.")
        aead.decrypt(t_nonce, tag, bound + chain.digest())
    except InvalidTag as exc:
        raise SegmentCorrupt(f"{name} failed authentication: it was altered.") from exc
    except zstandard.ZstdError as exc:
        raise SegmentCorrupt(f"{name} holds a record that does not decompress.") from exc
    batch = BatchHeader(disk, seq, Kind(kind), Bookmark(bookmark), cycle, initial_done, source_time, count)
    return batch, blocks


def _open_into(aead: AESGCM, decompressor: zstandard.ZstdDecompressor, nonce: bytes, payload: memoryview,
               associated: bytes, flags: int, out: memoryview, name: str) -> memoryview:
    """One record's data decrypted (and decompressed) into ``out``, which is exactly the record's length."""
    if not flags & ZSTD:
        if len(payload) - 16 != len(out):
            raise SegmentCorrupt(f"{name} has a record whose length does not match.")
        aead.decrypt_into(nonce, payload, associated, out)
        return out
    packed = aead.decrypt(nonce, payload, associated)
    got = 0
    with decompressor.stream_reader(packed) as reader:
        while got < len(out):
            n = reader.readinto(out[got:])
            if not n:
                break
            got += n
        if got != len(out) or reader.read(1):  # shorter or longer than its header says
            raise SegmentCorrupt(f"{name} has a record whose length does not match.")
    return out
