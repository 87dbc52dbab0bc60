"""The mobility service's steps without a network: find changes in a real file, read them, cut the
batches; the batch bodies are collected and decoded as the process server would, and must rebuild
the file's changed bytes exactly."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.links import encode
from engine.links.management import Registration, ServerFacts
from engine.mobility.batches import Batch, Labels, cut_batches
from engine.mobility.digests import Tracker
from engine.mobility.service import MobilityService, registration_body
from engine.mobility.sources import SourceDisk, open_disk
from engine.protocol import BATCH_DATA, BLOCK, MAX_DATA, MAX_RUN, MAX_RUNS, Bookmark, Kind, decode_batch

MiB = 1024 * 1024


@pytest.fixture
def disk_file(tmp_path: Path) -> Path:
    """A sparse image with data, explicit zeros and holes, and a short last block."""
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(40 * BLOCK + 1000)
        f.seek(2 * BLOCK + 100)
        f.write(os.urandom(3 * BLOCK))  # straddles four blocks
        f.seek(10 * BLOCK)
        f.write(bytes(2 * BLOCK))  # written zeros: nothing to send to a seed disk of zeros
        f.seek(20 * BLOCK)
        f.write(os.urandom(BLOCK))
        f.seek(40 * BLOCK)
        f.write(os.urandom(1000))  # the short last block
    return path


@pytest.fixture
def source(disk_file: Path) -> Iterator[SourceDisk]:
    src = open_disk(0, str(disk_file), disk_file.stat().st_size, tracer_name="unused")
    yield src
    src.close()


@pytest.fixture
def tracker(tmp_path: Path, disk_file: Path) -> Iterator[Tracker]:
    t = Tracker(tmp_path / "disk0.digests", disk_file.stat().st_size)
    yield t
    t.close()


def one_pass(source: SourceDisk, tracker: Tracker, labels: Labels, *, first_seq: int = 1) -> list[Batch]:
    """Find changes, read them and cut batches; every batch counts as acknowledged."""
    work, reader = source.pass_work(tracker.was_data)
    batches = []
    for batch in cut_batches(source, tracker, work, reader, labels, first_seq=first_seq):
        batches.append(batch)
        tracker.commit(batch.digests, batch.token)
    return batches


def apply(replica: bytearray, bodies: list[bytes]) -> list[tuple[int, int]]:
    """Apply batch bodies as the log processor would; returns the (offset, length) of every run."""
    runs = []
    for body in bodies:
        _, decoded = decode_batch(body, disk_size=len(replica))
        for run in decoded:
            replica[run.offset:run.offset + run.length] = bytes(run.length) if run.data is None else run.data
            runs.append((run.offset, run.length))
    return runs


def test_an_initial_pass_rebuilds_the_file_from_its_batches(source: SourceDisk, tracker: Tracker,
                                                            disk_file: Path) -> None:
    """Initial replication of a small file: the batch bodies rebuild it byte for byte, carry no
    zeros, end with the bookmark and report the whole disk as done."""
    batches = one_pass(source, tracker, Labels(Kind.INITIAL, Bookmark.CYCLE_END, cycle=7))
    replica = bytearray(source.size)
    runs = apply(replica, [b.body for b in batches])
    assert bytes(replica) == disk_file.read_bytes()
    assert sum(length for _, length in runs) == 5 * BLOCK + 1000  # the four straddled blocks, one, the short one
    assert [b.seq for b in batches] == list(range(1, len(batches) + 1))
    header, _ = decode_batch(batches[-1].body, disk_size=source.size)
    assert (header.kind, header.bookmark, header.cycle, header.initial_done) == \
        (Kind.INITIAL, Bookmark.CYCLE_END, 7, source.size)


def test_a_delta_pass_sends_only_what_changed_since_the_acknowledged_pass(source: SourceDisk, tracker: Tracker,
                                                                          disk_file: Path) -> None:
    """After a pass was acknowledged, the next pass sends only the blocks written since, a block
    overwritten with zeros as a zero run, and applying it brings the replica up to the file."""
    replica = bytearray(source.size)
    apply(replica, [b.body for b in one_pass(source, tracker, Labels(Kind.INITIAL, Bookmark.CYCLE_END, 1))])
    with open(disk_file, "r+b") as f:
        f.seek(30 * BLOCK + 5)
        f.write(b"changed")
        f.seek(20 * BLOCK)
        f.write(bytes(BLOCK))  # data before, zeros now
    os.utime(disk_file, ns=(0, 10**18))  # a stamp that differs whatever the file system's clock granularity
    batches = one_pass(source, tracker, Labels(Kind.DELTA, Bookmark.CRASH_POINT, 2), first_seq=5)
    assert [b.seq for b in batches] == [5]
    header, runs = decode_batch(batches[0].body, disk_size=source.size)
    assert header.bookmark == Bookmark.CRASH_POINT and header.kind == Kind.DELTA
    assert [(r.offset, r.length, r.data is None) for r in runs] == [(20 * BLOCK, BLOCK, True),
                                                                   (30 * BLOCK, BLOCK, False)]
    apply(replica, [batches[0].body])
    assert bytes(replica) == disk_file.read_bytes()
    assert batches[0].data_bytes == BLOCK


def test_an_unchanged_disk_sends_nothing_but_its_bookmark(source: SourceDisk, tracker: Tracker) -> None:
    """A pass that finds nothing sends one empty batch if it carries a bookmark, none otherwise."""
    one_pass(source, tracker, Labels(Kind.INITIAL, Bookmark.CYCLE_END, 1))
    source.need_full("compare everything once more")
    assert one_pass(source, tracker, Labels(Kind.DELTA, Bookmark.NONE, 2)) == []
    source.need_full("and again")
    marked = one_pass(source, tracker, Labels(Kind.DELTA, Bookmark.CYCLE_END, 3))
    assert len(marked) == 1 and marked[0].digests == {}
    assert decode_batch(marked[0].body, disk_size=source.size)[1] == []


def test_batches_are_cut_at_the_data_limit(tmp_path: Path) -> None:
    """A pass of more than BATCH_DATA bytes is cut into batches the process server accepts, the
    earlier ones without a bookmark and saying how far initial replication got."""
    path = tmp_path / "big.img"
    path.write_bytes(os.urandom(3 * BATCH_DATA + 3 * BLOCK))
    size = path.stat().st_size
    src = open_disk(0, str(path), size, tracer_name="unused")
    tracker = Tracker(tmp_path / "big.digests", size)
    try:
        batches = one_pass(src, tracker, Labels(Kind.INITIAL, Bookmark.CYCLE_END, 1))
    finally:
        src.close()
        tracker.close()
    headers = [decode_batch(b.body, disk_size=size)[0] for b in batches]
    assert len(batches) == 4 and all(BATCH_DATA <= b.data_bytes <= MAX_DATA for b in batches[:-1])
    assert [h.bookmark for h in headers] == [Bookmark.NONE] * 3 + [Bookmark.CYCLE_END]
    done = [h.initial_done for h in headers]
    assert done == sorted(done) and done[-1] == size and done[0] == batches[0].data_bytes
    replica = bytearray(size)
    apply(replica, [b.body for b in batches])
    assert bytes(replica) == path.read_bytes()


def test_batches_are_cut_before_too_many_runs(tmp_path: Path) -> None:
    """A resync of a disk that is all holes sends every block as its own zero run, cut so that no
    batch holds more than MAX_RUNS runs; every batch carries the resync's generation."""
    path = tmp_path / "holes.img"
    size = 4096 * BLOCK
    with open(path, "wb") as f:
        f.truncate(size)
    src = open_disk(0, str(path), size, tracer_name="unused")
    tracker = Tracker(tmp_path / "holes.digests", size)
    try:
        tracker.forget()  # a resync assumes nothing about the appliance's copy
        src.need_full(None)
        batches = one_pass(src, tracker, Labels(Kind.RESYNC, Bookmark.CYCLE_END, 1, generation=3))
    finally:
        src.close()
        tracker.close()
    decoded = [decode_batch(b.body, disk_size=size) for b in batches]
    assert [len(runs) for _, runs in decoded] == [MAX_RUNS - MAX_RUN // BLOCK] * 2 + [4096 - 2 * (MAX_RUNS - 16)]
    assert all(h.initial_done == 3 and h.kind == Kind.RESYNC for h, _ in decoded)
    assert all(r.data is None for _, runs in decoded for r in runs) and sum(b.data_bytes for b in batches) == 0
    assert sum(r.length for _, runs in decoded for r in runs) == size


def test_blocks_of_a_batch_not_yet_acknowledged_are_compared_with_what_it_carries(source: SourceDisk,
                                                                                   tracker: Tracker) -> None:
    """Until a batch is acknowledged its blocks count as in flight: a second pass meanwhile does not
    send them again, and they are not on disk as acknowledged."""
    work, reader = source.pass_work(tracker.was_data)
    first = list(cut_batches(source, tracker, work, reader, Labels(Kind.INITIAL, Bookmark.CYCLE_END, 1), first_seq=1))
    source.need_full(None)
    assert one_pass(source, tracker, Labels(Kind.DELTA, Bookmark.NONE, 2)) == []
    reopened = Tracker(tracker.path, source.size)
    try:
        assert reopened.was_data(2) is False  # nothing acknowledged yet
    finally:
        reopened.close()
    for batch in first:
        tracker.commit(batch.digests, batch.token)
    assert tracker.was_data(2)


def test_a_stopped_pass_is_interrupted(source: SourceDisk, tracker: Tracker) -> None:
    """A pass stops reading at the next work item once the service is stopped."""
    stop = threading.Event()
    stop.set()
    work, reader = source.pass_work(tracker.was_data)
    with pytest.raises(InterruptedError):
        next(cut_batches(source, tracker, work, reader, Labels(Kind.DELTA, Bookmark.NONE, 1), first_seq=1, stop=stop))


def test_a_read_error_names_the_disk(source: SourceDisk, tracker: Tracker, disk_file: Path) -> None:
    """A source disk that cannot be read fails the pass with an OSError that names its path."""
    def failing(off: int, view: memoryview) -> int:
        raise OSError(errno.EIO, "Input/output error")

    work, _ = source.pass_work(tracker.was_data)
    with pytest.raises(OSError) as caught:
        list(cut_batches(source, tracker, work, failing, Labels(Kind.DELTA, Bookmark.NONE, 1), first_seq=1))
    assert caught.value.errno == errno.EIO and caught.value.filename == str(disk_file)


def test_facts_are_what_the_management_port_accepts(tmp_path: Path, disk_file: Path) -> None:
    """The facts a source sends, with a notice, make a registration body that the appliance's own
    parser reads back as the same facts."""
    service = MobilityService(appliance="127.0.0.1:1", passphrase_file=tmp_path / "passphrase",
                              ca_fingerprint="AA" * 32, state_dir=tmp_path / "state", disks=[str(disk_file)],
                              name="source-01", stop=threading.Event())
    service.notify("warning", "tracking-lost", "x" * 2000)
    facts = service.facts()
    assert facts.disks[0].path == str(disk_file) and facts.disks[0].size == disk_file.stat().st_size
    assert [(n.code, len(n.message)) for n in facts.notices] == [("tracking-lost", 512)]
    body = registration_body(passphrase="correct horse", csr="-----BEGIN CERTIFICATE REQUEST-----", name="source-01",
                             facts=facts)
    assert {"passphrase", "csr", "name", "hostname", "disks", "notices"} <= body.keys()
    assert Registration.parse(body).facts == facts
    assert ServerFacts.parse(encode(facts)) == facts
