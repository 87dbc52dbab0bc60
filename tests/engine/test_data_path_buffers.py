"""The data path's cheaper buffers: reused batch bodies, direct writes to seed disks, the heap setting."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import zstandard

from engine.codec import (
    SEGMENT_MAX,
    Block,
    Buffers,
    SegmentCorrupt,
    SegmentIdent,
    keep_freed_memory,
    open_segment,
    seal_into,
    sealed_size,
)
from engine.protocol import BLOCK, MAX_BATCH, MAX_DATA, decode_batch
from engine.storage import replica
from engine.storage.local import LocalCache, LocalTargetDisk, _open_direct
from tests.engine.test_codec import KEY, SERVER, SIZE
from tests.engine.test_codec import _seal as _seal_one
from tests.engine.test_local_storage import image


def _apply_and_compare(root: Path) -> None:
    rng = random.Random(11)
    size = 6 * BLOCK + 1000  # the last block is short and ends off any alignment
    disk = LocalTargetDisk(root, size)
    source = bytearray(size)
    for seq in range(1, 7):
        blocks = []
        for off in sorted(rng.sample(range(0, size, BLOCK), 3)):
            n = min(BLOCK * rng.randint(1, 2), size - off)
            data: bytes | memoryview | None = rng.randbytes(n) if rng.random() < 0.8 else None
            if data is not None and rng.random() < 0.5:
                data = memoryview(bytearray(b"\0" * 7 + data))[7:]  # a view at an odd address, as open_segment gives
            blocks.append(Block(off, n, data))
            source[off:off + n] = bytes(n) if data is None else data
        # Blocks of one segment may overlap (a block sent twice): the later one wins, as in the source.
        disk.apply(seq, blocks)
    assert image(disk, None) == bytes(source)
    assert image(LocalTargetDisk(root, size), None) == bytes(source)  # as another process reads it


def test_seed_disk_writes_are_exact_with_a_short_last_block(tmp_path: Path) -> None:
    """Blocks written around the page cache (where the file system allows) read back byte for byte,
    including a disk's short last block and data that sits at an unaligned address."""
    _apply_and_compare(tmp_path / "d")


def test_seed_disk_writes_are_exact_where_direct_writes_are_refused(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the system has no O_DIRECT the same writes go through the page cache, exactly."""
    monkeypatch.delattr(os, "O_DIRECT", raising=False)
    assert _open_direct(tmp_path) is None
    _apply_and_compare(tmp_path / "d")


def test_body_buffers_are_reused_and_bounded() -> None:
    """A buffer given back is the one taken next; beyond ``keep`` idle ones, buffers are let go."""
    pool = Buffers(MAX_BATCH, keep=1)
    a, b = pool.take(), pool.take()
    assert len(a) == MAX_BATCH and a is not b
    pool.give(a)
    pool.give(b)  # one idle buffer is kept, not two
    assert pool.take() is a
    assert pool.take() is not b


def test_heap_keeps_freed_buffers() -> None:
    """glibc takes the setting that keeps freed batch buffers for the next batch."""
    assert keep_freed_memory(64 * 1024 * 1024) is True


def test_segments_read_into_a_reused_buffer_open_to_independent_blocks(tmp_path: Path) -> None:
    """A segment read into a reused buffer authenticates, and its blocks stay intact when the buffer is
    overwritten by the next segment; a segment larger than the buffer is read whole; a missing one raises."""
    _, segment = _seal_one()
    cache = LocalCache(tmp_path / "cache")
    cache.put_segment(replica(SERVER, 0), 0, 1, segment)
    buffer = bytearray(SEGMENT_MAX)
    view = cache.read_segment(replica(SERVER, 0), 0, 1, buffer)
    assert view == segment
    _, blocks = open_segment(KEY, view, SegmentIdent(SERVER, 0, 1), zstandard.ZstdDecompressor())
    expected = [bytes(b.data) if b.data is not None else None for b in blocks]
    buffer[:] = bytes(len(buffer))  # the next segment lands in the same buffer
    assert [bytes(b.data) if b.data is not None else None for b in blocks] == expected
    assert any(expected)
    small = bytearray(16)
    assert cache.read_segment(replica(SERVER, 0), 0, 1, small) == segment  # read whole, into a buffer of its own
    with pytest.raises(FileNotFoundError):
        cache.read_segment(replica(SERVER, 0), 0, 2, buffer)


def test_blocks_decrypted_into_an_arena_equal_those_decrypted_alone() -> None:
    """Compressed, stored and zero records open into an arena to the same data as without one; an arena too
    small for the segment is used as far as it goes; an altered record is refused either way."""
    _, segment = _seal_one()
    ident = SegmentIdent(SERVER, 0, 1)
    _, alone = open_segment(KEY, segment, ident, zstandard.ZstdDecompressor())
    for size in (MAX_DATA, 3 * BLOCK):
        arena = bytearray(b"\xaa" * size)
        _, into = open_segment(KEY, segment, ident, zstandard.ZstdDecompressor(), arena)
        assert [(b.offset, b.length, None if b.data is None else bytes(b.data)) for b in into] == \
            [(b.offset, b.length, b.data) for b in alone]
        assert any(isinstance(b.data, memoryview) for b in into)  # the arena was used
    altered = bytearray(segment)
    altered[len(altered) // 2] ^= 1
    with pytest.raises(SegmentCorrupt):
        open_segment(KEY, bytes(altered), ident, zstandard.ZstdDecompressor(), bytearray(MAX_DATA))


def test_a_segment_sealed_into_a_reused_buffer_opens_exactly() -> None:
    """seal_into builds in a dirty reused buffer a segment that opens to the batch's runs; a buffer too small
    for the runs is refused before anything is written."""
    body, _ = _seal_one()
    header, runs = decode_batch(body, disk_size=SIZE)
    out = bytearray(b"\x55" * SEGMENT_MAX)
    segment = seal_into(KEY, SegmentIdent(SERVER, 0, 1), header, runs, zstandard.ZstdCompressor(level=1), out)
    assert len(segment) <= sealed_size(runs)
    _, blocks = open_segment(KEY, bytes(segment), SegmentIdent(SERVER, 0, 1), zstandard.ZstdDecompressor())
    assert [(b.offset, b.length, b.data) for b in blocks] == \
        [(r.offset, r.length, None if r.data is None else bytes(r.data)) for r in runs]
    with pytest.raises(ValueError):
        seal_into(KEY, SegmentIdent(SERVER, 0, 1), header, runs, zstandard.ZstdCompressor(level=1), bytearray(64))
