"""The storage contract: what every backend must do, written against the Protocols of engine.storage only.

Each test gets an *opener* for the backend under test: every call returns a new :class:`Storage` over
the same data, as another process (or the same one after a restart) would see it. The suite knows
no path and no file name, so that the Azure backend runs it unchanged as a second parameter.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import multiprocessing
import random
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from engine.codec import Block
from engine.config import DataDir
from engine.errors import CacheFull, NotFound
from engine.links.data import StreamState
from engine.protocol import BLOCK
from engine.storage import PointInfo, Storage, StoredStream, TargetDisk, open_storage, replica

Opener = Callable[[], Storage]
SIZE = 40 * BLOCK + 1000  # a last partial block, as real disks may have


def _open_azure(root: Path, connection_string: str, container: str) -> Storage:
    """The ``azure`` backend on Azurite (a module-level function: a spawned process opens it too)."""
    from engine.storage.azure import AzureLocation, AzureStorage
    from engine.storage.local import LocalStorage

    location = AzureLocation(connection_string.split("BlobEndpoint=")[1].rstrip(";"), container, connection_string)
    return AzureStorage(LocalStorage(root), location, lambda server_id: hashlib.sha256(server_id.encode()).digest())


@pytest.fixture(params=["local", "azure"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """The backend under test, opened anew at each call (``azure``: a container of its own in Azurite)."""
    if request.param == "local":
        return functools.partial(open_storage, DataDir(tmp_path / "data"))
    if request.param == "azure":
        azurite = request.getfixturevalue("azurite")
        container = f"contract-{uuid.uuid4().hex[:12]}"
        opener = functools.partial(_open_azure, tmp_path / "data", azurite.connection_string, container)
        opener().probe_target()  # creates the container, as `godwit target set azure` does
        return opener
    raise AssertionError(f"no backend {request.param}")


def _point(point_id: int) -> PointInfo:
    return PointInfo(point_id, float(point_id), "crash-consistent", float(point_id))


def image(disk: TargetDisk, point: int | None, chunk: int = BLOCK) -> bytes:
    """The disk at a point, from its chunks; checks that they come in order and of the size asked."""
    out = bytearray()
    for off, data in disk.read_point(point, chunk):
        assert off == len(out)
        n = min(chunk, disk.size - off)
        assert data is None or len(data) == n
        out += data if data is not None else bytes(n)
    assert len(out) == disk.size
    return bytes(out)


def random_blocks(rng: random.Random, source: bytearray) -> list[Block]:
    """A segment's blocks: random runs of data or zeros, applied to ``source`` too."""
    blocks = []
    for _ in range(rng.randint(1, 6)):
        off = rng.randrange(0, SIZE // BLOCK + 1) * BLOCK
        n = min(BLOCK * rng.randint(1, 3), SIZE - off)
        if rng.random() < 0.2:
            source[off:off + n] = bytes(n)
            blocks.append(Block(off, n, None))
        else:
            data = rng.randbytes(n)
            source[off:off + n] = data
            blocks.append(Block(off, n, data))
    return blocks


# --- cache ---------------------------------------------------------------------------------------
def test_a_stored_segment_is_listed_and_readable_and_acknowledged_only_by_its_stream_state(opener: Opener) -> None:
    """A stored segment is durable and readable by another process, but acknowledged only once the
    stream state saved after it says so; a segment stored again (sent again after a crash) replaces it."""
    cache = opener().cache
    r = replica("server-a", 1)
    cache.put_segment(r, 0, 1, b"one")
    other = opener().cache
    assert other.segments(r, 0) == [1]
    assert other.get_segment(r, 0, 1) == b"one"
    assert other.stream_state(r, 0) is None  # stored, not acknowledged: the log processor applies nothing
    cache.save_stream_state(r, 0, StreamState(epoch=1, acked_seq=1, bytes_received=3))
    state = opener().cache.stream_state(r, 0)
    assert state is not None and state.acked_seq == 1
    cache.put_segment(r, 0, 2, b"sent before a crash")
    cache.put_segment(r, 0, 2, b"two")
    assert other.segments(r, 0) == [1, 2]
    assert other.get_segment(r, 0, 2) == b"two"
    assert other.used_bytes() == 6


def test_segments_are_ordered_per_disk_and_deleted_once(opener: Opener) -> None:
    """Segments list in sequence order per disk; a deleted one is gone and deleting it again is harmless."""
    cache = opener().cache
    r = replica("server-a", 1)
    for seq in (3, 1, 2):
        cache.put_segment(r, 0, seq, b"x" * seq)
    cache.put_segment(r, 1, 7, b"y")
    assert cache.segments(r, 0) == [1, 2, 3]
    assert cache.segments(r, 1) == [7]
    assert cache.segments(r, 2) == []
    assert cache.segments(replica("server-a", 2), 0) == []
    cache.delete_segment(r, 0, 1)
    cache.delete_segment(r, 0, 1)
    assert cache.segments(r, 0) == [2, 3]
    with pytest.raises(FileNotFoundError):
        cache.get_segment(r, 0, 1)
    assert cache.used_bytes() == 2 + 3 + 1
    cache.put_segment(replica("server-b", 4), 0, 1, b"w" * 4)  # each server's waiting bytes, all its copies
    cache.put_segment(replica("server-a", 2), 0, 1, b"v" * 5)
    assert cache.used_bytes_by_server() == {"server-a": 2 + 3 + 1 + 5, "server-b": 4}
    assert cache.used_bytes() == 2 + 3 + 1 + 5 + 4


def test_a_segment_set_aside_leaves_the_apply_order_and_the_count(opener: Opener) -> None:
    """A refused segment set aside is no longer listed, read or counted; the others stay."""
    cache = opener().cache
    r = replica("server-a", 1)
    for seq in (1, 2, 3):
        cache.put_segment(r, 0, seq, b"z" * 10 * seq)
    cache.set_aside(r, 0, 2)
    cache.set_aside(r, 0, 9)  # not there: nothing happens
    assert cache.segments(r, 0) == [1, 3]
    with pytest.raises(FileNotFoundError):
        cache.get_segment(r, 0, 2)
    assert opener().cache.used_bytes() == 10 + 30
    assert cache.get_segment(r, 0, 3) == b"z" * 30


def test_stream_states_round_trip_per_copy_and_disk(opener: Opener) -> None:
    """Stream states read back equal, per copy and disk, from another process; all are listed."""
    cache = opener().cache
    saved = {
        ("server-a", 1, 0): StreamState(epoch=1, acked_seq=5, initial_done=4 * BLOCK, bytes_received=99),
        ("server-a", 1, 1): StreamState(epoch=1, acked_seq=2, initial_done=SIZE, initial_complete=True),
        ("server-a", 2, 0): StreamState(epoch=2, acked_seq=1),
        ("server-b", 7, 3): StreamState(epoch=7, acked_seq=12, bytes_received=1 << 40),
    }
    for (server, epoch, disk), state in saved.items():
        cache.save_stream_state(replica(server, epoch), disk, state)
    newer = StreamState(epoch=1, acked_seq=6, initial_done=5 * BLOCK, bytes_received=120)
    cache.save_stream_state(replica("server-a", 1), 0, newer)
    saved[("server-a", 1, 0)] = newer
    other = opener().cache
    for (server, epoch, disk), state in saved.items():
        assert other.stream_state(replica(server, epoch), disk) == state
    assert other.stream_state(replica("server-a", 1), 2) is None
    assert other.stream_state(replica("server-c", 1), 0) is None
    listed = sorted(other.stream_states(), key=lambda s: (s.server_id, s.state.epoch, s.disk))
    assert listed == [StoredStream(server, disk, state) for (server, _epoch, disk), state in sorted(saved.items())]


def test_room_checks_refuse_what_would_not_fit(opener: Opener) -> None:
    """Room for a batch is found on an empty test volume; a batch larger than any volume is refused
    with CacheFull and a sentence for the admin."""
    cache = opener().cache
    cache.check_room(4 * 1024 * 1024)
    with pytest.raises(CacheFull) as refused:
        cache.check_room(1 << 62)
    assert refused.value.message


# --- seed disks and points -----------------------------------------------------------------------
def test_points_read_back_exactly_after_later_writes_and_pruning(opener: Opener) -> None:
    """Each point reads back as the disk was when its segment was applied, after later writes, from
    another process, and after older points are pruned; only the oldest point can be deleted."""
    rng = random.Random(7)
    r = replica("server-a", 1)
    disk = opener().target_disk(r, 0, SIZE)
    assert disk.size == SIZE
    assert image(disk, None) == bytes(SIZE)
    source = bytearray(SIZE)
    expected: dict[int, bytes] = {}
    seq = 0
    for point in range(1, 7):
        writes = rng.randint(1, 4)
        for i in range(writes):
            seq += 1
            # The last segment before a point carries its bookmark, as in the log processor.
            disk.apply(seq, random_blocks(rng, source), point=_point(point) if i == writes - 1 else None)
        expected[point] = bytes(source)
    seq += 1
    disk.apply(seq, random_blocks(rng, source))
    again = opener().target_disk(r, 0, SIZE)
    assert again.applied_seq == seq
    assert [p.id for p in again.points()] == list(expected)
    for point, data in expected.items():
        assert image(again, point) == data, point
    assert image(again, None) == bytes(source)
    with pytest.raises(ValueError):
        again.delete_point(3)
    again.delete_point(1)
    again.delete_point(2)
    pruned = opener().target_disk(r, 0, SIZE)
    assert [p.id for p in pruned.points()] == [3, 4, 5, 6]
    for point in range(3, 7):
        assert image(pruned, point) == expected[point]
    with pytest.raises(KeyError):
        list(pruned.read_point(1, BLOCK))


@pytest.mark.parametrize("chunk", [1000, BLOCK - 1, BLOCK + 1, 3 * BLOCK + 5, 4 * BLOCK, SIZE + 9])
def test_chunked_reads_of_any_size_make_the_same_image(opener: Opener, chunk: int) -> None:
    """A point read in chunks of any size gives chunks of that size, in order, that make the same image;
    a chunk of zeros may come as None."""
    rng = random.Random(chunk)
    disk = opener().target_disk(replica("server-a", 1), 0, SIZE)
    source = bytearray(SIZE)
    disk.apply(1, random_blocks(rng, source), point=_point(1))
    at_point = bytes(source)
    disk.apply(2, random_blocks(rng, source))
    assert image(disk, 1, chunk) == image(disk, 1, BLOCK) == at_point
    assert image(disk, None, chunk) == bytes(source)


def test_an_empty_disk_reads_as_chunks_of_zeros(opener: Opener) -> None:
    """A seed disk never written is all zeros, and says so without data."""
    disk = opener().target_disk(replica("server-a", 1), 0, SIZE)
    chunks = list(disk.read_point(None, 3 * BLOCK + 5))
    assert [off for off, _ in chunks] == list(range(0, SIZE, 3 * BLOCK + 5))
    assert all(data is None for _, data in chunks)


class Crash(Exception):
    """The applying process dies here."""


class CrashingBlocks(list[Block]):
    """A segment's blocks that "crash" the process applying them after ``n`` have been handed out, over
    every pass the backend makes over them: at each ``n`` the backend has done a different part of
    its work (kept old contents, written some blocks, …) and none of what follows."""

    def __init__(self, blocks: list[Block], n: int) -> None:
        super().__init__(blocks)
        self.left = n

    def __iter__(self) -> Iterator[Block]:
        for block in list.__iter__(self):
            if self.left == 0:
                raise Crash
            self.left -= 1
            yield block


def _apply_crashing(opener: Opener, r: str, seq: int, blocks: list[Block], n: int,
                    point: PointInfo | None = None) -> TargetDisk:
    """Apply a segment in a process that crashes after ``n`` blocks, then apply it again after a
    restart (as the log processor does: the segment is still in the cache)."""
    with contextlib.suppress(Crash):
        opener().target_disk(r, 0, SIZE).apply(seq, CrashingBlocks(blocks, n), point=point)
    restarted = opener().target_disk(r, 0, SIZE)
    assert restarted.applied_seq in (seq - 1, seq)
    restarted.apply(seq, blocks, point=point)
    return opener().target_disk(r, 0, SIZE)


@pytest.mark.parametrize("n", range(0, 2 * 3 + 1))
def test_reapplying_a_segment_after_a_crash_anywhere_is_exact(opener: Opener, n: int) -> None:
    """A crash at any point of applying a segment, then applying it again, leaves the disk and its
    points exact; applying an already applied segment changes nothing, even with other contents."""
    rng = random.Random(n)
    r = replica("server-a", 1)
    first = rng.randbytes(SIZE)
    opener().target_disk(r, 0, SIZE).apply(1, [Block(0, SIZE, first)], point=_point(1))
    now = bytearray(first)
    change = [Block(BLOCK, BLOCK, rng.randbytes(BLOCK)), Block(5 * BLOCK, BLOCK, None),
              Block(9 * BLOCK, 2 * BLOCK, rng.randbytes(2 * BLOCK))]
    for b in change:
        now[b.offset:b.offset + b.length] = b.data or bytes(b.length)
    disk = _apply_crashing(opener, r, 2, change, n)
    assert disk.applied_seq == 2
    assert image(disk, 1) == first
    assert image(disk, None) == bytes(now)
    # The segment that takes the next point, crashing at the same place.
    change = [Block(0, BLOCK, None), Block(BLOCK, BLOCK, rng.randbytes(BLOCK)), Block(20 * BLOCK, BLOCK, None)]
    for b in change:
        now[b.offset:b.offset + b.length] = b.data or bytes(b.length)
    disk = _apply_crashing(opener, r, 3, change, n, point=_point(3))
    assert disk.applied_seq == 3
    assert [p.id for p in disk.points()] == [1, 3]
    assert image(disk, 1) == first
    assert image(disk, 3) == image(disk, None) == bytes(now)
    disk.apply(2, [Block(0, BLOCK, b"\xff" * BLOCK)])
    disk.apply(3, change, point=_point(3))
    again = opener().target_disk(r, 0, SIZE)
    assert again.applied_seq == 3
    assert [p.id for p in again.points()] == [1, 3]
    assert image(again, 1) == first
    assert image(again, 3) == image(again, None) == bytes(now)


def test_a_refusal_and_resync_progress_survive_a_restart(opener: Opener) -> None:
    """What the log processor records about refusals, skipped segments and resyncs is durable."""
    r = replica("server-a", 1)
    disk = opener().target_disk(r, 0, SIZE)
    disk.apply(1, [Block(0, BLOCK, b"\x01" * BLOCK)], point=_point(9), resync_pass=2, resync_done=2)
    disk.refuse(2, 2)
    again = opener().target_disk(r, 0, SIZE)
    assert (again.applied_seq, again.refused_seq, again.refused_gen, again.resync_done, again.resync_seen) == \
        (1, 2, 2, 2, 2)
    assert [p.id for p in again.points()] == [9]
    again.skip(2)
    again.skip(1)  # behind applied_seq: nothing moves
    again.mended()
    later = opener().target_disk(r, 0, SIZE)
    assert (later.applied_seq, later.refused_seq) == (2, 0)


# --- locks ---------------------------------------------------------------------------------------
def _try_lock(opener: Opener, r: str, disk: int) -> str:
    """In another process: whether the disk's lock is free."""
    try:
        with opener().target_disk(r, disk, SIZE).locked(blocking=False):
            return "free"
    except BlockingIOError:
        return "busy"


def test_a_disk_lock_is_exclusive_across_objects_and_processes(opener: Opener) -> None:
    """While one holder has a disk's lock, a non-blocking attempt fails in this process and in another;
    other disks are not held; once released, it can be taken again."""
    r = replica("server-a", 1)
    disk = opener().target_disk(r, 0, SIZE)
    opener().target_disk(r, 1, SIZE)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        with disk.locked():
            with pytest.raises(BlockingIOError), opener().target_disk(r, 0, SIZE).locked(blocking=False):
                pass
            assert pool.submit(_try_lock, opener, r, 0).result(timeout=60) == "busy"
            assert pool.submit(_try_lock, opener, r, 1).result(timeout=60) == "free"
        assert pool.submit(_try_lock, opener, r, 0).result(timeout=60) == "free"
    with opener().target_disk(r, 0, SIZE).locked(blocking=False):
        pass


def test_a_point_opened_for_reading_holds_the_lock_and_a_pruned_one_is_not_found(opener: Opener) -> None:
    """Opening a point takes the disk's lock before reading, serves the point in the chunks asked for
    and releases the lock; a point pruned before it is opened is NotFound, naming the server."""
    rng = random.Random(3)
    storage = opener()
    r = replica("server-a", 1)
    disk = storage.target_disk(r, 0, SIZE)
    source = bytearray(SIZE)
    disk.apply(1, random_blocks(rng, source), point=_point(1))
    at_one = bytes(source)
    disk.apply(2, random_blocks(rng, source), point=_point(2))
    with storage.open_point(r, 0, SIZE, 1, chunk=3 * BLOCK + 5, name="web-01") as opened:
        assert (opened.point.id, opened.size) == (1, SIZE)
        with pytest.raises(BlockingIOError), opener().target_disk(r, 0, SIZE).locked(blocking=False):
            pass
        read = bytearray()
        for off, data in opened.chunks:
            assert off == len(read)
            read += data if data is not None else bytes(min(3 * BLOCK + 5, SIZE - off))
        assert bytes(read) == at_one
    with opener().target_disk(r, 0, SIZE).locked(blocking=False):
        pass
    opener().target_disk(r, 0, SIZE).delete_point(1)
    with pytest.raises(NotFound) as gone, storage.open_point(r, 0, SIZE, 1, chunk=BLOCK, name="web-01"):
        pass
    assert gone.value.message == "Recovery point 1 of web-01 was just pruned; export a newer one."
    with opener().target_disk(r, 0, SIZE).locked(blocking=False):  # not left held
        pass


# --- deletion ------------------------------------------------------------------------------------
def _fill(storage: Storage, server_id: str, epoch: int) -> None:
    """A copy with a segment waiting, a stream state and a seed disk with a point."""
    r = replica(server_id, epoch)
    storage.cache.put_segment(r, 0, 2, b"segment")
    storage.cache.save_stream_state(r, 0, StreamState(epoch=epoch, acked_seq=2))
    storage.target_disk(r, 0, SIZE).apply(1, [Block(0, BLOCK, b"\x07" * BLOCK)], point=_point(1))


def _present(storage: Storage, server_id: str, epoch: int) -> bool:
    """Whether anything of a copy is left (the seed disk opened anew reads empty when it is not)."""
    r = replica(server_id, epoch)
    cache = storage.cache
    target = storage.target_disk(r, 0, SIZE)
    parts = [bool(cache.segments(r, 0)), cache.stream_state(r, 0) is not None, target.applied_seq > 0,
             bool(target.points()), any(data is not None for _, data in target.read_point(None, SIZE))]
    assert len(set(parts)) == 1, f"part of copy {r} is left: {parts}"
    return parts[0]


def test_deleting_a_server_removes_every_copy_and_only_that_server(opener: Opener) -> None:
    """Disabling a server deletes all its copies' segments, stream states, seed disks and points, and
    nothing of another server."""
    storage = opener()
    for server_id, epoch in (("server-a", 1), ("server-a", 2), ("server-b", 1)):
        _fill(storage, server_id, epoch)
    opener().delete_server("server-a")
    other = opener()
    assert not _present(other, "server-a", 1)
    assert not _present(other, "server-a", 2)
    assert _present(other, "server-b", 1)
    assert [s.server_id for s in other.cache.stream_states()] == ["server-b"]
    assert other.cache.used_bytes() == len(b"segment")


def test_deleting_older_copies_keeps_the_current_epoch_and_later_ones(opener: Opener) -> None:
    """The log processor's sweep deletes the copies of earlier enablings and keeps the current one,
    any later one and other servers'."""
    storage = opener()
    for server_id, epoch in (("server-a", 1), ("server-a", 2), ("server-a", 3), ("server-b", 1)):
        _fill(storage, server_id, epoch)
    opener().delete_older_copies("server-a", 2)
    opener().delete_older_copies("server-c", 5)  # nothing stored: nothing happens
    other = opener()
    assert not _present(other, "server-a", 1)
    assert _present(other, "server-a", 2)
    assert _present(other, "server-a", 3)
    assert _present(other, "server-b", 1)
