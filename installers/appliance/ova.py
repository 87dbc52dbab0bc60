"""The appliance as an OVA: an OVF 1.0 descriptor, a SHA-256 manifest and the OS disk as a stream-optimised VMDK.

Inside the tar (ustar), in the order OVF requires: the descriptor first, then the manifest, then the disk. The
descriptor offers two deployment options: ``recommended`` (8 vCPUs, 16 GiB of memory, an empty 512 GiB cache
disk) and ``minimum`` (4 vCPUs, 8 GiB, no cache disk: the cache then lives on the OS disk). The appliance
formats and mounts an empty second disk as its cache at its first boot (``godwit-cache-disk``).

:func:`check_ova` reads an OVA back and lists what is wrong with it: the boot test and the unit tests run it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

OVF = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
STREAM_OPTIMIZED = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
NAME = "godwit-appliance"
#: CIM operating system type 96: Debian 64-bit.
DEBIAN_64 = "96"


@dataclass(frozen=True)
class Sizing:
    """One deployment option of the descriptor."""

    id: str
    label: str
    cpus: int
    memory_mib: int
    cache_disk_gib: int | None


SIZINGS = (
    Sizing("recommended", "Recommended (up to 150 servers)", 8, 16384, 512),
    Sizing("minimum", "Minimum (up to 10 servers, cache on the OS disk)", 4, 8192, None),
)

EULA = """Godwit replication appliance, evaluation licence.

You may install and run this appliance for 180 days from its first setup to evaluate it. After that,
replication that is running goes on, but no new server can be enabled until a licence file is activated.
The software is provided "as is", without warranty of any kind. It contains Debian GNU/Linux and other free
software under their own licences; see /usr/share/doc/*/copyright inside the appliance."""

ET.register_namespace("ovf", OVF)
ET.register_namespace("rasd", RASD)
ET.register_namespace("vssd", VSSD)
ET.register_namespace("xsi", XSI)


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def _sub(parent: ET.Element, ns: str, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, _q(ns, tag), {_q(OVF, k): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def _item(hw: ET.Element, configuration: str | None = None, **fields: str) -> None:
    """A hardware item; CIM's schema wants its fields in alphabetical order."""
    item = ET.SubElement(hw, _q(OVF, "Item"), {_q(OVF, "configuration"): configuration} if configuration else {})
    for key in sorted(fields):
        _sub(item, RASD, key, fields[key])


def descriptor(*, version: str, vmdk_name: str, vmdk_size: int, capacity: int) -> bytes:
    """The OVF 1.0 descriptor for an OS disk of ``capacity`` bytes stored as ``vmdk_name`` (``vmdk_size`` bytes)."""
    env = ET.Element(_q(OVF, "Envelope"), {_q(OVF, "version"): "1.0",
                                           "{http://www.w3.org/XML/1998/namespace}lang": "en-US"})
    refs = _sub(env, OVF, "References")
    _sub(refs, OVF, "File", id="file-os", href=vmdk_name, size=str(vmdk_size))

    disks = _sub(env, OVF, "DiskSection")
    _sub(disks, OVF, "Info", "The appliance's disks: the OS disk, and an empty cache disk (recommended option)")
    _sub(disks, OVF, "Disk", diskId="os", fileRef="file-os", capacity=str(capacity), capacityAllocationUnits="byte",
         format=STREAM_OPTIMIZED)
    cache_gib = next(s.cache_disk_gib for s in SIZINGS if s.cache_disk_gib)
    _sub(disks, OVF, "Disk", diskId="cache", capacity=str(cache_gib), capacityAllocationUnits="byte * 2^30",
         format=STREAM_OPTIMIZED)

    nets = _sub(env, OVF, "NetworkSection")
    _sub(nets, OVF, "Info", "The appliance's network")
    net = _sub(nets, OVF, "Network", name="VM Network")
    _sub(net, OVF, "Description", "Reaches the source servers (ports 443 and 9443 in) and the target storage")

    options = _sub(env, OVF, "DeploymentOptionSection")
    _sub(options, OVF, "Info", "Sizes of the appliance")
    for s in SIZINGS:
        conf = _sub(options, OVF, "Configuration", id=s.id, **({"default": "true"} if s is SIZINGS[0] else {}))
        _sub(conf, OVF, "Label", s.label)
        cache = f", an empty {s.cache_disk_gib} GiB cache disk" if s.cache_disk_gib else ", no cache disk"
        _sub(conf, OVF, "Description", f"{s.cpus} vCPUs, {s.memory_mib // 1024} GiB of memory{cache}")

    vs = _sub(env, OVF, "VirtualSystem", id=NAME)
    _sub(vs, OVF, "Info", "Godwit replication appliance")
    _sub(vs, OVF, "Name", "Godwit appliance")
    product = _sub(vs, OVF, "ProductSection", required="false")
    _sub(product, OVF, "Info", "About the appliance")
    _sub(product, OVF, "Product", "Godwit replication appliance")
    _sub(product, OVF, "Vendor", "Godwit")
    _sub(product, OVF, "Version", version)
    _sub(product, OVF, "FullVersion", f"Godwit appliance {version} (Debian 12)")
    annotation = _sub(vs, OVF, "AnnotationSection")
    _sub(annotation, OVF, "Info", "Sizing")
    _sub(annotation, OVF, "Annotation", "Recommended: 8 vCPUs, 16 GiB of memory, a cache disk. Minimum: 4 vCPUs, "
         "8 GiB. At power-on the screen shows the console's setup wizard; the text consoles show the appliance's "
         "address, ports and CA fingerprint.")
    eula = _sub(vs, OVF, "EulaSection")
    _sub(eula, OVF, "Info", "End-user licence agreement")
    _sub(eula, OVF, "License", EULA)
    os_section = _sub(vs, OVF, "OperatingSystemSection", id=DEBIAN_64)
    _sub(os_section, OVF, "Info", "The appliance's operating system")
    _sub(os_section, OVF, "Description", "Debian GNU/Linux 12 (64-bit)")

    hw = _sub(vs, OVF, "VirtualHardwareSection")
    _sub(hw, OVF, "Info", "Virtual hardware")
    system = _sub(hw, OVF, "System")
    for key, value in (("ElementName", "Virtual Hardware Family"), ("InstanceID", "0"),
                       ("VirtualSystemIdentifier", NAME), ("VirtualSystemType", "vmx-14")):
        _sub(system, VSSD, key, value)
    for s in SIZINGS:
        _item(hw, s.id, Description="Number of virtual CPUs", ElementName=f"{s.cpus} virtual CPUs", InstanceID="1",
              ResourceType="3", VirtualQuantity=str(s.cpus))
        _item(hw, s.id, AllocationUnits="byte * 2^20", Description="Memory", ElementName=f"{s.memory_mib} MB",
              InstanceID="2", ResourceType="4", VirtualQuantity=str(s.memory_mib))
    _item(hw, Description="SCSI controller", ElementName="SCSI controller 0", InstanceID="3",
          ResourceSubType="lsilogic", ResourceType="6")
    _item(hw, AddressOnParent="0", ElementName="OS disk", HostResource="ovf:/disk/os", InstanceID="4", Parent="3",
          ResourceType="17")
    _item(hw, "recommended", AddressOnParent="1", ElementName="Cache disk", HostResource="ovf:/disk/cache",
          InstanceID="5", Parent="3", ResourceType="17")
    _item(hw, AutomaticAllocation="true", Connection="VM Network", Description="E1000 ethernet adapter",
          ElementName="Network adapter 1", InstanceID="6", ResourceSubType="E1000", ResourceType="10")
    ET.indent(env)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(env, encoding="utf-8")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_ova(ova: Path, *, vmdk: Path, capacity: int, version: str) -> None:
    """Pack ``vmdk`` into ``ova`` (written as a temporary file, renamed when complete)."""
    vmdk_name = f"{NAME}-disk1.vmdk"
    with tempfile.TemporaryDirectory(dir=ova.parent) as tmp:
        ovf = Path(tmp) / f"{NAME}.ovf"
        ovf.write_bytes(descriptor(version=version, vmdk_name=vmdk_name, vmdk_size=vmdk.stat().st_size,
                                   capacity=capacity))
        mf = Path(tmp) / f"{NAME}.mf"
        mf.write_text(f"SHA256({ovf.name})= {_sha256(ovf)}\nSHA256({vmdk_name})= {_sha256(vmdk)}\n")
        partial = ova.parent / f".{ova.name}.partial"
        with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
            for path, name in ((ovf, ovf.name), (mf, mf.name), (vmdk, vmdk_name)):
                info = tar.gettarinfo(str(path), arcname=name)
                info.uid = info.gid = 64
                info.uname = info.gname = "someone"
                info.mode = 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, f)
        os.rename(partial, ova)


def build_ova(raw: Path, ova: Path, *, version: str, work: Path) -> None:
    """Convert the raw OS disk to a stream-optimised VMDK and pack the OVA."""
    vmdk = work / f"{NAME}-disk1.vmdk"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized",
                    str(raw), str(vmdk)], check=True, capture_output=True)
    try:
        write_ova(ova, vmdk=vmdk, capacity=raw.stat().st_size, version=version)
    finally:
        vmdk.unlink(missing_ok=True)


# --- reading an OVA back --------------------------------------------------------------------------------------

def check_descriptor(xml: bytes, files: dict[str, int]) -> list[str]:
    """What is wrong with a descriptor, given the other files of the package and their sizes."""
    problems: list[str] = []
    try:
        env = ET.fromstring(xml)
    except ET.ParseError as exc:
        return [f"the descriptor is not well-formed XML: {exc}"]
    if env.tag != _q(OVF, "Envelope"):
        return [f"the root element is {env.tag}, not ovf:Envelope"]
    order = [child.tag for child in env]
    expected = [_q(OVF, t) for t in ("References", "DiskSection", "NetworkSection", "DeploymentOptionSection",
                                     "VirtualSystem")]
    if order != expected:
        problems.append(f"Envelope's children are {[t.split('}')[1] for t in order]}, expected References, "
                        "the sections, then VirtualSystem")
    refs = {f.get(_q(OVF, "id")): f for f in env.iterfind(f"{{{OVF}}}References/{{{OVF}}}File")}
    for fid, f in refs.items():
        href, size = f.get(_q(OVF, "href")), f.get(_q(OVF, "size"))
        if href not in files:
            problems.append(f"File {fid} names {href}, which the package does not hold")
        elif size is not None and int(size) != files[href]:
            problems.append(f"File {fid}: ovf:size {size} but {href} is {files[href]} bytes")
    disks = {}
    for d in env.iterfind(f"{{{OVF}}}DiskSection/{{{OVF}}}Disk"):
        disks[d.get(_q(OVF, "diskId"))] = d
        ref = d.get(_q(OVF, "fileRef"))
        if ref is not None and ref not in refs:
            problems.append(f"Disk {d.get(_q(OVF, 'diskId'))} refers to a missing file {ref}")
        if not (d.get(_q(OVF, "capacity")) or "").isdigit():
            problems.append(f"Disk {d.get(_q(OVF, 'diskId'))} has no numeric capacity")
    configs = {c.get(_q(OVF, "id")) for c in env.iterfind(f"{{{OVF}}}DeploymentOptionSection/{{{OVF}}}Configuration")}
    vs = env.find(f"{{{OVF}}}VirtualSystem")
    if vs is None:
        return [*problems, "no VirtualSystem"]
    for section in ("ProductSection", "EulaSection", "OperatingSystemSection", "VirtualHardwareSection"):
        if vs.find(f"{{{OVF}}}{section}") is None:
            problems.append(f"VirtualSystem has no {section}")
    for section in vs:
        if section.tag.endswith("Section") and section.find(f"{{{OVF}}}Info") is None:
            problems.append(f"{section.tag.split('}')[1]} has no Info (OVF requires one)")
    kinds: dict[str, set[str]] = {}
    for item in vs.iterfind(f"{{{OVF}}}VirtualHardwareSection/{{{OVF}}}Item"):
        fields = [child.tag.split("}")[1] for child in item]
        if fields != sorted(fields):
            problems.append(f"an Item's fields are not in the schema's order: {fields}")
        rtype = item.findtext(_q(RASD, "ResourceType")) or "?"
        conf = item.get(_q(OVF, "configuration"))
        if conf is not None and conf not in configs:
            problems.append(f"an Item names the deployment option {conf}, which is not declared")
        for c in sorted(configs) if conf is None else [conf]:
            kinds.setdefault(c or "", set()).add(rtype)
        host = item.findtext(_q(RASD, "HostResource"))
        if host and host.removeprefix("ovf:/disk/") not in disks:
            problems.append(f"an Item's HostResource {host} names no Disk")
    for conf in configs:
        missing = {"3", "4", "17", "10"} - kinds.get(conf or "", set())
        if missing:
            problems.append(f"the deployment option {conf} lacks hardware of CIM resource types {sorted(missing)}")
    return problems


def check_ova(ova: Path) -> list[str]:
    """Everything wrong with an OVA: member order, descriptor, manifest checksums, the VMDK as qemu-img reads it."""
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(ova) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        if not names or not names[0].endswith(".ovf"):
            return [f"the first file is {names[:1]}, not the .ovf descriptor"]
        if len(names) < 2 or not names[1].endswith(".mf"):
            problems.append("the manifest (.mf) does not follow the descriptor")
        for m in members:
            if not m.isfile() or "/" in m.name or m.name.startswith("."):
                return [*problems, f"unexpected member {m.name!r}"]
        tar.extractall(tmp, filter="data")
        folder = Path(tmp)
        sizes = {n: (folder / n).stat().st_size for n in names}
        problems += check_descriptor((folder / names[0]).read_bytes(), sizes)
        manifest = {}
        for line in (folder / names[1]).read_text().splitlines() if len(names) > 1 else []:
            match = re.fullmatch(r"SHA256\((.+)\)= ([0-9a-f]{64})", line.strip())
            if not match:
                problems.append(f"manifest line not understood: {line!r}")
                continue
            manifest[match[1]] = match[2]
        for name in names[:1] + names[2:]:
            if name not in manifest:
                problems.append(f"the manifest has no checksum of {name}")
            elif manifest[name] != _sha256(folder / name):
                problems.append(f"the SHA-256 of {name} does not match the manifest")
        for name in (n for n in names if n.endswith(".vmdk")):
            info = subprocess.run(["qemu-img", "info", "--output=json", str(folder / name)], capture_output=True,
                                  text=True)
            if info.returncode != 0:
                problems.append(f"qemu-img cannot read {name}: {info.stderr.strip()}")
                continue
            data = json.loads(info.stdout)
            create = data.get("format-specific", {}).get("data", {}).get("create-type")
            if data.get("format") != "vmdk" or create != "streamOptimized":
                problems.append(f"{name} is {data.get('format')} {create}, not a streamOptimized VMDK")
    return problems
