"""Recovery points taken while the source writes: real loop devices with ext4 and XFS mounted inside the
test's own directory, real writer processes, a real mobility service, every point exported and checked.

The ordered writer writes a counter to X, fsyncs, then the same counter to Y, fsyncs: in an image of one
instant Y can never be newer than X.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from engine.mobility.consistency import Freezer
from tests.appliance import Appliance, Mobility, protect, wait_for
from tests.source_disks import (
    MiB,
    change_device,
    filesystem_on_loop,
    loop_device,
    mounted,
    need_loop_devices,
    read_counter,
    sectors_read,
    writer,
)

#: Points taken under the ordered writer in each test: issue 6 asks for no violation in at least 20.
POINTS = 20


@pytest.fixture(autouse=True)
def _root_and_loop_devices() -> None:
    need_loop_devices()


def points_under_load(app: Appliance, name: str, since: float, count: int,
                      timeout: float = 120) -> list[dict[str, Any]]:
    """Wait for ``count`` points taken after ``since`` (while the writer runs)."""
    return wait_for(lambda: (p := [x for x in app.points(name) if x["id"] / 1000 > since])[count - 1:] and p,
                    timeout=timeout, what=f"{count} points of {name} under load")


def export_all(app: Appliance, name: str, point: int, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)  # `vm export` never creates --out
    res = app.cli("vm", "export", name, "--point", str(point), "--format", "raw", "--out", str(out), timeout=120)
    assert res.returncode == 0, res.stderr
    return sorted(out.glob(f"{name}-disk*.raw"))


def freeze_times(mob: Mobility) -> list[float]:
    return [float(line.split("frozen_ms=")[1].split()[0]) for line in mob.output.splitlines() if "frozen_ms=" in line]


def assert_ordered(app: Appliance, mob: Mobility, root: Path, read_xy: Any, *, under_load: int) -> None:
    """Export every crash-consistent point and read (X, Y) from it: no point may have Y newer than X,
    and at least ``under_load`` of them must hold different counters (taken while the writer ran)."""
    pairs = []
    for p in app.points(mob.name):
        if p["kind"] == "crash-consistent":
            out = root / f"export-{p['id']}"
            images = export_all(app, mob.name, p["id"], out)
            pairs.append(read_xy(images, root / f"check-{p['id']}"))
            for image in images:
                image.unlink()
    violations = [(x, y) for x, y in pairs if y > x]
    print(f"{mob.name}: {len(pairs)} crash-consistent points checked, {len(violations)} with Y newer than X; "
          f"(X, Y) from {pairs[0]} to {pairs[-1]}")
    assert not violations, f"Y newer than X in {len(violations)} of {len(pairs)} points: {violations[:5]}"
    assert len({x for x, _ in pairs if x > 0}) >= under_load, pairs


def test_ordered_writes_on_a_frozen_ext4_device(appliance: Appliance) -> None:
    """Points of a busy ext4 device are crash-consistent: no point holds a write without the one fsynced before it."""
    root = appliance.root
    with filesystem_on_loop(root, "src0") as (device, mnt):
        mob = protect(appliance, Mobility(appliance, "ord-01", disks=[Path(device)]))
        try:
            disk = appliance.servers()["ord-01"]["disks"][0]
            assert disk["capture"] == "freeze" and disk["tracking"] == "block-trace", disk
            with writer("ordered", mnt / "x", mnt / "y"):
                t = time.time()
                taken = points_under_load(appliance, "ord-01", t, POINTS)
        finally:
            mob.stop()
    assert {p["kind"] for p in taken} == {"crash-consistent"}

    def read_xy(images: list[Path], mnt: Path) -> tuple[int, int]:
        with mounted(images[0], mnt, options="loop"):
            return read_counter(mnt / "x"), read_counter(mnt / "y")

    assert_ordered(appliance, mob, root, read_xy, under_load=POINTS - 2)
    assert freeze_times(mob), "no freeze was logged"


@pytest.mark.timeout(300)  # two loop file systems and POINTS points under writes: slow on a loaded machine
def test_ordered_writes_across_two_devices(appliance: Appliance) -> None:
    """A point of two busy disks is one instant of both: no point holds the second write without the first."""
    root = appliance.root
    with filesystem_on_loop(root, "sys") as (dev0, mnt0), filesystem_on_loop(root, "data") as (dev1, mnt1):
        mob = protect(appliance, Mobility(appliance, "two-01", disks=[Path(dev0), Path(dev1)]))
        try:
            with writer("ordered", mnt0 / "x", mnt1 / "y"):
                t = time.time()
                taken = points_under_load(appliance, "two-01", t, POINTS)
        finally:
            mob.stop()
    assert {p["kind"] for p in taken} == {"crash-consistent"}

    def read_xy(images: list[Path], mnt: Path) -> tuple[int, int]:
        assert len(images) == 2
        with mounted(images[0], mnt / "0", options="loop"), mounted(images[1], mnt / "1", options="loop"):
            return read_counter(mnt / "0" / "x"), read_counter(mnt / "1" / "y")

    assert_ordered(appliance, mob, root, read_xy, under_load=POINTS - 2)


def test_ordered_writes_in_an_image_file_on_xfs_are_cloned(appliance: Appliance) -> None:
    """A busy image file on XFS is taken by reflink clone: its points are crash-consistent and no clone is left."""
    root = appliance.root
    x_at, y_at = 1 * MiB, 56 * MiB
    with filesystem_on_loop(root, "host", size=320 * MiB, fs="xfs") as (_, mnt):
        image = mnt / "vm-disk.img"
        with open(image, "wb") as f:
            f.truncate(64 * MiB)
        mob = protect(appliance, Mobility(appliance, "xfs-01", disks=[image]))
        try:
            disk = appliance.servers()["xfs-01"]["disks"][0]
            assert disk["capture"] == "clone" and disk["tracking"] == "extent-map", disk
            with writer("ordered", f"{image}@{x_at}", f"{image}@{y_at}"):
                t = time.time()
                taken = points_under_load(appliance, "xfs-01", t, POINTS)
        finally:
            mob.stop()
        assert not list(mnt.glob(".vm-disk.img.godwit-clone-*")), "clones left behind"
    assert {p["kind"] for p in taken} == {"crash-consistent"}
    assert_ordered(appliance, mob, root,
                   lambda images, _: (read_counter(images[0], x_at), read_counter(images[0], y_at)),
                   under_load=POINTS - 2)


def test_sqlite_in_wal_mode_recovers_from_every_point(appliance: Appliance) -> None:
    """A SQLite database in WAL mode passes its integrity check in every point, and rows never go back."""
    root = appliance.root
    with filesystem_on_loop(root, "db", size=128 * MiB) as (device, mnt):
        mob = protect(appliance, Mobility(appliance, "sql-01", disks=[Path(device)]))
        try:
            with writer("sqlite", mnt / "app.db"):
                wait_for(lambda: (mnt / "app.db-wal").exists(), what="the database to be written")
                t = time.time()
                taken = points_under_load(appliance, "sql-01", t, 6)
        finally:
            mob.stop()
    rows = []
    for p in taken:
        (image,) = export_all(appliance, "sql-01", p["id"], root / f"sql-{p['id']}")
        with mounted(image, root / f"sql-mnt-{p['id']}", options="loop") as check:  # replays the journal
            conn = sqlite3.connect(check / "app.db")
            try:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", p
                rows.append(conn.execute("SELECT count(*) FROM t").fetchone()[0])
            finally:
                conn.close()
        image.unlink()
    print(f"sql-01: {len(rows)} points, integrity_check ok in each, rows {rows}")
    assert rows == sorted(rows), f"row counts went back between points: {rows}"
    assert len(set(rows)) >= 3 and rows[-1] > 0, rows  # taken while rows were being inserted


def test_a_writer_that_nothing_freezes_gets_points_labelled_not_crash_consistent(appliance: Appliance) -> None:
    """A raw device (no file system to freeze) written without pause: its points must never be called
    crash-consistent, and the admin is told why."""
    root = appliance.root
    with loop_device(root / "raw.img", 16 * MiB) as device:
        mob = protect(appliance, Mobility(appliance, "raw-01", disks=[Path(device)]))
        try:
            with writer("busy", device):
                t = time.time()
                taken = points_under_load(appliance, "raw-01", t, 3)
                server = wait_for(lambda: (s := appliance.servers()["raw-01"])["health_cause"] and s,
                                  what="a health cause")
            # A writer starved of CPU by a loaded machine can leave a point's read quiet, and that point is then
            # rightly crash-consistent: the busy writer must still be caught at least once.
            assert "not-crash-consistent" in {p["kind"] for p in taken}, taken
            assert server["health_cause"] == "points-not-crash-consistent", server
            assert "was written while its point was read" in server["health_detail"]
            # Once the writer stops, points are crash-consistent again, and exact.
            t = time.time()
            p = wait_for(lambda: next((x for x in appliance.points("raw-01")
                                       if x["id"] / 1000 > t and x["kind"] == "crash-consistent"), None),
                         what="a crash-consistent point after the writes stopped")
            (image,) = export_all(appliance, "raw-01", p["id"], root / "raw-export")
            assert image.read_bytes() == (root / "raw.img").read_bytes()
        finally:
            mob.stop()


def test_lost_tracking_falls_back_to_a_full_compare(appliance: Appliance) -> None:
    """A trace buffer that overflows (the service is stopped while the disk is written), and a
    restart in the middle of writes: each is reported, compared in full, and the next point is exact."""
    root = appliance.root
    with loop_device(root / "lost.img", 32 * MiB) as device:
        mob = protect(appliance, Mobility(appliance, "lost-01", disks=[Path(device)],
                                          env={"GODWIT_TRACE_BUFFER_KB": "4"}))
        try:
            assert mob.proc is not None
            os.kill(mob.proc.pid, signal.SIGSTOP)
            fd = os.open(device, os.O_WRONLY)
            try:
                for i in range(3000):  # far more events than 4 KiB per CPU holds
                    os.pwrite(fd, os.urandom(4096), (i * 7919 % 8192) * 4096)
                    if i % 10 == 0:
                        os.fsync(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
                os.kill(mob.proc.pid, signal.SIGCONT)
            wait_for(lambda: "tracking-lost" in [e["code"] for e in appliance.events()], timeout=30,
                     what="the lost tracking to be reported")
            t = time.time()
            p = appliance.point_after("lost-01", t)
            (image,) = export_all(appliance, "lost-01", p["id"], root / "after-overrun")
            assert image.read_bytes() == (root / "lost.img").read_bytes()
            image.unlink()

            # Write-zeroes requests (rwbs "N", e.g. ext4 zeroing an extent) are changes too.
            fd = os.open(device, os.O_WRONLY)
            try:
                os.pwrite(fd, os.urandom(MiB), 8 * MiB)
                os.fsync(fd)
            finally:
                os.close(fd)
            appliance.point_after("lost-01", time.time())
            subprocess.run(["fallocate", "--zero-range", "--offset", str(8 * MiB), "--length", str(MiB), device],
                           check=True)
            p = appliance.point_after("lost-01", time.time())
            (image,) = export_all(appliance, "lost-01", p["id"], root / "after-zeroing")
            assert image.read_bytes() == (root / "lost.img").read_bytes()
            image.unlink()

            # kill -9 while writing, write more while it is down, start it again.
            fd = os.open(device, os.O_WRONLY)
            try:
                os.pwrite(fd, b"A" * 65536, 5 * MiB)
                os.fsync(fd)
                mob.proc.kill()
                mob.proc.wait()
                os.pwrite(fd, b"B" * 65536, 20 * MiB)
                os.fsync(fd)
            finally:
                os.close(fd)
            mob.start()
            wait_for(lambda: any(e["code"] == "full-compare" and "started" in e["message"]
                                 for e in appliance.events()), timeout=30, what="the full compare to be reported")
            t = time.time()
            p = appliance.point_after("lost-01", t)
            (image,) = export_all(appliance, "lost-01", p["id"], root / "after-restart")
            assert image.read_bytes() == (root / "lost.img").read_bytes()
        finally:
            mob.stop()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_idle_source_reads_nothing_and_a_change_reads_about_what_changed(appliance: Appliance) -> None:
    """An idle source reads nothing and uses little CPU; a change reads about what changed, and its point is exact."""
    root = appliance.root
    with loop_device(root / "idle.img", 256 * MiB) as device:
        mob = protect(appliance, Mobility(appliance, "idle-01", disks=[Path(device)]))
        try:
            assert mob.proc is not None
            appliance.point_after("idle-01", time.time())  # settled: initial replication and its first point
            read0, cpu0, t0 = sectors_read(device), _cpu_seconds(mob.proc.pid), time.monotonic()
            time.sleep(10)
            idle_read = (sectors_read(device) - read0) * 512
            idle_cpu = (_cpu_seconds(mob.proc.pid) - cpu0) / (time.monotonic() - t0)
            # Points every second, heartbeats every 0.3 s here: still nothing read from the disk (a block
            # at most, should something else on this machine probe the device).
            assert idle_read <= 64 * 1024, f"ten idle seconds read {idle_read} bytes"
            assert idle_cpu < 0.15, f"idle mobility service used {idle_cpu:.1%} of a core"

            changed = change_device(device, 0.01, seed=7)
            before = sectors_read(device)
            t = time.time()
            p = appliance.point_after("idle-01", t)
            delta_read = (sectors_read(device) - before) * 512
            assert delta_read <= 2 * changed, f"read {delta_read} bytes for {changed} changed"
            (image,) = export_all(appliance, "idle-01", p["id"], root / "idle-export")
            assert image.read_bytes() == (root / "idle.img").read_bytes()
        finally:
            mob.stop()


def test_points_of_a_file_on_ext4_are_labelled_by_whether_it_was_written(appliance: Appliance) -> None:
    """An image file on a file system without reflinks can be neither frozen nor cloned: a point is
    crash-consistent only if the file was not written while it was read, and says so."""
    root = appliance.root
    x_at, y_at = 1 * MiB, 30 * MiB
    with filesystem_on_loop(root, "plain", size=96 * MiB) as (_, mnt):
        image = mnt / "guest.img"
        with open(image, "wb") as f:
            f.truncate(32 * MiB)
        mob = protect(appliance, Mobility(appliance, "plain-01", disks=[image]))
        try:
            disk = appliance.servers()["plain-01"]["disks"][0]
            assert disk["capture"] == "idle-check", disk
            assert "not crash-consistent" in appliance.cli("vm", "show", "plain-01").stdout
            registered = next(e for e in appliance.events() if e["code"] == "server-registered"
                              and e["server"] == "plain-01")
            assert registered["severity"] == "warning" and "not crash-consistent" in registered["message"]
            with writer("busy", image):
                t = time.time()
                taken = points_under_load(appliance, "plain-01", t, 3)
            # A writer starved of CPU by a loaded machine can leave a point's read quiet, and that point is then
            # rightly crash-consistent: the busy writer must still be caught at least once.
            assert "not-crash-consistent" in {p["kind"] for p in taken}, taken
            # An fsync-bound writer leaves quiet moments: points taken in one are labelled crash-consistent,
            # and those must really be of one instant.
            with writer("ordered", f"{image}@{x_at}", f"{image}@{y_at}"):
                t = time.time()
                points_under_load(appliance, "plain-01", t, 8)
        finally:
            mob.stop()
        assert_ordered(appliance, mob, root,
                       lambda images, _: (read_counter(images[0], x_at), read_counter(images[0], y_at)), under_load=0)


def test_file_systems_left_frozen_by_a_killed_service_are_thawed_when_it_starts(appliance: Appliance) -> None:
    """A kill -9 inside a point's window leaves its file systems frozen: the next start thaws them."""
    with filesystem_on_loop(appliance.root, "left") as (device, mnt):
        mob = Mobility(appliance, "left-01", disks=[Path(device)])
        mob.state_dir.mkdir(parents=True)
        (mob.state_dir / "frozen.json").write_text(json.dumps([str(mnt)]))  # as the killed one left it
        subprocess.run(["fsfreeze", "--freeze", str(mnt)], check=True)
        try:
            mob.start()
            wait_for(lambda: "thawed" in [e["code"] for e in appliance.events()], what="the thaw to be reported")
            res = subprocess.run(["timeout", "5", "touch", str(mnt / "writable")], capture_output=True)
            assert res.returncode == 0, "the file system is still frozen"
            assert not (mob.state_dir / "frozen.json").exists()
        finally:
            subprocess.run(["fsfreeze", "--unfreeze", str(mnt)], capture_output=True)
            mob.stop()


def test_a_window_that_stays_open_is_thawed_by_the_watchdog(tmp_path: Path) -> None:
    """A freeze window that stays open too long is thawed by the watchdog, so writers are never held for long."""
    with filesystem_on_loop(tmp_path, "dog") as (_, mnt):
        freezer = Freezer(tmp_path / "frozen.json", limit=0.3)
        try:
            freezer.arm([str(mnt)])
            assert freezer.freeze([str(mnt)]) == []
            assert json.loads((tmp_path / "frozen.json").read_text()) == [str(mnt)]
            stuck = subprocess.run(["timeout", "0.2", "touch", str(mnt / "a")], capture_output=True)
            assert stuck.returncode == 124, "the freeze did not hold writers"
            time.sleep(0.5)  # the watchdog's limit passes
            res = subprocess.run(["timeout", "5", "touch", str(mnt / "b")], capture_output=True)
            assert res.returncode == 0, "the watchdog did not thaw"
        finally:
            freezer.thaw()
            freezer.finish()
            subprocess.run(["fsfreeze", "--unfreeze", str(mnt)], capture_output=True)
        assert not (tmp_path / "frozen.json").exists()
