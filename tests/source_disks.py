"""Real source disks for consistency tests: loop devices with file systems mounted under the test's own
temporary directory, and writers that run as separate processes while points are taken.

Nothing here touches a file system the test did not create: every mount is inside ``root`` and is
unmounted (and its loop device detached) when the test ends.

    python -m tests.source_disks ordered X_FILE Y_FILE       counter to X, fsync, same counter to Y, fsync
    python -m tests.source_disks sqlite DB_FILE              insert rows in WAL mode, each committed
    python -m tests.source_disks busy PATH                   4 KiB writes without pause (O_DIRECT on a device)
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MiB = 1024 * 1024
COUNTER = struct.Struct("<Q")


def _run(*argv: str) -> str:
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res.stdout.strip()


def need_loop_devices() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices and mounts")
    for tool in ("losetup", "mkfs.ext4", "mount"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            pytest.skip(f"{tool} is not installed")


@contextlib.contextmanager
def loop_device(image: Path, size: int) -> Iterator[str]:
    """A loop device over a sparse image file of ``size`` bytes."""
    with open(image, "wb") as f:
        f.truncate(size)
    try:
        device = _run("losetup", "--find", "--show", str(image))
    except RuntimeError as exc:
        pytest.skip(f"no loop device here ({exc})")
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], capture_output=True)


@contextlib.contextmanager
def mounted(device_or_image: str | Path, mount_point: Path, *, options: str = "") -> Iterator[Path]:
    mount_point.mkdir(parents=True, exist_ok=True)
    argv = ["mount", *(["-o", options] if options else []), str(device_or_image), str(mount_point)]
    _run(*argv)
    try:
        yield mount_point
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)  # a writer still closing its files
        else:
            subprocess.run(["umount", "--lazy", str(mount_point)], capture_output=True)


def mkfs(kind: str, target: str | Path) -> None:
    if kind == "ext4":
        _run("mkfs.ext4", "-q", "-F", str(target))
    elif kind == "xfs":
        if subprocess.run(["which", "mkfs.xfs"], capture_output=True).returncode != 0:
            pytest.skip("mkfs.xfs is not installed (xfsprogs)")
        _run("mkfs.xfs", "-q", "-f", str(target))
    else:
        raise ValueError(kind)


@contextlib.contextmanager
def filesystem_on_loop(root: Path, name: str, *, size: int = 64 * MiB, fs: str = "ext4") -> Iterator[tuple[str, Path]]:
    """(device, mount point): a loop device with a fresh file system mounted under ``root``."""
    with loop_device(root / f"{name}.img", size) as device:
        mkfs(fs, device)
        with mounted(device, root / f"{name}-mnt") as mnt:
            yield device, mnt


@contextlib.contextmanager
def writer(mode: str, *paths: Path | str) -> Iterator[subprocess.Popen[str]]:
    """A writer process (see the module's doc) that runs until the block ends."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.source_disks", mode, *map(str, paths)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Yield only once it has written: a point taken while Python still starts is of an idle disk.
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready and proc.stdout.readline() == "writing\n", f"the {mode} writer did not start"
        yield proc
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode in (0, -15), f"writer failed ({proc.returncode}): {err}"


def read_counter(path: Path, offset: int = 0) -> int:
    """The counter at ``offset`` of ``path``; 0 if the file did not exist yet."""
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read(COUNTER.size)
    return COUNTER.unpack(raw)[0] if len(raw) == COUNTER.size else 0


def change_device(device: str, fraction: float, *, seed: int) -> int:
    """Random 4 KiB-1 MiB writes to ``fraction`` of a device, made durable; returns the bytes written."""
    import random

    rng = random.Random(seed)
    fd = os.open(device, os.O_WRONLY)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        changed = 0
        while changed < size * fraction:
            n = rng.randint(1, 256) * 4096
            os.pwrite(fd, rng.randbytes(n), rng.randrange(0, size - n) // 4096 * 4096)
            changed += n
        os.fsync(fd)
    finally:
        os.close(fd)
    return changed


def sectors_read(device: str) -> int:
    """Sectors read from a block device so far (its /sys/block stat)."""
    return int(Path(f"/sys/block/{os.path.basename(device)}/stat").read_text().split()[2])


# --- the writers, run as ``python -m tests.source_disks MODE ...`` -------------------------------------
def _started() -> bool:
    """Tell ``writer`` that the first write is done."""
    print("writing", flush=True)
    return True


def _ordered(x: str, y: str) -> None:
    """Whatever is durable in Y was durable in X first: in any crash-consistent image Y <= X.
    Each is ``PATH`` or ``PATH@OFFSET`` (a position inside a disk image)."""
    (px, _, ox), (py, _, oy) = x.partition("@"), y.partition("@")
    fx = os.open(px, os.O_RDWR | os.O_CREAT, 0o644)
    fy = os.open(py, os.O_RDWR | os.O_CREAT, 0o644)
    n = 0
    while True:
        n += 1
        os.pwrite(fx, COUNTER.pack(n), int(ox or 0))
        os.fsync(fx)
        os.pwrite(fy, COUNTER.pack(n), int(oy or 0))
        os.fsync(fy)
        if n == 1:
            _started()


def _busy(path: str) -> None:
    """Never a quiet millisecond: what no freeze can stop (a raw device, a file on ext4)."""
    import mmap
    import random
    import stat

    device = stat.S_ISBLK(os.stat(path).st_mode)
    fd = os.open(path, os.O_WRONLY | (os.O_DIRECT if device else 0))
    buf = mmap.mmap(-1, 4096)
    rng = random.Random(1)
    started = False
    while True:
        buf[:] = rng.randbytes(4096)
        os.pwrite(fd, buf, rng.randrange(256) * 65536)
        if not started:
            started = _started()


def _sqlite(db: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, payload BLOB)")
    started = False
    while True:
        conn.execute("BEGIN")
        for _ in range(10):
            conn.execute("INSERT INTO t (payload) VALUES (randomblob(300))")
        conn.execute("COMMIT")
        if not started:
            started = _started()
        time.sleep(0.002)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    try:
        if mode == "ordered":
            _ordered(*args)
        elif mode == "busy":
            _busy(args[0])
        else:
            _sqlite(Path(args[0]))
    except KeyboardInterrupt:
        pass


@contextlib.contextmanager
def small_fs(root: Path, name: str, size: int, *, inodes: int = 1024) -> Iterator[Path]:
    """A fresh ext4 of ``size`` bytes with about ``inodes`` inodes, mounted under ``root``; no blocks kept
    for root (``-m 0``), so what df shows as available is what any writer gets."""
    need_loop_devices()
    with loop_device(root / f"{name}.img", size) as device:
        res = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-b", "4096", "-N", str(inodes), device],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        with mounted(device, root / name) as mnt:
            yield mnt


def df(path: Path) -> tuple[int, int]:
    """(free, size) as df counts them."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    return free, (st.f_blocks - st.f_bfree) * st.f_frsize + free


class Balloon:
    """A file of the test's own that takes the free space of its file system (allocated, not written)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.touch()

    def __repr__(self) -> str:
        return f"<Balloon {self.path} size={self.path.stat().st_size} free={df(self.path.parent)[0]}>"

    def leave(self, free: int) -> None:
        """Grow or shrink so that about ``free`` bytes stay free."""
        now, _ = df(self.path.parent)
        size = self.path.stat().st_size
        if now < free:
            os.truncate(self.path, max(0, size - (free - now)))
        elif now > free:
            self._grow(size, now - free)

    def leave_share(self, share: float) -> None:
        self.leave(int(df(self.path.parent)[1] * share))

    def fill(self) -> None:
        """Take every free block."""
        self._grow(self.path.stat().st_size, None)

    def _grow(self, offset: int, amount: int | None) -> None:
        fd = os.open(self.path, os.O_WRONLY)
        try:
            for chunk in (MiB, 64 * 1024, 4096):
                while amount is None or amount >= chunk:
                    try:
                        os.posix_fallocate(fd, offset, chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
                    offset += chunk
                    if amount is not None:
                        amount -= chunk
            os.fsync(fd)
        finally:
            os.close(fd)

    def pop(self) -> None:
        self.path.unlink()
