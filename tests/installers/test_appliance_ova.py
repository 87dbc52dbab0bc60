"""The appliance's OVA packaging (installers/appliance/ova.py) on a small disk: what `make appliance` writes and
what `make appliance-test` checks, without building a whole image."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) is missing")


def _ova_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("appliance_ova", REPO / "installers/appliance/ova.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ova = _ova_module()


@pytest.fixture
def small_ova(tmp_path: Path) -> Path:
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(64 << 20)
        f.seek(1 << 20)
        f.write(b"godwit" * 100_000)
    out = tmp_path / "godwit-appliance.ova"
    work = tmp_path / "work"
    work.mkdir()
    ova.build_ova(raw, out, version="9.8.7", work=work)
    return out


def test_a_built_ova_passes_every_check_and_holds_the_disk(small_ova: Path, tmp_path: Path) -> None:
    """Descriptor first, manifest second, a stream-optimised VMDK whose content is the raw disk's."""
    assert ova.check_ova(small_ova) == []
    with tarfile.open(small_ova) as tar:
        names = tar.getnames()
        assert names == ["godwit-appliance.ovf", "godwit-appliance.mf", "godwit-appliance-disk1.vmdk"]
        tar.extractall(tmp_path / "x", filter="data")
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(tmp_path / "x" / names[2]), str(back)],
                   check=True)
    assert back.read_bytes() == (tmp_path / "disk.raw").read_bytes()
    assert not list(small_ova.parent.glob(".*partial")), "the temporary OVA was left behind"


def test_the_descriptor_states_both_sizes_the_cache_disk_and_the_product(small_ova: Path) -> None:
    """8 vCPUs / 16 GiB recommended with a cache disk, 4 / 8 GiB minimum without; product, version, EULA."""
    with tarfile.open(small_ova) as tar:
        member = tar.extractfile("godwit-appliance.ovf")
        assert member is not None
        env = ET.fromstring(member.read())
    ns = {"ovf": ova.OVF, "rasd": ova.RASD}
    hw = {}
    for item in env.iterfind(".//ovf:VirtualHardwareSection/ovf:Item", ns):
        conf = item.get(f"{{{ova.OVF}}}configuration", "all")
        hw.setdefault(conf, {})[item.findtext("rasd:ResourceType", namespaces=ns)] = (
            item.findtext("rasd:VirtualQuantity", namespaces=ns), item.findtext("rasd:HostResource", namespaces=ns))
    assert hw["recommended"]["3"][0] == "8" and hw["recommended"]["4"][0] == "16384"
    assert hw["minimum"]["3"][0] == "4" and hw["minimum"]["4"][0] == "8192"
    assert hw["recommended"]["17"][1] == "ovf:/disk/cache" and "17" not in hw["minimum"]
    assert hw["all"]["17"][1] == "ovf:/disk/os" and "10" in hw["all"]
    assert env.findtext(".//ovf:ProductSection/ovf:Version", namespaces=ns) == "9.8.7"
    assert "180 days" in (env.findtext(".//ovf:EulaSection/ovf:License", namespaces=ns) or "")
    os_disk = env.find(".//ovf:DiskSection/ovf:Disk", ns)
    assert os_disk is not None and os_disk.get(f"{{{ova.OVF}}}capacity") == str(64 << 20)


def test_a_tampered_or_misordered_ova_is_reported(small_ova: Path, tmp_path: Path) -> None:
    """A changed disk fails the manifest; a descriptor that is not first, or names a missing file, is named."""
    with tarfile.open(small_ova) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    x = tmp_path / "x"
    vmdk = x / "godwit-appliance-disk1.vmdk"
    data = bytearray(vmdk.read_bytes())
    data[-600] ^= 0xFF
    vmdk.write_bytes(bytes(data))

    def pack(path: Path, names: list[str]) -> Path:
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for n in names:
                tar.add(x / n, arcname=n)
        return path

    order = ["godwit-appliance.ovf", "godwit-appliance.mf", "godwit-appliance-disk1.vmdk"]
    problems = ova.check_ova(pack(tmp_path / "tampered.ova", order))
    assert any("does not match the manifest" in p for p in problems), problems
    problems = ova.check_ova(pack(tmp_path / "order.ova", [order[2], order[0], order[1]]))
    assert problems and "not the .ovf descriptor" in problems[0]
    problems = ova.check_descriptor((x / order[0]).read_bytes(), {})
    assert any("does not hold" in p for p in problems), problems
    assert ova.check_descriptor(b"<Envelope", {})[0].startswith("the descriptor is not well-formed XML")
