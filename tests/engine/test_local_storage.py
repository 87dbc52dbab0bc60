"""The local target disk: points read back exactly, across re-applies, crashes and pruning."""

from __future__ import annotations

import os
import random
from pathlib import Path

from engine.codec import Block
from engine.protocol import BLOCK
from engine.storage import PointInfo, replica
from engine.storage.local import LocalCache, LocalTargetDisk
from tests.engine.test_storage_contract import SIZE, random_blocks


def image(disk: LocalTargetDisk, point: int | None) -> bytes:
    out = bytearray(disk.size)
    for off, data in disk.read_point(point):
        if data is not None:
            out[off:off + len(data)] = data
    return bytes(out)


def test_points_reconstruct_exactly(tmp_path: Path) -> None:
    """Every point of the local seed disk reads back exactly, after a restart and after pruning."""
    rng = random.Random(7)
    disk = LocalTargetDisk(tmp_path / "d", SIZE)
    source = bytearray(SIZE)
    expected: dict[int, bytes] = {}
    seq = 0
    for point in range(1, 8):
        writes = rng.randint(1, 4)
        for i in range(writes):
            seq += 1
            # The last segment before a point carries its bookmark, as in the log processor.
            taken = PointInfo(point, float(point), "crash-consistent", float(point)) if i == writes - 1 else None
            disk.apply(seq, random_blocks(rng, source), point=taken)
        expected[point] = bytes(source)
    seq += 1
    disk.apply(seq, random_blocks(rng, source))
    for point, data in expected.items():
        assert image(disk, point) == data, point
    assert image(disk, None) == bytes(source)
    # A fresh object (another process, after a restart) sees the same.
    again = LocalTargetDisk(tmp_path / "d", SIZE)
    assert again.applied_seq == seq
    assert image(again, 3) == expected[3]
    # Pruning the oldest points keeps the rest exact.
    again.delete_point(1)
    again.delete_point(2)
    assert [p.id for p in again.points()] == [3, 4, 5, 6, 7]
    for point in range(3, 8):
        assert image(again, point) == expected[point]


def test_reapplying_after_a_crash_mid_apply_is_exact(tmp_path: Path) -> None:
    """A crash after the undo log and half the blocks were written, with a torn log tail, is mended by re-applying."""
    disk = LocalTargetDisk(tmp_path / "d", SIZE)
    first = os.urandom(SIZE)
    disk.apply(1, [Block(0, SIZE, first)], point=PointInfo(1, 1.0, "crash-consistent", 1.0))
    change = [Block(BLOCK, BLOCK, os.urandom(BLOCK)), Block(5 * BLOCK, BLOCK, None)]
    # Crash after the old data was saved and half the new data written, before applied_seq moved.
    fd = os.open(disk._seed, os.O_RDWR)
    disk._save_old(fd, change)
    os.pwrite(fd, change[0].data or b"", BLOCK)
    os.close(fd)
    with open(disk._undo_path(1), "ab") as f:
        f.write(b"\x00\x01torn")  # and a torn record at the end of the log
    restarted = LocalTargetDisk(tmp_path / "d", SIZE)
    assert restarted.applied_seq == 1
    restarted.apply(2, change)
    assert image(restarted, 1) == first
    now = bytearray(first)
    now[BLOCK:2 * BLOCK] = change[0].data or b""
    now[5 * BLOCK:6 * BLOCK] = bytes(BLOCK)
    assert image(restarted, None) == bytes(now)
    restarted.apply(2, change)  # an already applied segment is a no-op
    assert image(restarted, 1) == first


def test_cache_segments_are_ordered_and_counted(tmp_path: Path) -> None:
    """Local cache segments list in order, are counted while waiting, and not once set aside."""
    cache = LocalCache(tmp_path / "cache")
    r = replica("server", 1)
    for seq in (3, 1, 2):
        cache.put_segment(r, 0, seq, b"x" * seq)
    assert cache.segments(r, 0) == [1, 2, 3]
    assert cache.used_bytes() == 6
    cache.delete_segment(r, 0, 1)
    assert cache.get_segment(r, 0, 2) == b"xx"
    assert cache.segments(r, 1) == []
    cache.set_aside(r, 0, 3)
    assert cache.used_bytes() == 2  # a refused segment no longer counts
    assert cache.stream_state(r, 0) is None  # nothing acknowledged yet


def test_a_point_is_recorded_with_the_segment_that_takes_it(tmp_path: Path) -> None:
    """A point and a completed resync are recorded with applied_seq; the flock is exclusive between objects."""
    disk = LocalTargetDisk(tmp_path / "d", SIZE)
    disk.apply(1, [Block(0, BLOCK, b"\x01" * BLOCK)], point=PointInfo(9, 1.0, "crash-consistent", 1.0),
               resync_done=2)
    again = LocalTargetDisk(tmp_path / "d", SIZE)
    assert (again.applied_seq, [p.id for p in again.points()], again.resync_done) == (1, [9], 2)
    with again.locked():
        other = LocalTargetDisk(tmp_path / "d", SIZE)
        try:
            with other.locked(blocking=False):
                raise AssertionError("the lock was not exclusive")
        except BlockingIOError:
            pass
