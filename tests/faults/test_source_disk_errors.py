"""A source disk that returns I/O errors on reads (a loop device whose backing file was cut short):
the mobility service keeps running, the admin is told which disk and why, and once the disk reads
again replication heals by itself with a byte-exact point."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.appliance import Appliance, Mobility, fill_disk, wait_for
from tests.source_disks import loop_device, need_loop_devices

MiB = 1024 * 1024


def _device_bytes(device: str, size: int) -> bytes:
    with open(device, "rb") as f:
        return f.read(size)


def test_a_source_disk_with_read_errors_is_named_and_heals(appliance: Appliance, tmp_path: Path) -> None:
    """A source disk that fails reads is named in the server's health and an event, and heals once it reads."""
    need_loop_devices()
    image = appliance.root / "failing.img"
    size = 16 * MiB
    with loop_device(image, size) as device:
        with open(device, "r+b") as f:
            f.write(fill_disk(tmp_path / "content.img", size, seed=41))
            f.flush()
            os.fsync(f.fileno())
        mob = Mobility(appliance, "eio-01", disks=[Path(device)]).start()
        try:
            wait_for(lambda: appliance.servers().get("eio-01"), what="registration")
            appliance.enable("eio-01")
            wait_for(lambda: appliance.servers()["eio-01"]["state"] == "protected", timeout=60, what="protection")

            os.truncate(image, 4 * MiB)  # reads beyond 4 MiB now fail with EIO
            assert appliance.cli("vm", "resync", "eio-01").returncode == 0  # a full pass reads all of it
            server = wait_for(lambda: (s := appliance.servers()["eio-01"])["health_cause"] == "point-deferred" and s,
                              timeout=60, what="the read errors to be reported")
            assert f"reading {device} failed (Input/output error)" in server["health_detail"], server
            wait_for(lambda: any(e["code"] == "source-read-failed" and device in e["message"]
                                 for e in appliance.events()), what="the event naming the disk")
            assert mob.proc is not None and mob.proc.poll() is None, "the mobility service gave up"

            os.truncate(image, size)  # the disk reads again (zeros where it was cut)
            t = time.time()
            point = appliance.point_after("eio-01", t, timeout=90)
            wait_for(lambda: appliance.servers()["eio-01"]["health"] == "healthy", timeout=30,
                     what="health to be healthy again")
            exported = appliance.export("eio-01", point["id"], tmp_path / "p").read_bytes()
            assert exported == _device_bytes(device, size)
            assert exported[4 * MiB:] == bytes(size - 4 * MiB)
        finally:
            mob.stop()
