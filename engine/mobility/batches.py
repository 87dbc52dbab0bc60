"""Reading a pass and cutting it into batches: the step between finding changes and sending.

A pass (:meth:`SourceDisk.pass_work`) says which ranges of a disk to read; :func:`cut_batches` reads
them, keeps the blocks whose digest differs from what the appliance has (:class:`Tracker`), and
yields batch bodies (built run by run straight from the read buffer) cut before a batch would carry more than
``BATCH_DATA`` bytes, ``MAX_RUNS`` runs or describe more than ``MAX_DESCRIBED`` bytes of the disk.
It neither sends nor waits: the caller sends each batch (``send(disk, body)``) and, once the
appliance acknowledged it, commits its digests to the tracker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import zstandard

from engine.mobility.digests import ZERO_DIGEST, Tracker
from engine.mobility.sources import Reader, SourceDisk, Work
from engine.protocol import (
    BATCH_DATA,
    BLOCK,
    HEADER_SIZE,
    MAX_DESCRIBED,
    MAX_RUN,
    MAX_RUNS,
    BatchHeader,
    Bookmark,
    Kind,
    append_run,
    digest,
    pack_header,
)


@dataclass(frozen=True)
class Labels:
    """How the batches of one pass are labelled on the wire."""

    kind: Kind
    #: What the pass's last batch carries (NONE: nothing is sent for a pass that found no change).
    bookmark: Bookmark
    cycle: int
    #: For a resync, which one (carried in the header's ``initial_done``).
    generation: int = 0


@dataclass(frozen=True)
class Batch:
    """One batch body, ready to send, and what the appliance will hold once it acknowledged it."""

    disk: int
    seq: int
    body: bytearray
    #: block -> digest of the blocks it carries: commit them to the tracker (with ``token``) only
    #: once the appliance acknowledged the batch.
    digests: dict[int, bytes]
    token: int
    #: Bytes of data it carries (a run of zeros carries none).
    data_bytes: int

    def __repr__(self) -> str:
        return f"<Batch disk={self.disk} seq={self.seq} bytes={len(self.body)} blocks={len(self.digests)}>"


def cut_batches(source: SourceDisk, tracker: Tracker, work: Work, reader: Reader, labels: Labels, *, first_seq: int,
                stop: threading.Event | None = None, disk_read: Callable[[int, float], None] | None = None,
                packer: zstandard.ZstdCompressor | None = None) -> Iterator[Batch]:
    """Read ``work`` with ``reader`` and yield the batches of what changed, numbered from ``first_seq``.

    The last batch carries ``labels.bookmark``; nothing is yielded for a work that found no change
    and has no bookmark. Each batch's blocks count as in flight in ``tracker`` from the moment it is
    yielded, so a block read again before it is acknowledged is compared with what it carries.
    ``disk_read(bytes, seconds)`` is told how fast the disk itself (not a clone or memory) reads. With a
    ``packer`` (an appliance that speaks data 1.2) runs that compress go packed.
    Raises :class:`InterruptedError` once ``stop`` is set, and an ``OSError`` naming the disk's path
    when it cannot be read."""
    size = source.size
    seq = first_seq
    body = bytearray(HEADER_SIZE)  # the header is written when the batch is cut
    pending: dict[int, bytes] = {}
    runs = batch_bytes = described = 0
    buf = source.buf
    zero = bytes(BLOCK)

    def add(offset: int, length: int, data: memoryview | None) -> None:
        nonlocal runs, batch_bytes, described
        append_run(body, offset, length, data, packer)
        runs += 1
        batch_bytes += length if data is not None else 0
        described += length

    def cut(bookmark: Bookmark, initial_done: int) -> Batch:
        """The runs gathered so far as one batch."""
        nonlocal body, runs, pending, batch_bytes, described, seq
        token = tracker.sending(pending)
        header = BatchHeader(source.index, seq, labels.kind, bookmark, labels.cycle,
                             initial_done if labels.kind == Kind.INITIAL else labels.generation, time.time(), runs)
        body[:HEADER_SIZE] = pack_header(header)
        batch = Batch(source.index, seq, body, pending, token, batch_bytes)
        seq += 1
        body, pending, runs, batch_bytes, described = bytearray(HEADER_SIZE), {}, 0, 0, 0
        return batch

    for off, length, is_hole in work:
        if stop is not None and stop.is_set():
            raise InterruptedError
        if is_hole:
            add(off, length, None)
            pending[off // BLOCK] = ZERO_DIGEST
        else:
            view = memoryview(buf)[:length]
            began = time.perf_counter()
            try:
                got = reader(off, view)
            except OSError as exc:  # say which disk: the admin has to look at it
                view.release()  # the error's traceback must not keep the disk's buffer from being closed
                raise OSError(exc.errno, exc.strerror, source.path) from exc
            if disk_read is not None and reader == source.read:  # the disk itself, not memory or a clone
                disk_read(got, time.perf_counter() - began)
            if got < length:
                view[got:] = bytes(length - got)  # the disk shrank under us
            run_start = None  # where the current run of changed, non-zero blocks began
            for boff in range(0, length, BLOCK):
                block = view[boff:boff + BLOCK]
                bno = (off + boff) // BLOCK
                dig = digest(block)
                changed = dig != tracker.get(bno)
                # A whole block is zeros when its digest is a zero block's (what the tracker trusts too); only
                # the disk's last, shorter block is compared byte by byte.
                is_zero = changed and (dig == ZERO_DIGEST if len(block) == BLOCK else block == zero[:len(block)])
                if run_start is not None and (not changed or is_zero):
                    add(off + run_start, boff - run_start, view[run_start:boff])
                    run_start = None
                if not changed:
                    continue
                pending[bno] = dig
                if is_zero:
                    add(off + boff, len(block), None)
                elif run_start is None:
                    run_start = boff
            if run_start is not None:
                add(off + run_start, length - run_start, view[run_start:length])
        # A work item adds at most MAX_RUN // BLOCK runs and MAX_RUN bytes: cut before a limit is crossed.
        if batch_bytes >= BATCH_DATA or runs >= MAX_RUNS - MAX_RUN // BLOCK or \
                described > MAX_DESCRIBED - MAX_RUN:
            yield cut(Bookmark.NONE, off + length)
    if labels.bookmark != Bookmark.NONE or runs:
        yield cut(labels.bookmark, size)
