"""The fixed VHD format an exported point can be written in: a raw image, padded to whole sectors,
followed by one 512-byte footer (Microsoft's Virtual Hard Disk Image Format Specification)."""

from __future__ import annotations

import struct
import time
import uuid

SECTOR = 512
_VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z


def padded_size(size: int) -> int:
    """A raw image of ``size`` bytes rounded up to whole sectors, as a VHD holds it."""
    return -(-size // SECTOR) * SECTOR


def vhd_geometry(size: int) -> tuple[int, int, int]:
    """Cylinders, heads, sectors per track, as the VHD specification computes them."""
    total = min(size // SECTOR, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cyl_heads = total // spt
    else:
        spt = 17
        cyl_heads = total // spt
        heads = max(4, (cyl_heads + 1023) // 1024)
        if cyl_heads >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cyl_heads = total // spt
        if cyl_heads >= heads * 1024:
            spt, heads = 63, 16
            cyl_heads = total // spt
    return cyl_heads // heads, heads, spt


def vhd_footer(size: int, *, now: float | None = None, unique_id: bytes | None = None) -> bytes:
    """The 512-byte footer that turns a raw image of ``size`` bytes (a sector multiple) into a fixed VHD."""
    cyl, heads, spt = vhd_geometry(size)
    fields = struct.pack(
        ">8sIIQI4sI4sQQHBBII16sB",
        b"conectix", 2, 0x00010000, 0xFFFFFFFFFFFFFFFF, int((now or time.time()) - _VHD_EPOCH) & 0xFFFFFFFF,
        b"win ", 0x000A0000, b"Wi2k", size, size, cyl, heads, spt, 2, 0, unique_id or uuid.uuid4().bytes, 0,
    )
    footer = fields + bytes(SECTOR - len(fields))
    checksum = ~sum(footer) & 0xFFFFFFFF
    return footer[:64] + struct.pack(">I", checksum) + footer[68:]
