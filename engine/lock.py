"""One engine per data directory: the lock the daemon holds for its whole life (and that an offline
command such as ``godwit appliance restore`` tries, to know that no engine runs there)."""

from __future__ import annotations

import fcntl
import os

from engine.config import DataDir
from engine.errors import DataDirInUse


class EngineLock:
    """One engine per data directory: an exclusive ``flock`` held for the daemon's life."""

    def __init__(self, data_dir: DataDir) -> None:
        self._path = data_dir.lock_file
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataDirInUse(f"Another Godwit engine (pid {pid}) is already running for {self._path.parent}. "
                               "Stop it first, or use another --data-dir.") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
