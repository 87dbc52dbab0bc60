"""Files: writing them so that a crash or power cut leaves either the old or the new content, never a
mix; finding where a sparse file holds data."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new link in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Make every file and folder under ``root`` durable (before a rename publishes the tree)."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for filename in filenames:
            fd = os.open(os.path.join(dirpath, filename), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def write_atomically(path: Path, data: bytes | bytearray | memoryview, *, mode: int = 0o600) -> None:
    """Write-to-temp, fsync, rename, fsync the directory: the file is whole or absent."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def data_extents(fd: int, start: int, size: int, *, block: int) -> list[tuple[int, int]] | None:
    """``block``-aligned data extents of ``[start, size)`` (holes need not be read); None if the file
    system cannot tell holes (block devices)."""
    out: list[tuple[int, int]] = []
    pos = start
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                break
            return None
        if data >= size:
            break
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        lo = data // block * block
        hi = min(size, -(-hole // block) * block)
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
        pos = hole
    return out
