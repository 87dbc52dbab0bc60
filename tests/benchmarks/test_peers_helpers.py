"""The side-by-side benchmark's pure helpers: the same change for every tool, the image put back between tools,
and the table's ratios (benchmarks/peers.py)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import peers
import replication

MiB = 1024 * 1024


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_churn_writes_exactly_its_ranges_and_the_same_ones_for_the_same_seed(tmp_path: Path) -> None:
    """Every tool gets its change at the same places: churn_ranges is a function of the seed, churn writes
    there and nowhere else, and another seed gives other places."""
    disk = tmp_path / "disk.img"
    original = os.urandom(16 * MiB)
    disk.write_bytes(original)
    ranges = replication.churn_ranges(len(original), 0.05, 7)
    assert ranges == replication.churn_ranges(len(original), 0.05, 7)
    assert ranges != replication.churn_ranges(len(original), 0.05, 8)
    written = replication.churn(disk, 0.05, 7)
    assert written == sum(n for _, n in ranges) >= 0.05 * len(original)
    after = disk.read_bytes()
    inside = bytearray(len(original))
    for offset, n in ranges:
        assert offset % 4096 == 0 and 4096 <= n <= MiB and offset + n <= len(original)
        inside[offset:offset + n] = b"\1" * n
    changed = [i for i in range(0, len(original), 4096) if after[i:i + 4096] != original[i:i + 4096]]
    assert changed and all(inside[i] for i in changed)


def test_restored_puts_the_image_back_after_the_change_also_on_an_error(tmp_path: Path) -> None:
    """The next tool starts from the image as it was generated, even when the tool before it failed."""
    disk = tmp_path / "disk.img"
    replication.make_disk(disk, 64 * MiB, 1)
    before = digest(disk)
    ranges = replication.churn_ranges(64 * MiB, 0.01, 2)
    with pytest.raises(RuntimeError), peers.restored(disk, ranges):
        replication.churn(disk, 0.01, 2)
        assert digest(disk) != before
        raise RuntimeError("the tool failed")
    assert digest(disk) == before


def test_table_gives_godwit_over_peer_ratios_of_medians() -> None:
    """Ratios are Godwit's median over the peer's median (below 1: Godwit faster); a peer with no figure shows a
    dash instead of a ratio."""
    runs = [{"borg": {"initial_s": 8.0, "change_s": 4.0},
             "godwit": {"initial_s": 4.0, "initial_cached_s": 3.0, "change_to_point_s": 2.0, "change_to_ack_s": 1.0}},
            {"borg": {"initial_s": 10.0, "change_s": 6.0},
             "godwit": {"initial_s": 6.0, "initial_cached_s": 3.0, "change_to_point_s": 4.0, "change_to_ack_s": 1.0}},
            {"godwit": {"initial_s": 5.0, "initial_cached_s": 3.0, "change_to_point_s": 3.0, "change_to_ack_s": 1.0}}]
    text, medians = peers.table(runs, ["borg", "restic", "godwit"], "3s")
    borg = next(line for line in text.splitlines() if line.startswith("| borg"))
    assert borg.split(" | ")[1:] == ["9.00 s", "5.00 s", "0.56", "0.60", "0.20 |"]
    restic = next(line for line in text.splitlines() if line.startswith("| restic"))
    assert restic.split(" | ")[1:] == ["—", "—", "—", "—", "— |"]
    assert medians["godwit"]["initial_s"] == 5.0 and medians["borg"] == {"initial_s": 9.0, "change_s": 5.0}
