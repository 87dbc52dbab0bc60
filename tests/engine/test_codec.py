"""The batch wire format and the segment format: round trips, and every kind of tampering refused."""

from __future__ import annotations

import os
import uuid

import pytest
import zstandard

from engine.codec import SegmentCorrupt, SegmentIdent, open_segment, seal
from engine.errors import ProtocolError
from engine.protocol import BLOCK, PACKED, BatchHeader, Bookmark, Kind, decode_batch, digest, encode_batch, pack_header

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


def test_packed_runs_unpack_to_their_data_and_are_stored_as_they_came() -> None:
    """With a packer, runs that compress go packed (the batch is smaller), those that do not go as they are; each
    decodes to its very data, and the segment stores the sender's frames, which open to the same blocks."""
    header = BatchHeader(0, 1, Kind.DELTA, Bookmark.NONE, 0, 0, 0.0, 0)
    text, noise = (b"godwit " * 20000)[:2 * BLOCK], os.urandom(BLOCK)
    runs = [(0, 2 * BLOCK, text), (4 * BLOCK, BLOCK, noise), (8 * BLOCK, BLOCK, None)]
    plain, packed = encode_batch(header, runs), encode_batch(header, runs, packer=zstandard.ZstdCompressor(level=1))
    assert len(packed) < len(plain) // 2
    _, decoded = decode_batch(packed, disk_size=SIZE)
    assert [(r.flags & PACKED, r.packed is not None) for r in decoded] == [(PACKED, True), (0, False), (0, False)]
    assert decoded[0].data is None and decoded[0].packed is not None  # let go once its digest was checked
    assert zstandard.ZstdDecompressor().decompress(decoded[0].packed) == text
    assert [None if r.data is None else bytes(r.data) for r in decoded[1:]] == [noise, None]
    segment = seal(KEY, SegmentIdent(SERVER, 0, 1), header, decoded, zstandard.ZstdCompressor(level=1))
    assert decoded[0].packed is not None and bytes(decoded[0].packed) not in segment  # encrypted, not in the clear
    _, blocks = open_segment(KEY, segment, SegmentIdent(SERVER, 0, 1), zstandard.ZstdDecompressor())
    assert [b.data for b in blocks] == [text, noise, None]


def _packed_batch(frame: bytes, data: bytes, *, size: int | None = None) -> bytes:
    """A batch of one packed run of ``data`` whose frame is ``frame`` (its packed length ``size``, if given)."""
    header = pack_header(BatchHeader(0, 1, Kind.DELTA, Bookmark.NONE, 0, 0, 0.0, 1))
    run = (0).to_bytes(8, "big") + len(data).to_bytes(4, "big") + bytes([PACKED]) + digest(data)
    return header + run + (len(frame) if size is None else size).to_bytes(4, "big") + frame


@pytest.mark.parametrize("make,why", [
    (lambda z, d: z.compress(bytes(2 * len(d))), "does not say it holds"),   # says it unpacks to more (a bomb)
    (lambda z, d: zstandard.ZstdCompressor(write_content_size=False).compress(d), "does not say it holds"),
    (lambda z, d: z.compress(d) + b"\0" * 8, "does not unpack"),               # bytes after its frame
    (lambda z, d: z.compress(d)[:9] + b"\xff" * 40, "does not unpack"),        # a broken frame
    (lambda z, d: z.compress(b"x" + d[1:]), "digest"),                         # other data
    (lambda z, d: os.urandom(len(d)), "not smaller"),                          # as large as its data
])
def test_bad_packed_runs_are_refused(make: object, why: str) -> None:
    """A packed run that would unpack to more than its length, does not say its size, carries bytes after its
    frame, is broken, unpacks to other data or is no smaller than its data is refused before it is used."""
    data = (b"replicated " * 10000)[:BLOCK]
    frame = make(zstandard.ZstdCompressor(level=1), data)  # type: ignore[operator]
    with pytest.raises(ProtocolError, match=why):
        decode_batch(_packed_batch(frame, data), disk_size=SIZE)
    with pytest.raises(ProtocolError, match="truncated"):
        decode_batch(_packed_batch(b"", data, size=100), disk_size=SIZE)
