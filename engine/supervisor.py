"""``godwit serve``: the engine supervisor.

It owns the data directory (one engine per directory, enforced by a lock), the state database,
the appliance identity and PKI, and the ports. It binds the ports itself and hands each bound
socket to the appliance agent that serves it, so bind errors are reported once at start and a
restarted agent takes over the same socket. Agents that exit are restarted with backoff, and each
crash is an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, NoReturn

from aiohttp import web

from engine import __version__, diskspace
from engine.admin_api import make_admin_app, make_agent_app
from engine.agents import AGENTS, AgentSpec
from engine.config import DEFAULT_DATA_PORT, DEFAULT_MANAGEMENT_PORT, DataDir, EngineConfig
from engine.errors import ConfigError, DataDirInUse, EngineError, PortError, from_code
from engine.events import EventHub
from engine.identity import ApplianceIdentity, create_secrets_and_pki
from engine.inventory import Inventory
from engine.listener import bind_port
from engine.records import AgentStatus, DiskLevel, EngineStatus, SetupInfo, Severity, to_json
from engine.replication import Replication
from engine.state import StateDB

log = logging.getLogger(__name__)

#: Restart delays of a crashed agent. The step goes back to the first after the agent ran this long,
#: and one step down for every DECAY seconds it ran: backoff is for crash loops, not for one crash.
BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
HEALTHY_RUN = 60.0
DECAY = 10.0
#: An agent whose event loop has not touched its alive file for this long is killed and restarted
#: (``GODWIT_AGENT_HUNG_AFTER`` overrides it: tests that stop an agent on purpose raise it).
HUNG_AFTER = 20.0
STOP_GRACE = 5.0


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


class AgentProcess:
    """One appliance agent child process, restarted with backoff when it exits on its own."""

    def __init__(self, spec: AgentSpec, data_dir: DataDir, listen: socket.socket | None, hub: EventHub,
                 on_change: Callable[[], None]) -> None:
        self.spec = spec
        self._data_dir = data_dir
        self._listen = listen
        self._hub = hub
        self._on_change = on_change
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False
        self.state: str = "starting"
        self.restarts = 0
        self._restarted_at: list[float] = []  # monotonic times of the restarts in the last hour
        self._hung_after = float(os.environ.get("GODWIT_AGENT_HUNG_AFTER", HUNG_AFTER))

    def __repr__(self) -> str:
        return f"<AgentProcess {self.spec.name} state={self.state} pid={self.pid} restarts={self.restarts}>"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    def status(self) -> AgentStatus:
        hour_ago = time.monotonic() - 3600
        return AgentStatus(name=self.spec.name, version=self.spec.version, state=self.state,  # type: ignore[arg-type]
                           pid=self.pid, restarts=self.restarts,
                           restarts_last_hour=sum(1 for t in self._restarted_at if t > hour_ago))

    def _set_state(self, state: str) -> None:
        self.state = state
        self._on_change()

    async def _spawn(self) -> asyncio.subprocess.Process:
        cmd = [sys.executable, "-P", "-m", self.spec.module, "--data-dir", str(self._data_dir.root),
               "--parent-pid", str(os.getpid())]
        fds: tuple[int, ...] = ()
        if self._listen is not None:
            cmd += ["--listen-fd", str(self._listen.fileno())]
            fds = (self._listen.fileno(),)
        out: IO[bytes] = open(self._data_dir.logs / f"{self.spec.name}.out", "ab")  # noqa: SIM115
        try:
            return await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                                                        stderr=out, pass_fds=fds)
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
                await asyncio.sleep(BACKOFF[-1])
        self._set_state("stopped")

    async def _run_once(self, attempt: int) -> int:
        """Start the agent, wait for it to exit, back off. Returns the next backoff step."""
        started = time.monotonic()
        self._proc = await self._spawn()
        if self._stopping:  # stop() came while we were starting it
            self._proc.terminate()
            await self._proc.wait()
            return attempt
        self._set_state("running")
        log.info("agent.started name=%s pid=%s", self.spec.name, self._proc.pid)
        hung = await self._wait_or_hang(self._proc)
        code = self._proc.returncode or 0
        if self._stopping:
            return attempt
        ran = time.monotonic() - started
        attempt = 0 if ran >= HEALTHY_RUN else max(0, attempt - int(ran // DECAY))
        delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
        self.restarts += 1
        now = time.monotonic()
        self._restarted_at = [t for t in self._restarted_at if t > now - 3600] + [now]
        self._set_state("restarting")
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        if hung:
            how = f"stopped responding for {self._hung_after:.0f} s and was killed"
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

    async def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(STOP_GRACE):
                await proc.wait()
        except TimeoutError:
            log.warning("agent.kill name=%s reason=no exit %ss after SIGTERM", self.spec.name, STOP_GRACE)
            proc.kill()
            await proc.wait()


class Engine:
    """The running engine of one data directory."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.data_dir = config.data_dir
        self.started_at = time.time()
        self.identity: ApplianceIdentity
        self.state: StateDB
        self.hub: EventHub
        self.inventory: Inventory
        self.agents: list[AgentProcess] = []
        self.management_port = 0
        self.data_port = 0
        self._secret_store_text = ""

    def __repr__(self) -> str:
        return f"<Engine {self.data_dir.root} agents={[a.state for a in self.agents]}>"

    def status(self) -> EngineStatus:
        disk_space = self.inventory.disk_space if hasattr(self, "inventory") else None
        return EngineStatus(pid=os.getpid(), version=__version__, started_at=self.started_at,
                            data_dir=str(self.data_dir.root), agents=tuple(a.status() for a in self.agents),
                            disk_space=disk_space)

    def setup_info(self) -> SetupInfo:
        fp = self._fingerprint
        host = socket.gethostname()
        command = (f"godwit mobility run --appliance {host}:{self.management_port} --passphrase-file passphrase.txt "
                   f"--ca-fingerprint {fp} --state-dir /var/lib/godwit-mobility --disk /dev/sda")
        return SetupInfo(appliance_id=self.identity.appliance_id, passphrase=self.inventory.passphrase(),
                         ca_fingerprint=fp, management_port=self.management_port, data_port=self.data_port,
                         secret_store=self._secret_store_text, host=host, mobility_command=command)

    def _publish_engine(self) -> None:
        if hasattr(self, "hub"):
            self.hub.publish({"type": "engine", "engine": to_json(self.status())})

    def _open(self) -> dict[str, socket.socket]:
        """Identity, secrets, PKI, state and ports; returns the bound sockets by port name."""
        self.data_dir.create()
        ident = ApplianceIdentity.load(self.data_dir)
        first_start = ident is None
        self.identity = ident or ApplianceIdentity.create(self.data_dir)
        store = self.identity.secrets(self.data_dir)
        pki = create_secrets_and_pki(self.data_dir, self.identity, store)
        self._fingerprint = pki.ca_fingerprint()
        self._secret_store_text = store.describe()
        self.state = StateDB(self.data_dir.state_db, reserve_bytes=diskspace.STATE_RESERVE)
        self.hub = EventHub(self.state)
        mgmt = self.config.management_port or int(self.state.get_meta("management_port") or DEFAULT_MANAGEMENT_PORT)
        data = self.config.data_port or int(self.state.get_meta("data_port") or DEFAULT_DATA_PORT)
        if mgmt == data:
            raise PortError(f"The management and data ports must differ (both are {mgmt}).")
        mgmt_sock = bind_port(self.config.bind_host, mgmt, what="management", flag="--management-port")
        try:
            data_sock = bind_port(self.config.bind_host, data, what="data", flag="--data-port")
        except PortError:
            mgmt_sock.close()
            raise
        self.state.set_meta("management_port", str(mgmt))
        self.state.set_meta("data_port", str(data))
        self.management_port, self.data_port = mgmt, data
        self.replication = Replication(state=self.state, hub=self.hub, data_root=self.data_dir.root)
        self.inventory = Inventory(state=self.state, pki=pki, secrets=store, hub=self.hub,
                                   replication=self.replication, heartbeat_interval=self.config.heartbeat_interval,
                                   management_port=mgmt)
        self.inventory.data_port = data
        if first_start:
            self.hub.record("info", "appliance-created",
                            f"Appliance {self.identity.appliance_id} created; CA fingerprint {self._fingerprint}.")
        if store.kind == "file" and self.state.get_meta("secrets_in_file_reported") is None:
            self.hub.record("warning", "secrets-in-file",
                            "No OS keyring is available: the appliance's secrets are kept in "
                            f"{self.data_dir.secrets_file}, protected by file permissions only.")
            self.state.set_meta("secrets_in_file_reported", "1")
        return {"management": mgmt_sock, "data": data_sock}

    async def _start_unix_site(self, app: web.Application, path: Path) -> web.AppRunner:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by an engine that was killed; we hold the lock, so it is stale
        old = os.umask(0o077)
        try:
            await web.UnixSite(runner, str(path)).start()
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        return runner

    def _record_quietly(self, severity: Severity, code: str, message: str) -> bool:
        """Record an engine event; on a full disk log it instead (the engine goes on). True if recorded."""
        try:
            self.hub.record(severity, code, message)
        except EngineError as exc:
            log.warning("event.not-recorded code=%s: %s", code, exc)
            return False
        return True

    async def _watch_disk_space(self) -> None:
        """Measure the data directory's file system every few seconds (see engine/diskspace.py): the
        level goes to the engine status and to the replicating servers' health; each change of level is
        one event (recorded as soon as the state database has room for it); and the state database's
        reserve is created again once the file system is out of the full level."""
        root = self.data_dir.root
        mount = await asyncio.to_thread(diskspace.mount_point, root)
        events: dict[DiskLevel, tuple[Severity, str]] = {
            "ok": ("info", "disk-space-ok"), "warning": ("warning", "disk-space-low"),
            "critical": ("error", "disk-space-critical"), "full": ("error", "disk-full")}
        level: DiskLevel = "ok"
        noted: DiskLevel = "ok"  # the level the last event was about
        while True:
            try:
                space = await asyncio.to_thread(diskspace.measure, root, mount=mount, previous=level)
                changed, level = space.level != level, space.level
                self.inventory.disk_space = space
                if changed:
                    log.info("disk-space.level level=%s mount=%s free=%s size=%s", level, mount, space.free_bytes,
                             space.size_bytes)
                    self._publish_engine()
                if level != "full" and not self.state.reserve.held and \
                        await asyncio.to_thread(self.state.keep_reserve):
                    log.info("state.reserve-created path=%s", self.state.reserve.path)
                if level != noted:
                    severity, code = events[level]
                    message = space.detail or diskspace.describe(root, mount, space.free_bytes, space.size_bytes,
                                                                 "ok")
                    if self._record_quietly(severity, code, message):
                        noted = level
            except Exception:  # a bug, or a file system gone: keep watching
                log.exception("disk-space.watch-failed")
            await asyncio.sleep(diskspace.CHECK_EVERY)

    async def run(self, stop: asyncio.Event, on_ready: Callable[[str], None] = print) -> None:
        """Serve until ``stop`` is set, then stop the agents and close everything.

        ``on_ready`` receives one line for the admin once every socket is up.
        """
        ports = self._open()
        runners: list[web.AppRunner] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            runners.append(await self._start_unix_site(make_agent_app(self), self.data_dir.agent_socket))
            self.agents = [AgentProcess(spec, self.data_dir, ports.get(spec.port or ""), self.hub,
                                        self._publish_engine) for spec in AGENTS]
            tasks = [asyncio.create_task(a.run(), name=a.spec.name) for a in self.agents]
            tasks.append(asyncio.create_task(self.inventory.watch_health(), name="health"))
            runners.append(await self._start_unix_site(make_admin_app(self), self.data_dir.admin_socket))
            self._record_quietly("info", "engine-started", f"Engine {__version__} started: management port "
                                 f"{self.management_port}, data port {self.data_port}.")
            tasks.append(asyncio.create_task(self._watch_disk_space(), name="disk-space"))
            on_ready(f"Godwit engine running for {self.data_dir.root} (pid {os.getpid()}): management port "
                     f"{self.management_port}, data port {self.data_port}, admin socket {self.data_dir.admin_socket}.")
            await stop.wait()
            log.info("engine.stopping")
        finally:
            await asyncio.gather(*(a.stop() for a in self.agents))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._record_quietly("info", "engine-stopped", "Engine stopped.")
            self.hub.close()
            for runner in reversed(runners):
                await runner.cleanup()
            for sock in ports.values():
                sock.close()
            for path in (self.data_dir.admin_socket, self.data_dir.agent_socket):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            self.state.close()
            log.info("engine.stopped")


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
