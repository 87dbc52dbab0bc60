"""Cache log segments: compress, encrypt and authenticate; and the reverse. Pure, no I/O.

The byte layout, write order and threat model are in ``docs/segment-format.md``.
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
from dataclasses import dataclass

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.errors import EngineError
from engine.protocol import BatchHeader, Bookmark, Kind, Run

SEG_MAGIC = b"GDWSEG01"
END_MAGIC = b"GDWEND01"
_HEADER = struct.Struct(">8s16sIQBBQQdI")
_RECORD = struct.Struct(">QIBBxxI12s")
_TRAILER = struct.Struct(">8sI12s16s")
ZERO = 1
ZSTD = 2
#: Compress a run only if zstd makes it at least this much smaller.
MIN_SAVING = 0.97


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
    """A run ready to apply: ``data`` is None for zeros."""

    offset: int
    length: int
    data: bytes | None


def _header(ident: SegmentIdent, batch: BatchHeader, count: int) -> bytes:
    return _HEADER.pack(SEG_MAGIC, uuid.UUID(ident.server_id).bytes, ident.disk, ident.seq, batch.kind,
                        batch.bookmark, batch.cycle, batch.initial_done, batch.source_time, count)


def seal(key: bytes, ident: SegmentIdent, batch: BatchHeader, runs: list[Run],
         compressor: zstandard.ZstdCompressor) -> bytes:
    """The segment bytes for one batch. Runs of zeros carry no payload; others are zstd (when it
    pays) then AES-256-GCM with the segment header and the record header as associated data."""
    aead = AESGCM(key)
    header = _header(ident, batch, len(runs))
    parts = [header]
    bound = header + ident.bound
    chain = hashlib.blake2b(digest_size=32)
    for run in runs:
        flags, payload = 0, b""
        nonce = os.urandom(12)
        if run.data is None or run.flags & 1:
            flags = ZERO
            record = _RECORD.pack(run.offset, run.length, flags, 0, 0, nonce)
        else:
            plain: bytes | memoryview = run.data
            packed = compressor.compress(run.data)
            if len(packed) < MIN_SAVING * run.length:
                plain, flags = packed, ZSTD
            ad_head = _RECORD.pack(run.offset, run.length, flags, 0, len(plain) + 16, nonce)
            payload = aead.encrypt(nonce, bytes(plain), bound + ad_head[:-12])
            record = ad_head
        chain.update(record)
        chain.update(payload[-16:])
        parts += [record, payload]
    trailer_nonce = os.urandom(12)
    tag = aead.encrypt(trailer_nonce, b"", bound + chain.digest())
    parts.append(_TRAILER.pack(END_MAGIC, len(runs), trailer_nonce, tag))
    return b"".join(parts)


def open_segment(key: bytes, data: bytes, expected: SegmentIdent,
                 decompressor: zstandard.ZstdDecompressor) -> tuple[BatchHeader, list[Block]]:
    """Authenticate a whole segment and return its blocks. Raises :class:`SegmentCorrupt` on any
    alteration, truncation, or a segment that belongs to another server, disk or position."""
    name = f"segment {expected.seq} of disk {expected.disk}"
    if len(data) < _HEADER.size + _TRAILER.size:
        raise SegmentCorrupt(f"{name} is truncated.")
    magic, server, disk, seq, kind, bookmark, cycle, initial_done, source_time, count = _HEADER.unpack_from(data)
    if magic != SEG_MAGIC:
        raise SegmentCorrupt(f"{name} is not a Godwit segment.")
    if (uuid.UUID(bytes=server), disk, seq) != (uuid.UUID(expected.server_id), expected.disk, expected.seq):
        raise SegmentCorrupt(f"{name} was swapped: it belongs to another server, disk or position.")
    header = data[:_HEADER.size]
    bound = header + expected.bound
    end_magic, end_count, t_nonce, tag = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    if end_magic != END_MAGIC or end_count != count:
        raise SegmentCorrupt(f"{name} is truncated or its trailer is damaged.")
    aead = AESGCM(key)
    chain = hashlib.blake2b(digest_size=32)
    blocks: list[Block] = []
    pos, end = _HEADER.size, len(data) - _TRAILER.size
    view = memoryview(data)
    try:
        for _ in range(count):
            if pos + _RECORD.size > end:
                raise SegmentCorrupt(f"{name} is truncated inside a record.")
            record = data[pos:pos + _RECORD.size]
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
            plain = aead.decrypt(nonce, bytes(payload), bound + record[:-12])
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
