"""The cache-space prerequisite on an appliance whose cache folder is a disk of its own (the appliance image mounts
its second disk at ``<data dir>/cache``)."""

from __future__ import annotations

from pathlib import Path

from tests.appliance import Appliance
from tests.source_disks import loop_device, mkfs, mounted

MiB = 1024 * 1024


def test_the_cache_check_measures_the_cache_disk_not_the_data_directorys(tmp_path: Path) -> None:
    """With a file system mounted on the cache folder, the check names that mount and its size, not the data
    directory's file system."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    with loop_device(tmp_path / "cache.img", 96 * MiB) as device:
        mkfs("ext4", device)
        with mounted(device, data / "cache") as cache:
            cache.chmod(0o700)
            appliance = Appliance(tmp_path, data_dir=data)
            appliance.start()
            try:
                found = appliance.cli("appliance", "check", "--json", "--only", "cache-space")
            finally:
                appliance.stop()
    assert found.returncode in (0, 1), found.stderr
    assert f"The cache is on {cache}:" in found.stdout, found.stdout
