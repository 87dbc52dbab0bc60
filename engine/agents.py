"""Appliance agents: the processes the supervisor runs, and the start-up they share.

Each agent lives in its own package (``engine/manager``, later ``engine/process_server`` and
``engine/log_processor``) with a ``__main__`` that calls :func:`run_agent`. An agent dies with
its supervisor (``PR_SET_PDEATHSIG``), so a ``kill -9`` of the engine leaves no orphan holding a
port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import __version__, logs
from engine.client import UnixJsonClient
from engine.config import DataDir
from engine.errors import ConfigError
from engine.files import write_atomically
from engine.identity import ApplianceIdentity
from engine.links.agent import AGENT_LINK
from engine.secrets import SecretStore

#: An agent touches its alive file this often (seconds) while its event loop runs.
ALIVE_EVERY = 1.0

#: The environment variable in which the supervisor tells an agent which installed version it runs.
VERSION_ENV = "GODWIT_AGENT_VERSION"

#: The soft limit of open files an agent raises itself to, at most (more connections would only cost memory).
MAX_OPEN_FILES = 65536


@dataclass(frozen=True)
class AgentSpec:
    """What the supervisor needs to know to run an agent."""

    name: str
    module: str
    version: str
    #: The bound port the supervisor hands to the agent, if any.
    port: str | None = None


AGENTS: tuple[AgentSpec, ...] = (
    AgentSpec(name="replication-manager", module="engine.manager", version=__version__, port="management"),
    AgentSpec(name="process-server", module="engine.process_server", version=__version__, port="data"),
    AgentSpec(name="log-processor", module="engine.log_processor", version=__version__),
)


@dataclass(frozen=True)
class AgentContext:
    """What an agent is started with. An agent is only ever started by the engine supervisor: the
    ``require_*`` methods say so in one line when something it provides is missing."""

    name: str
    data_dir: DataDir
    #: The listening sockets the supervisor handed over (the management port has two while it moves).
    listen_fds: tuple[int, ...]
    stop: asyncio.Event

    def _not_supervised(self) -> ConfigError:
        return ConfigError(f"{self.name} must be started by the engine supervisor (`godwit serve`).")

    def require_appliance(self) -> tuple[ApplianceIdentity, SecretStore]:
        """The appliance's identity and secret store, which the supervisor created."""
        ident = ApplianceIdentity.load(self.data_dir)
        if ident is None:
            raise self._not_supervised()
        return ident, ident.secrets(self.data_dir)

    def require_listen_sockets(self) -> list[socket.socket]:
        """The bound listening sockets the supervisor handed over (at least one)."""
        if not self.listen_fds:
            raise self._not_supervised()
        socks = [socket.socket(fileno=fd) for fd in self.listen_fds]
        for sock in socks:
            sock.setblocking(False)
        return socks

    def ready(self) -> None:
        """Say that this agent serves its port or does its work: the health check of an update waits for it.
        Idempotent; a failure to write is logged (the agent works on, an update of it would roll back)."""
        try:
            write_atomically(self.data_dir.ready_file(self.name),
                         json.dumps({"pid": os.getpid(), "version": agent_version()}).encode())
        except OSError as exc:
            logging.getLogger(__name__).warning("agent.ready-not-written name=%s: %s", self.name, exc)

    def supervisor_link(self) -> UnixJsonClient:
        """A client of the agent link (close it with ``aclose``)."""
        return UnixJsonClient(self.data_dir.agent_socket, link=AGENT_LINK,
                              what="The engine supervisor is not reachable.")


def agent_version() -> str:
    """The installed version this agent runs (the engine's own version when run outside a version directory)."""
    return os.environ.get(VERSION_ENV) or __version__


def _die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:  # pragma: no cover - not Linux/glibc
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(0)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards the hard limit (a service starts with 1,024, which a few hundred
    held connections exhaust); never lowers it. Returns the (soft, hard) limits now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            logging.getLogger(__name__).warning("agent.open-files-limit soft=%s hard=%s not raised: %s", soft,
                                                hard, exc)
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def _prove_alive(path: Path) -> None:
    """Touch ``path`` every ALIVE_EVERY seconds for as long as this event loop runs (a stopped or
    wedged agent stops touching it)."""
    while True:
        with contextlib.suppress(OSError):
            path.touch()
        await asyncio.sleep(ALIVE_EVERY)


def run_agent(name: str, main: Callable[[AgentContext], Awaitable[None]]) -> None:
    """Entry point of an agent process: parse the supervisor's arguments, log to a file, run ``main``."""
    parser = argparse.ArgumentParser(prog=f"godwit-{name}")
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--listen-fd", type=int, action="append", default=[])
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args()
    _die_with_parent(args.parent_pid)
    data_dir = DataDir(args.data_dir)
    logs.to_file(data_dir.logs / f"{name}.log")
    log = logging.getLogger(f"engine.{name}")
    soft, hard = raise_open_files_limit()  # before anything derives a connection budget from it

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        out_of_memory = False

        def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            nonlocal out_of_memory
            if isinstance(context.get("exception"), MemoryError):  # in a transport or callback: no traceback
                out_of_memory = True
                stop.set()
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(on_loop_error)
        alive = asyncio.create_task(_prove_alive(data_dir.alive_file(name)))
        try:
            await main(AgentContext(name=name, data_dir=data_dir, listen_fds=tuple(args.listen_fd), stop=stop))
        finally:
            alive.cancel()
        if out_of_memory:
            raise MemoryError

    log.info("agent.started name=%s pid=%s version=%s from=%s open_files=%s hard=%s", name, os.getpid(),
             agent_version(), Path(__file__).parent, soft, hard)
    try:
        asyncio.run(runner())
    except MemoryError:  # e.g. an address-space limit: a fresh process (the supervisor starts one) does better
        log.error("agent.failed name=%s: out of memory; exiting so that the supervisor restarts it", name)
        sys.exit(1)
    except Exception:
        log.exception("agent.failed name=%s", name)
        sys.exit(1)
    log.info("agent.stopped name=%s", name)
