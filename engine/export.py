"""Export a recovery point of a disk as a raw image or a fixed VHD, streamed over the admin API."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
import time
import uuid
from typing import TYPE_CHECKING

from aiohttp import web

from engine.errors import BadInput, NotFound
from engine.protocol import BLOCK
from engine.storage import Storage, replica

if TYPE_CHECKING:
    from engine.inventory import Inventory
    from engine.replication import Replication

SECTOR = 512
_VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z
_CHUNK_BLOCKS = 64


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


async def stream_export(request: web.Request, inventory: Inventory, replication: Replication,
                        storage: Storage) -> web.StreamResponse:
    row = inventory.row(request.match_info["name"])
    fmt = request.query.get("format", "raw")
    if fmt not in ("raw", "vhd"):
        raise BadInput(f"Format {fmt!r} is not raw or vhd.")
    disks = row.disks
    try:
        disk = int(request.query.get("disk", "0"))
        size = disks[disk].size
    except (ValueError, IndexError) as exc:
        raise BadInput(f"{row.name} has disks 0 to {len(disks) - 1}.") from exc
    points = replication.points(row)
    if not points:
        raise NotFound(f"{row.name} has no recovery point yet: wait for its initial replication to finish.")
    wanted = request.query.get("point", "latest")
    if wanted == "latest":
        point = points[-1]
    else:
        point = next((p for p in points if str(p.id) == wanted), None)  # type: ignore[assignment]
        if point is None:
            raise NotFound(f"{row.name} has no recovery point {wanted}; "
                           f"`godwit vm points {row.name}` lists them.")
    copy = replica(row.server_id, row.epoch or 0)
    loop = asyncio.get_running_loop()
    with contextlib.ExitStack() as held:
        # The log processor applies nothing to this disk (it skips it) while the export reads it; the
        # disk's metadata is read only once the lock is held, so the point cannot be pruned meanwhile.
        await loop.run_in_executor(None, held.enter_context, storage.target_disk(copy, disk, size).locked())
        target = storage.target_disk(copy, disk, size)
        if point.id not in {p.id for p in target.points()}:
            raise NotFound(f"Recovery point {point.id} of {row.name} was just pruned; export a newer one.")
        padded = -(-target.size // SECTOR) * SECTOR
        total = padded + (SECTOR if fmt == "vhd" else 0)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream", "X-Godwit-Size": str(total),
                                           "X-Godwit-Point": str(point.id)})
        resp.content_length = total
        await resp.prepare(request)
        chunks = target.read_point(point.id, BLOCK)
        zero = bytes(BLOCK)
        while True:
            batch = await loop.run_in_executor(None, lambda: list(itertools.islice(chunks, _CHUNK_BLOCKS)))
            if not batch:
                break
            for off, data in batch:
                await resp.write(data if data is not None else zero[:min(BLOCK, target.size - off)])
        if padded > target.size:
            await resp.write(bytes(padded - target.size))
        if fmt == "vhd":
            await resp.write(vhd_footer(padded))
    await resp.write_eof()
    return resp
