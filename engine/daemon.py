"""``godwit serve``: the engine daemon. One engine per data directory (an exclusive lock held for the
daemon's life), in the foreground until SIGTERM or SIGINT, or detached in the background.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import NoReturn

from engine.appliance import Engine
from engine.config import EngineConfig
from engine.errors import ConfigError, EngineError, from_code
from engine.lock import EngineLock

log = logging.getLogger(__name__)


def serve(config: EngineConfig, on_ready: Callable[[str], None] | None = None) -> None:
    """Run the engine in the foreground until SIGTERM or SIGINT. Raises :class:`EngineError` on bad set-up."""
    from engine import logs

    data_dir = config.data_dir
    os.umask(0o077)  # everything the engine writes is the admin's alone
    try:
        data_dir.create()
    except OSError as exc:
        raise ConfigError(f"Cannot create the data directory {data_dir.root}: {exc.strerror}.") from exc
    if len(str(data_dir.admin_socket)) > 100:
        raise ConfigError(f"The data directory path {data_dir.root} is too long for a Unix socket; "
                          "use a shorter --data-dir.")
    lock = EngineLock(data_dir)
    lock.acquire()
    logs.to_file(data_dir.logs / "engine.log")
    log.info("engine.starting pid=%s data_dir=%s", os.getpid(), data_dir.root)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Engine(config).run(stop, on_ready or (lambda line: print(line, flush=True)))

    try:
        asyncio.run(main())
    finally:
        lock.release()


def serve_in_background(config: EngineConfig, *, timeout: float = 50.0) -> str:
    """Start the engine as a daemon (double fork, own session) and return once it serves.

    Returns the engine's ready line; raises the :class:`EngineError` that stopped its start-up.
    Used by the console for the embedded engine, and by admins as ``godwit serve --background``.
    """
    import select

    read_end, write_end = os.pipe()
    first = os.fork()
    if first == 0:  # pragma: no cover - runs in the forked children
        os.close(read_end)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        _run_daemon(config, write_end)
    os.close(write_end)
    os.waitpid(first, 0)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = pipe.read(4096)
            if not chunk:
                break
            chunks.append(chunk)
    text = b"".join(chunks).decode(errors="replace").strip()
    if text.startswith("ready "):
        return text.removeprefix("ready ")
    if text.startswith("error "):
        code, _, message = text.removeprefix("error ").partition(" ")
        raise from_code(code, message)
    raise EngineError(f"The engine did not start within {timeout:.0f} s; see {config.data_dir.logs / 'engine.log'}.")


def _run_daemon(config: EngineConfig, report_fd: int) -> NoReturn:  # pragma: no cover - forked child
    """The daemon's body: detach from the terminal, serve, and report readiness or the start-up error."""
    os.chdir("/")  # hold no directory busy, and import nothing from wherever we were started
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    code = 0
    try:
        config.data_dir.logs.mkdir(parents=True, exist_ok=True)
        out = os.open(config.data_dir.logs / "engine.out", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(out, 1)
        os.dup2(out, 2)
    except OSError:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)

    def report(line: str) -> None:
        nonlocal report_fd
        if report_fd >= 0:
            os.write(report_fd, line.encode())
            os.close(report_fd)
            report_fd = -1

    try:
        serve(config, on_ready=lambda line: report(f"ready {line}"))
    except EngineError as exc:
        report(f"error {exc.code} {exc.message}")
        code = 1
    except BaseException as exc:
        log.exception("engine.crashed")
        report(f"error engine-error The engine failed to start ({type(exc).__name__}); see its log.")
        code = 1
    os._exit(code)
