"""The pure parts of change tracking: the dirty map and the comparison of two clones' extent maps."""

from __future__ import annotations

from pathlib import Path

from engine.mobility.consistency import Extent, changed_ranges
from engine.mobility.digests import Tracker
from engine.mobility.tracking import DirtyMap
from engine.protocol import BLOCK, digest

MiB = 1024 * 1024


def test_dirty_map_marks_whole_blocks_and_take_starts_afresh() -> None:
    """Writes mark every block they touch, the short last block included and nothing past the end; take returns
    them as merged runs and leaves the map empty."""
    size = 10 * BLOCK + 100  # a short last block
    m = DirtyMap(size)
    m.mark(BLOCK + 1, BLOCK + 2)  # one byte: its block
    m.mark(3 * BLOCK - 1, 3 * BLOCK + 1)  # straddles two blocks
    m.mark(10 * BLOCK, 10 * BLOCK + 50)  # the short last block
    m.mark(size + BLOCK, size + 2 * BLOCK)  # beyond the end: ignored
    assert m.count() == 4
    bits = m.take()
    assert m.count() == 0 and m.marks == 4
    assert m.runs(bits, size) == [(BLOCK, 4 * BLOCK), (10 * BLOCK, size)]


def test_put_back_restores_what_was_not_read() -> None:
    """Blocks taken but not read, once put back, are dirty again along with the blocks marked since."""
    m = DirtyMap(64 * BLOCK)
    m.mark(0, BLOCK)
    bits = m.take()
    m.mark(5 * BLOCK, 6 * BLOCK)
    m.put_back(bits)
    assert m.runs(m.take(), 64 * BLOCK) == [(0, BLOCK), (5 * BLOCK, 6 * BLOCK)]


def test_mark_all_covers_the_disk() -> None:
    """Marking all makes the whole disk one dirty run, from its first byte to its last."""
    m = DirtyMap(3 * MiB)
    m.mark_all()
    assert m.runs(m.take(), 3 * MiB) == [(0, 3 * MiB)]


def test_unchanged_extents_give_no_ranges() -> None:
    """Two clones with the same extent maps give no changed range."""
    exts = [Extent(0, 10 * MiB, 2 * MiB, False), Extent(4 * MiB, 50 * MiB, MiB, False)]
    assert changed_ranges(exts, list(exts), 8 * MiB, BLOCK) == []


def test_a_moved_range_a_new_extent_and_a_punched_hole_are_found() -> None:
    """A write moved by copy on write, a write into a hole and an extent punched back to a hole each give a
    changed range, rounded out to whole blocks."""
    old = [Extent(0, 10 * MiB, 2 * MiB, False), Extent(4 * MiB, 50 * MiB, MiB, False)]
    new = [
        Extent(0, 10 * MiB, 256 * 1024, False),
        Extent(256 * 1024, 90 * MiB, 4096, False),  # a 4 KiB write moved (copy on write)
        Extent(256 * 1024 + 4096, 10 * MiB + 256 * 1024 + 4096, 2 * MiB - 256 * 1024 - 4096, False),
        Extent(3 * MiB, 70 * MiB, BLOCK, False),  # written where there was a hole
        # the extent at 4 MiB is gone: punched back to a hole
    ]
    assert changed_ranges(old, new, 8 * MiB, BLOCK) == [
        (256 * 1024, 256 * 1024 + BLOCK),
        (3 * MiB, 3 * MiB + BLOCK),
        (4 * MiB, 5 * MiB),
    ]


def test_unwritten_and_unknown_extents_count_as_changed() -> None:
    """An extent that became unwritten, and one whose place on disk is unknown (even if unchanged), count as
    changed."""
    old = [Extent(0, 10 * MiB, MiB, False)]
    assert changed_ranges(old, [Extent(0, 10 * MiB, MiB, True)], MiB, BLOCK) == [(0, MiB)]
    assert changed_ranges([Extent(0, -1, MiB, False)], [Extent(0, -1, MiB, False)], MiB, BLOCK) == [(0, MiB)]


def test_digests_in_flight_win_over_acknowledged_ones(tmp_path: Path) -> None:
    """A block that goes A -> B -> A while B is in flight must be sent again: compared with the
    acknowledged A it would look unchanged and the replica would keep B."""
    a, b = digest(b"a" * BLOCK), digest(b"b" * BLOCK)
    t = Tracker(tmp_path / "disk0.digests", 4 * BLOCK)
    t.commit({1: a}, t.sending({1: a}))
    first = t.sending({1: b})
    assert t.get(1) == b  # so a read of A now counts as a change
    second = t.sending({1: a})
    third = t.sending({1: b})
    t.commit({1: b}, first)  # batch 1 lands; batches 2 and 3 are still in flight
    assert t.get(1) == b
    t.commit({1: a}, second)
    assert t.get(1) == b  # what the replica will hold once batch 3 lands
    t.commit({1: b}, third)
    assert t.get(1) == b
    t.close()
    reopened = Tracker(tmp_path / "disk0.digests", 4 * BLOCK)
    assert not reopened.fresh and reopened.get(1) == b  # only acknowledged digests are on disk
    reopened.close()


def test_a_large_discard_marks_every_block_quickly() -> None:
    """A discard across a terabyte disk (16 Mi blocks) marks exactly the blocks it touches, as one run."""
    size = 2**40  # a terabyte: 16 Mi blocks, marked as whole bytes
    m = DirtyMap(size)
    m.mark(3 * BLOCK + 5, size - BLOCK - 1)  # blocks 3 up to (not including) the last one
    assert m.count() == m.blocks - 4
    assert m.runs(m.take(), size) == [(3 * BLOCK, size - BLOCK)]
