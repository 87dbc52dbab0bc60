"""Moving an appliance through real processes: back up, restore into a second data directory with the old
one's storage, and the mobility service, pointed at the new appliance, continues with delta replication."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.appliance import Appliance, Mobility, change_disk, godwit, wait_for

MiB = 1024 * 1024
DISK = 16 * MiB
NAME = "mv-01"


def _streams(app: Appliance) -> dict[str, dict[str, Any]]:
    """Each disk's stream state in the cache: what the process server acknowledged."""
    cache = app.data_dir / "cache"
    return {str(p.parent.relative_to(cache)): json.loads(p.read_text()) for p in cache.rglob("stream.json")}


def _protected_and_backed_up(old: Appliance, tmp_path: Path) -> tuple[Mobility, Path, Path, Path]:
    """A server with an incompressible disk (an initial pass costs the whole disk), protected, changed and backed
    up: its mobility service (running), its disk, the backup and the backup's passphrase file."""
    disk = old.root / f"{NAME}.img"
    disk.write_bytes(random.Random(7).randbytes(DISK))
    mob = Mobility(old, NAME, disks=[disk]).start()
    try:
        wait_for(lambda: old.servers().get(NAME), what="registration")
        old.enable(NAME)
        wait_for(lambda: old.servers()[NAME]["state"] == "protected", timeout=60, what="initial replication")
        change_disk(disk, seed=2, writes=3)
        t = time.time()
        old.point_after(NAME, t)
        passphrase = tmp_path / "backup-passphrase.txt"
        passphrase.write_text("correct horse battery staple\n")
        backup = tmp_path / "appliance.backup"
        res = old.cli("appliance", "backup", "--out", str(backup), "--passphrase-file", str(passphrase))
        assert res.returncode == 0, res.stderr
        assert backup.read_bytes().startswith(b"GODWIT-APPLIANCE-BACKUP\n1\n")
    except BaseException:
        mob.stop()
        raise
    return mob, disk, backup, passphrase


def test_moved_appliance_continues_with_delta_replication(appliance: Appliance, tmp_path: Path,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    """Back up, change the disk, stop the old engine, restore into a new data directory with --storage-from,
    start the new engine on new ports and point the mobility service at it: no initial pass (its stream goes on
    from the acknowledged sequence, and only the changed blocks travel, far below the disk's size), the old
    recovery points came along, and a new point exports byte-exact."""
    old = appliance
    mob, disk, backup, passphrase = _protected_and_backed_up(old, tmp_path)
    mob2: Mobility | None = None
    new = Appliance(tmp_path_factory.mktemp("new-appliance"))
    try:
        # Replication goes on after the backup: the storage that moves holds this, the backup need not.
        change_disk(disk, seed=3, writes=3)
        t = time.time()
        moved_point = old.point_after(NAME, t)
        moved_bytes = disk.read_bytes()
        fingerprint = old.setup()["ca_fingerprint"]
        assert old.stop() == 0
        before = _streams(old)
        assert before and all(s["initial_complete"] for s in before.values())

        res = godwit("appliance", "restore", str(backup), "--passphrase-file", str(passphrase), "--storage-from",
                     str(old.data_dir), "--data-dir", str(new.data_dir))
        assert res.returncode == 0, res.stderr
        assert "1 registered server (1 replicating)" in res.stdout and "delta replication" in res.stdout
        new.start()
        assert (new.management_port, new.data_port) != (old.management_port, old.data_port)
        assert new.setup()["ca_fingerprint"] == fingerprint
        restored_at = max(e["id"] for e in new.events() if e["code"] == "appliance-restored")

        mob.stop()
        mob2 = Mobility(new, NAME, disks=[disk], state_dir=mob.state_dir, fingerprint=fingerprint).start()
        assert new.address in mob2.args
        wait_for(lambda: new.servers()[NAME]["state"] == "protected", timeout=30, what="protected on the new appliance")
        # The points taken before the move came with the target, and read back as they were.
        assert moved_point["id"] in [p["id"] for p in new.points(NAME)]
        assert new.export(NAME, moved_point["id"], tmp_path / "moved").read_bytes() == moved_bytes

        change_disk(disk, seed=4, writes=3)
        t = time.time()
        point = new.point_after(NAME, t)
        assert new.export(NAME, point["id"], tmp_path / "after").read_bytes() == disk.read_bytes()

        after = _streams(new)
        assert after.keys() == before.keys()  # the same replication epoch, continued; no new copy begun
        for key, state in after.items():
            assert state["epoch"] == before[key]["epoch"] and state["initial_complete"]
            assert state["acked_seq"] > before[key]["acked_seq"]
        received = sum(s["bytes_received"] for s in after.values()) - sum(s["bytes_received"] for s in before.values())
        assert 0 < received < DISK // 4, received  # the changed blocks only, not the 16 MiB disk again
        assert "initial replication of" not in mob2.output
        assert new.servers()[NAME]["disks"][0]["bytes_done"] == DISK
        assert not [e for e in new.events() if e["id"] > restored_at and e["code"] == "replication-enabled"]
    finally:
        mob.stop()
        if mob2 is not None:
            mob2.stop()
        new.stop()


def test_restore_without_the_storage_replicates_again_from_scratch(appliance: Appliance, tmp_path: Path,
                                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    """Restored without its cache and target (the admin forgot to copy them), the appliance is whole but holds no
    replication data: the server goes through a full initial replication again, and its points are byte-exact."""
    old = appliance
    mob, disk, backup, passphrase = _protected_and_backed_up(old, tmp_path)
    mob2: Mobility | None = None
    new = Appliance(tmp_path_factory.mktemp("new-appliance"))
    try:
        fingerprint = old.setup()["ca_fingerprint"]
        assert old.stop() == 0
        res = godwit("appliance", "restore", str(backup), "--passphrase-file", str(passphrase), "--data-dir",
                     str(new.data_dir))
        assert res.returncode == 0, res.stderr
        assert "replication data was not moved" in res.stdout
        new.start()
        mob.stop()
        mob2 = Mobility(new, NAME, disks=[disk], state_dir=mob.state_dir, fingerprint=fingerprint).start()
        wait_for(lambda: new.servers()[NAME]["state"] == "protected", timeout=60, what="protected on the new appliance")
        content = disk.read_bytes()
        with_data = sum(65536 for off in range(0, DISK, 65536) if content[off:off + 65536].count(0) != 65536)
        assert with_data > DISK // 2
        # Every block with data travelled again (zero blocks are never sent: the seed disk starts as zeros); runs
        # that compress travel packed, so the bytes received are about what the disk's data packs to (90 % of one
        # zstd-9 frame of the whole disk leaves room for packing run by run), where a copy not sent again would
        # have received next to nothing.
        packed = len(zstandard.ZstdCompressor(level=9).compress(content))
        assert sum(s["bytes_received"] for s in _streams(new).values()) >= packed * 9 // 10
        change_disk(disk, seed=4, writes=3)
        t = time.time()
        point = new.point_after(NAME, t)
        assert new.export(NAME, point["id"], tmp_path / "after").read_bytes() == disk.read_bytes()
    finally:
        mob.stop()
        if mob2 is not None:
            mob2.stop()
        new.stop()
