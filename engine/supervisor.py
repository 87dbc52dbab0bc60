"""Agent supervision: the engine supervisor runs each appliance agent as a child process, restarts one
that exits or hangs (with backoff), and records each restart as an event.

:class:`Launcher` is the one place that decides which program an agent runs and which listening
socket it serves: the supervisor binds the ports itself and hands each bound socket to the agent
that serves it, so bind errors are reported once at start and a restarted agent takes over the
same socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from engine import __version__
from engine.agents import VERSION_ENV, AgentSpec
from engine.backoff import Backoff
from engine.config import DataDir
from engine.errors import EngineError
from engine.events import EventHub
from engine.records import AgentState, AgentStatus
from engine.updater.store import AgentStore

log = logging.getLogger(__name__)

#: Restart delays of a crashed agent. The step goes back to the first after the agent ran this long,
#: and one step down for every DECAY seconds it ran: backoff is for crash loops, not for one crash.
RESTART_BACKOFF = Backoff((0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0))
HEALTHY_RUN = 60.0
DECAY = 10.0
#: An agent whose event loop has not touched its alive file for this long is killed and restarted
#: (``GODWIT_AGENT_HUNG_AFTER`` overrides it: tests that stop an agent on purpose raise it).
HUNG_AFTER = 20.0
STOP_GRACE = 5.0


@dataclass(frozen=True)
class Launch:
    """How an agent is started: its command line and the listening sockets it inherits."""

    argv: tuple[str, ...]
    listen: tuple[socket.socket, ...] = ()
    #: The installed version it runs, and the directory its code is imported from (None: the engine's own).
    version: str = __version__
    code_dir: str | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[VERSION_ENV] = self.version
        if self.code_dir is not None:  # before the engine's own install on the import path
            env["PYTHONPATH"] = self.code_dir
        return env


class Launcher:
    """Decides, at every start of an agent, its program and its listening sockets."""

    def __init__(self, data_dir: DataDir, sockets: dict[str, tuple[socket.socket, ...]]) -> None:
        self._data_dir = data_dir
        self._store = AgentStore(data_dir.agents)
        #: The bound listening sockets by port name ("management", "data"): usually one each; two management
        #: sockets while the management port moves (the new one first). :mod:`engine.ports` changes them.
        self.sockets = sockets

    def __repr__(self) -> str:
        ports = {name: [s.getsockname()[1] for s in socks if s.fileno() >= 0] for name, socks in self.sockets.items()}
        return f"<Launcher ports={ports}>"

    def launch(self, spec: AgentSpec) -> Launch:
        argv = [sys.executable, "-P", "-m", spec.module, "--data-dir", str(self._data_dir.root),
                "--parent-pid", str(os.getpid())]
        listen = self.sockets.get(spec.port, ()) if spec.port else ()
        for sock in listen:
            argv += ["--listen-fd", str(sock.fileno())]
        installed = self._store.current(spec.name)  # read at every start: an update switches it
        if installed is None:
            return Launch(tuple(argv), listen)
        return Launch(tuple(argv), listen, version=installed.version, code_dir=str(installed.path))


class AgentProcess:
    """One appliance agent child process, restarted with backoff when it exits on its own."""

    def __init__(self, spec: AgentSpec, data_dir: DataDir, launcher: Launcher, hub: EventHub,
                 on_change: Callable[[], None]) -> None:
        self.spec = spec
        self._data_dir = data_dir
        self._launcher = launcher
        self._hub = hub
        self._on_change = on_change
        self._proc: asyncio.subprocess.Process | None = None
        #: The installed version of the process that runs (or ran last).
        self.version = spec.version
        self._stopping = False
        #: Why the agent is being restarted on purpose (see :meth:`restart`), what to do before it starts
        #: again, and who waits for that; until it has exited.
        self._planned: tuple[str, Callable[[], None] | None, asyncio.Future[None]] | None = None
        self._restart_lock = asyncio.Lock()
        self._spawning = False
        self.state: AgentState = "starting"
        self.restarts = 0
        #: How the last process ended on its own, as a phrase ("exited with code 3"), for the health check.
        self.last_exit: str | None = None
        self._restarted_at: list[float] = []  # monotonic times of the restarts in the last hour
        self._hung_after = float(os.environ.get("GODWIT_AGENT_HUNG_AFTER", HUNG_AFTER))

    def __repr__(self) -> str:
        return f"<AgentProcess {self.spec.name} state={self.state} pid={self.pid} restarts={self.restarts}>"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    def status(self) -> AgentStatus:
        hour_ago = time.monotonic() - 3600
        return AgentStatus(name=self.spec.name, version=self.version, state=self.state,
                           pid=self.pid, restarts=self.restarts,
                           restarts_last_hour=sum(1 for t in self._restarted_at if t > hour_ago))

    def _set_state(self, state: AgentState) -> None:
        self.state = state
        self._on_change()

    async def _spawn(self) -> asyncio.subprocess.Process:
        launch = self._launcher.launch(self.spec)
        fds = tuple(sock.fileno() for sock in launch.listen)
        out: IO[bytes] = open(self._data_dir.logs / f"{self.spec.name}.out", "ab")  # noqa: SIM115
        self.version = launch.version
        try:
            return await asyncio.create_subprocess_exec(*launch.argv, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                                                        stderr=out, pass_fds=fds, env=launch.env())
        finally:
            out.close()

    async def run(self) -> None:
        """Keep the agent running until :meth:`stop`. Never ends on an error of its own: a failed
        spawn or a failed event write is logged and retried, or the agent would silently stay down."""
        attempt = 0
        while not self._stopping:
            try:
                attempt = await self._run_once(attempt)
            except Exception:
                log.exception("agent.supervise-failed name=%s", self.spec.name)
                self._set_state("restarting")
                await asyncio.sleep(RESTART_BACKOFF.longest)
        self._set_state("stopped")

    async def _run_once(self, attempt: int) -> int:
        """Start the agent, wait for it to exit, back off. Returns the next backoff step."""
        started = time.monotonic()
        self._spawning = True
        try:
            self._proc = await self._spawn()
        finally:
            self._spawning = False
        if self._stopping or self._planned is not None:  # stop() or restart() came while we were starting it:
            self._proc.terminate()  # it may have been given the sockets of before
            await self._proc.wait()
            self._settle_planned()
            return attempt
        self._set_state("running")
        log.info("agent.started name=%s pid=%s", self.spec.name, self._proc.pid)
        hung = await self._wait_or_hang(self._proc)
        code = self._proc.returncode or 0
        if self._stopping or self._planned is not None:  # stopped, or restarted on purpose: at once, not a crash
            self._settle_planned()
            return attempt
        ran = time.monotonic() - started
        attempt = 0 if ran >= HEALTHY_RUN else max(0, attempt - int(ran // DECAY))
        delay = RESTART_BACKOFF.delay(attempt)
        self.restarts += 1
        now = time.monotonic()
        self._restarted_at = [t for t in self._restarted_at if t > now - 3600] + [now]
        self._set_state("restarting")
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        if hung:
            how = f"stopped responding for {self._hung_after:.0f} s and was killed"
        self.last_exit = how
        try:
            self._hub.record("warning", "agent-restarted",
                             f"Appliance agent {self.spec.name} {how}; restarting it in {delay:g} s. "
                             f"Its log is {self._data_dir.logs / (self.spec.name + '.log')}.")
        except EngineError as exc:  # e.g. the state database's disk is full: the restart matters more
            log.warning("agent.restart-event-lost name=%s: %s", self.spec.name, exc)
        await asyncio.sleep(delay)
        return attempt + 1

    async def _wait_or_hang(self, proc: asyncio.subprocess.Process) -> bool:
        """Wait for the agent to exit; kill it if its event loop stops proving it runs (stopped,
        wedged, swapped to death) for HUNG_AFTER seconds. True if it was killed for that."""
        alive = self._data_dir.alive_file(self.spec.name)
        seen, changed = None, time.monotonic()  # monotonic: a wall clock that jumps is not a hang
        exited = asyncio.ensure_future(proc.wait())
        while not (await asyncio.wait({exited}, timeout=1.0))[0]:
            try:
                mtime: float | None = alive.stat().st_mtime
            except FileNotFoundError:  # never created (e.g. a full disk): nothing to judge by
                mtime = None
            if mtime != seen:
                seen, changed = mtime, time.monotonic()
            elif mtime is not None and time.monotonic() - changed > self._hung_after and not self._stopping:
                log.warning("agent.hung name=%s pid=%s", self.spec.name, proc.pid)
                proc.kill()
                await exited
                return True
        return False

    async def restart(self, reason: str, *, between: Callable[[], None] | None = None) -> None:
        """Stop the agent (as :meth:`stop` does) and start it again at once, e.g. to serve other sockets.
        ``between`` runs once the old process has exited and before the new one starts (e.g. to bind a
        port the old one held); its exception is raised here. Returns before the new process starts.
        Overlapping calls (a port change during an update) run one after the other."""
        async with self._restart_lock:
            proc = self._proc
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._spawning and not self._stopping:  # being started, maybe with the sockets of before: once it
                self._planned = (reason, between, done)  # runs, :meth:`_run_once` stops it and starts it again
            elif self._stopping or proc is None or proc.returncode is not None:
                _settle(done, between)  # not running: its next start takes the launcher's sockets anyway
            else:
                self._planned = (reason, between, done)
                await self._terminate(proc)
            await done

    def _settle_planned(self) -> None:
        """The agent exited for a planned restart (or a stop): run what comes between, wake whoever waits."""
        if self._planned is not None:
            reason, between, done = self._planned
            self._planned = None
            log.info("agent.restarted name=%s reason=%s", self.spec.name, reason)
            if not self._stopping:
                self._set_state("restarting")
            _settle(done, between)

    async def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        await self._terminate(proc)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        proc.terminate()
        try:
            async with asyncio.timeout(STOP_GRACE):
                await proc.wait()
        except TimeoutError:
            log.warning("agent.kill name=%s reason=no exit %ss after SIGTERM", self.spec.name, STOP_GRACE)
            proc.kill()
            await proc.wait()


def _settle(done: asyncio.Future[None], between: Callable[[], None] | None) -> None:
    """Run ``between`` (if any) and give its outcome to whoever waits on ``done``."""
    try:
        if between is not None:
            between()
    except Exception as exc:
        done.set_exception(exc)
    else:
        done.set_result(None)
