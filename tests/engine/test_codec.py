"""The batch wire format and the segment format: round trips, and every kind of tampering refused."""

from __future__ import annotations

import os
import uuid

import pytest
import zstandard

from engine.codec import SegmentCorrupt, SegmentIdent, open_segment, seal
from engine.errors import ProtocolError
from engine.protocol import BLOCK, BatchHeader, Bookmark, Kind, decode_batch, encode_batch

SIZE = 64 * BLOCK
KEY = os.urandom(32)
SERVER = str(uuid.uuid4())


def _batch(seq: int = 1) -> bytes:
    header = BatchHeader(disk=0, seq=seq, kind=Kind.DELTA, bookmark=Bookmark.CRASH_POINT, cycle=7,
                         initial_done=SIZE, source_time=1.5, count=0)
    text = (b"godwit " * 20000)[:2 * BLOCK]
    return encode_batch(header, [(0, 2 * BLOCK, text), (4 * BLOCK, BLOCK, os.urandom(BLOCK)),
                                 (8 * BLOCK, 3 * BLOCK, None), (SIZE - BLOCK, BLOCK, b"\x01" * BLOCK)])


def _seal(seq: int = 1) -> tuple[bytes, bytes]:
    body = _batch(seq)
    header, runs = decode_batch(body, disk_size=SIZE)
    return body, seal(KEY, SegmentIdent(SERVER, 0, seq), header, runs, zstandard.ZstdCompressor(level=1))


def test_round_trip() -> None:
    """A batch sealed into a cache segment opens to the very same runs, and compressible data shrinks."""
    body, segment = _seal()
    header, blocks = open_segment(KEY, segment, SegmentIdent(SERVER, 0, 1), zstandard.ZstdDecompressor())
    _, runs = decode_batch(body, disk_size=SIZE)
    assert (header.seq, header.bookmark, header.cycle) == (1, Bookmark.CRASH_POINT, 7)
    assert [(b.offset, b.length, b.data) for b in blocks] == [
        (r.offset, r.length, None if r.data is None else bytes(r.data)) for r in runs]
    assert len(segment) < len(body)  # the text run compressed


@pytest.mark.parametrize("mutate", [
    lambda s: s[:-1],                                   # truncated
    lambda s: s[:200],                                  # truncated hard
    lambda s: s[:100] + bytes([s[100] ^ 1]) + s[101:],  # a flipped bit in a payload
    lambda s: s[:60] + bytes([s[60] ^ 1]) + s[61:],     # a flipped bit in the header
    lambda s: s[:-20] + bytes([s[-20] ^ 1]) + s[-19:],  # the trailer's tag
])
def test_altered_segment_is_refused(mutate: object) -> None:
    """A cache segment cut short or with a flipped bit in header, payload or trailer is refused."""
    _, segment = _seal()
    with pytest.raises(SegmentCorrupt):
        open_segment(KEY, mutate(segment), SegmentIdent(SERVER, 0, 1), zstandard.ZstdDecompressor())  # type: ignore[operator]


def test_swapped_segment_is_refused() -> None:
    """A segment moved to another position, disk or server, or opened with another key, is refused."""
    _, seg2 = _seal(seq=2)
    for expected in (SegmentIdent(SERVER, 0, 1), SegmentIdent(SERVER, 1, 2), SegmentIdent(str(uuid.uuid4()), 0, 2)):
        with pytest.raises(SegmentCorrupt):
            open_segment(KEY, seg2, expected, zstandard.ZstdDecompressor())
    with pytest.raises(SegmentCorrupt):
        open_segment(os.urandom(32), seg2, SegmentIdent(SERVER, 0, 2), zstandard.ZstdDecompressor())


@pytest.mark.parametrize("mutate,why", [
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"x", "bytes after"),
    (lambda b: b"XXXXXXXX" + b[8:], "magic"),
    (lambda b: b[:80] + bytes([b[80] ^ 1]) + b[81:], "digest"),
])
def test_bad_batches_are_refused(mutate: object, why: str) -> None:
    """A batch cut short, with bytes after it, a wrong magic or a run failing its digest is refused."""
    with pytest.raises(ProtocolError, match=why):
        decode_batch(mutate(_batch()), disk_size=SIZE)  # type: ignore[operator]


def test_runs_beyond_the_disk_are_refused() -> None:
    """A batch with a run past the disk's end, not block-aligned or over 1 MiB is refused."""
    header = BatchHeader(0, 1, Kind.DELTA, Bookmark.NONE, 0, 0, 0.0, 0)
    for offset, length in ((SIZE, BLOCK), (100, BLOCK), (0, 2 * 1024 * 1024)):
        body = encode_batch(header, [(offset, length, None)])
        with pytest.raises(ProtocolError):
            decode_batch(body, disk_size=SIZE)
