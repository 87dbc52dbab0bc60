"""The console's one door to the engine.

:class:`EngineBridge` attaches to the engine of a data directory over its admin socket, starts
one if none runs (the embedded default), and re-attaches by itself when the engine goes away and
comes back. It turns the engine's push stream into Qt signals; views never hold engine objects
and never poll. Server updates are coalesced to at most one per row per
:data:`COALESCE_MS` milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from PySide6.QtCore import QObject, QTimer, Signal

from engine import durations
from engine.backoff import Backoff
from engine.backup import MIN_PASSPHRASE
from engine.client import AdminClient
from engine.config import DataDir, default_data_dir
from engine.errors import EngineError, EngineNotRunning
from engine.files import write_atomically
from engine.licence import read_licence_file
from engine.links.admin import (
    ApplianceHealthChanged,
    EngineChanged,
    EventAdded,
    Hello,
    LicenceChanged,
    PortsChanged,
    ServerChanged,
    ServerRemoved,
    SetupChanged,
    UpdatesChanged,
)
from engine.ports import check_address, check_port
from engine.records import (
    AgentUpdate,
    ApplianceHealth,
    ConnectivityCheck,
    ConnectivityReport,
    EngineStatus,
    Event,
    FirewallRule,
    Health,
    HealthCause,
    LicenceStatus,
    Policy,
    PortsStatus,
    PrerequisiteCheck,
    Prerequisites,
    RecoveryPoint,
    ServerHistory,
    ServerReach,
    ServerSample,
    ServerState,
    ServerStatus,
    SetupInfo,
    TargetStatus,
    UpdatesStatus,
)
from engine.replication import MAX_MBPS, MIN_MBPS

log = logging.getLogger(__name__)

COALESCE_MS = 100
#: Events loaded when the console attaches; older ones are in ``godwit events``.
EVENTS_ON_ATTACH = 500
ENGINE_START_TIMEOUT = 60.0
#: Seconds between attempts to start an engine whose start failed (say, a port in use), and between
#: attempts to attach once five quick ones have failed.
FAILED_START_RETRY = 15.0
STOPPED = "The engine is not running: nothing replicates until it starts again."
#: Waits between attempts to attach: quick at first, then :data:`FAILED_START_RETRY` apart.
RETRY = Backoff((0.25, 0.5, 1.0, 2.0, 3.0, FAILED_START_RETRY))

__all__ = [
    "MAX_MBPS",
    "MIN_MBPS",
    "MIN_PASSPHRASE",
    "AgentUpdate",
    "ApplianceHealth",
    "ConnectivityCheck",
    "ConnectivityReport",
    "DataDir",
    "EngineBridge",
    "EngineError",
    "EngineStatus",
    "Event",
    "FirewallRule",
    "Health",
    "HealthCause",
    "LicenceStatus",
    "Policy",
    "PortsStatus",
    "PrerequisiteCheck",
    "Prerequisites",
    "RecoveryPoint",
    "ServerHistory",
    "ServerReach",
    "ServerSample",
    "ServerState",
    "ServerStatus",
    "SetupInfo",
    "TargetStatus",
    "UpdatesStatus",
    "check_address",
    "check_port",
    "default_data_dir",
    "durations",
    "read_licence_file",
    "setup_console_logging",
    "write_atomically",
]


def setup_console_logging(data_dir: Path) -> None:
    """The console logs to ``logs/console.log`` in its data directory."""
    from engine import logs

    logs.to_file(DataDir(data_dir).logs / "console.log")


class EngineBridge(QObject):
    #: "connecting" | "starting" | "attached" | "lost" | "stopped" (no engine runs) | "failed" (it did not
    #: start), and a sentence for the admin.
    connection_changed = Signal(str, str)
    engine_changed = Signal(object)  #: EngineStatus
    setup_changed = Signal(object)  #: SetupInfo
    servers_reset = Signal(list)  #: list[ServerStatus], a full snapshot
    server_updated = Signal(object)  #: ServerStatus
    server_removed = Signal(str)  #: name
    events_reset = Signal(list)  #: list[Event]
    event_added = Signal(object)  #: Event
    licence_changed = Signal(object)  #: LicenceStatus
    ports_changed = Signal(object)  #: PortsStatus
    updates_changed = Signal(object)  #: UpdatesStatus
    health_changed = Signal(object)  #: ApplianceHealth

    def __init__(self, data_dir: Path, *, engine_args: list[str] | None = None, start_engine: bool = True,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.data_dir = DataDir(data_dir)
        self.client = AdminClient(self.data_dir)
        self.state = "connecting"
        self.engine: EngineStatus | None = None
        #: The last licence and ports the engine reported (None until then, or from an engine before admin 1.1).
        self.licence: LicenceStatus | None = None
        self.ports: PortsStatus | None = None
        #: The last agent updates the engine reported (None until then, or from an engine before admin 1.2).
        self.updates: UpdatesStatus | None = None
        #: The appliance's own health as last reported (None until then, or from an engine before admin 1.4).
        self.health: ApplianceHealth | None = None
        self._engine_args = engine_args or []
        self._start_engine = start_engine
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[str, ServerStatus] = {}
        self._flush = QTimer(self, singleShot=True, interval=COALESCE_MS)
        self._flush.timeout.connect(self._flush_servers)
        self.attach_count = 0
        self._spawned = False
        self._wake = asyncio.Event()
        self._spawn_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<EngineBridge {self.data_dir.root} state={self.state} attached={self.attach_count}x>"

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Begin attaching; returns at once. Progress arrives as :attr:`connection_changed`."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._attach_forever())

    async def aclose(self) -> None:
        """Detach. The engine keeps running: replication does not depend on the console."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._flush.stop()
        await self.client.aclose()

    def _set_state(self, state: str, detail: str) -> None:
        if (state, detail) != getattr(self, "_last_state", None):
            self._last_state = (state, detail)
            self.state = state
            log.info("bridge.%s %s", state, detail)
            self.connection_changed.emit(state, detail)

    async def _attach_forever(self) -> None:
        attempt = 0
        while True:
            try:
                await self._follow()
                attempt = 0  # the stream ended (engine stopped or we fell behind): re-attach
                self._set_state("lost", "Lost the engine; re-attaching…")
            except EngineNotRunning:
                # Start the embedded engine when there is none at first, or again after one we started
                # died; an engine the admin runs and stops (systemd, a terminal) is theirs to restart.
                may_start = self._start_engine and (self.attach_count == 0 or self._spawned)
                alive = self._engine_alive()
                if may_start and not alive:
                    try:
                        await self._spawn_engine()
                        self._spawned = True
                        attempt = 0
                        continue
                    except EngineError as exc:
                        self._set_state("failed", exc.message)
                        attempt = len(RETRY.steps) - 1  # do not hammer a start that fails: the longest wait
                elif not alive:  # nothing holds the data directory: the console offers Start engine
                    self._set_state("stopped", STOPPED)
                elif self.state == "attached" or self.state == "connecting":
                    self._set_state("lost", "The engine is not answering; re-attaching…")
            except EngineError as exc:
                self._set_state("lost", exc.message)
            except Exception:  # a bug must not leave the console detached for good
                log.exception("bridge.unexpected")
                self._set_state("lost", "Lost the engine after an unexpected error; re-attaching…")
            with contextlib.suppress(TimeoutError):  # Start engine wakes it at once
                await asyncio.wait_for(self._wake.wait(), RETRY.delay(attempt))
            self._wake.clear()
            attempt += 1

    async def _follow(self) -> None:
        async for message in self.client.updates():
            match message:
                case Hello():
                    await self._on_hello(message)
                case ServerChanged(server=status):
                    self._pending[status.name] = status
                    if not self._flush.isActive():
                        self._flush.start()
                case ServerRemoved(name=name):
                    self._pending.pop(name, None)
                    self.server_removed.emit(name)
                case EventAdded(event=event):
                    self.event_added.emit(event)
                case EngineChanged(engine=engine):
                    self.engine = engine
                    self.engine_changed.emit(engine)
                case SetupChanged(setup=setup):
                    self.setup_changed.emit(setup)
                case LicenceChanged(licence=licence):
                    self._licence_known(licence)
                case PortsChanged(ports=ports):
                    self._ports_known(ports)
                case UpdatesChanged(updates=updates):
                    self._updates_known(updates)
                case ApplianceHealthChanged(health=health):
                    self._health_known(health)

    async def _on_hello(self, hello: Hello) -> None:
        self.engine = hello.engine
        events = await self.client.events(limit=EVENTS_ON_ATTACH)
        self._pending.clear()
        self.attach_count += 1
        self.setup_changed.emit(hello.setup)
        self.servers_reset.emit(list(hello.servers))
        self.events_reset.emit(events)
        self.engine_changed.emit(self.engine)
        if hello.licence is not None:  # None from an engine before admin 1.1: nothing to show
            self._licence_known(hello.licence)
        if hello.ports is not None:
            self._ports_known(hello.ports)
        if hello.updates is not None:  # None from an engine before admin 1.2
            self._updates_known(hello.updates)
        if hello.health is not None:  # None from an engine before admin 1.4
            self._health_known(hello.health)
        self._set_state("attached", f"Attached to the engine (pid {self.engine.pid}).")

    def _licence_known(self, licence: LicenceStatus) -> None:
        self.licence = licence
        self.licence_changed.emit(licence)

    def _ports_known(self, ports: PortsStatus) -> None:
        self.ports = ports
        self.ports_changed.emit(ports)

    def _updates_known(self, updates: UpdatesStatus) -> None:
        self.updates = updates
        self.updates_changed.emit(updates)

    def _health_known(self, health: ApplianceHealth) -> None:
        self.health = health
        self.health_changed.emit(health)

    def _flush_servers(self) -> None:
        pending, self._pending = self._pending, {}
        for status in pending.values():
            self.server_updated.emit(status)

    # --- the embedded engine ------------------------------------------------------------------------
    def _engine_alive(self) -> bool:
        """Whether an engine holds this data directory's lock (it may be starting up)."""
        import fcntl

        try:
            fd = os.open(self.data_dir.lock_file, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError:
            return True  # not ours to read: someone else's engine; never start a second one
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    async def _spawn_engine(self) -> None:
        """Start ``godwit serve --background`` for this data directory and wait until it serves (nothing when an
        engine already holds it)."""
        async with self._spawn_lock:
            if not self._engine_alive():
                await self._spawn_locked()

    async def _spawn_locked(self) -> None:
        self._set_state("starting", f"Starting the engine for {self.data_dir.root}…")
        cmd = [sys.executable, "-P", "-m", "engine", "serve", "--background", "--data-dir",
               str(self.data_dir.root), *self._engine_args]
        loop = asyncio.get_running_loop()
        # The launcher returns as soon as the detached engine serves or has failed; a thread keeps
        # the console's loop free meanwhile.
        try:
            res = await loop.run_in_executor(None, lambda: subprocess.run(
                cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=ENGINE_START_TIMEOUT))
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EngineError(f"The engine could not be started ({exc}); see {self.data_dir.logs}.") from exc
        if res.returncode != 0:
            line = (res.stderr.strip().splitlines() or [f"The engine exited with code {res.returncode}."])[-1]
            raise EngineError(line.removeprefix("godwit: "))
        log.info("bridge.engine-started %s", res.stdout.strip())

    async def start_engine(self) -> None:
        """The admin's Start engine: start the embedded engine now (whoever started the one that stopped) and
        attach to it. Raises :class:`EngineError` with the engine's own reason when it does not start."""
        self._start_engine = True  # and again, should it die
        try:
            await self._spawn_engine()
        except EngineError as exc:
            self._set_state("failed", exc.message)
            raise
        self._spawned = True
        self._wake.set()

    async def stop_engine(self, timeout: float = 30.0) -> None:
        """Stop the engine this console is attached to (SIGTERM, as a service manager would), and wait until it
        has let go of the data directory. Replication stops until an engine runs again."""
        engine = self.engine
        if engine is None or not self._engine_alive():
            return
        self._start_engine = False  # the admin stopped it: the attach loop must not start it again
        with contextlib.suppress(ProcessLookupError):
            os.kill(engine.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._engine_alive():
            if loop.time() > deadline:
                raise EngineError(f"The engine (pid {engine.pid}) did not stop within {timeout:.0f} s; see "
                                  f"{self.data_dir.logs / 'engine.log'}.")
            await asyncio.sleep(0.1)

    # --- commands -----------------------------------------------------------------------------------
    async def rotate_passphrase(self) -> SetupInfo:
        return await self.client.rotate_passphrase()

    async def target(self) -> TargetStatus | None:
        """Where seed disks and recovery points go now; None from an engine before admin 1.6, which does not
        say."""
        if not self.engine_speaks(6):
            return None
        return await self.client.target()

    async def set_target(self, kind: str, *, account_url: str | None = None, container: str | None = None,
                         credential: str | None = None) -> TargetStatus:
        """Send new copies to ``local`` or an Azure container. The engine checks the container first (up to a
        minute when the account does not answer); a refusal raises its one-line :class:`EngineError` and changes
        nothing. Servers already replicating keep their target."""
        return await self.client.set_target(kind, account_url=account_url, container=container,
                                            credential=credential)

    async def forget_server(self, name: str) -> None:
        await self.client.forget_server(name)

    async def update_mobility(self, names: list[str]) -> None:
        """Ask these servers' mobility services to update (manual mode); their rows follow by the push stream."""
        for server in await self.client.update_mobility(names):
            self.server_updated.emit(server)

    async def policies(self) -> list[Policy]:
        return await self.client.policies()

    def engine_speaks(self, minor: int) -> bool:
        """Whether the attached engine speaks admin API 1.``minor`` or later (True while not yet known)."""
        version = self.client.peer_version
        return version is None or version >= (self.client.link.major, minor)

    async def create_policy(self, name: str, *, rpo_threshold: str, retention: str, crash_consistent_every: str,
                            app_consistent_every: str) -> Policy:
        """Create a policy from durations as an admin types them ("15m", "7d"; "off" for no app-consistent
        points); a refusal raises the engine's one-line :class:`EngineError`."""
        return await self.client.create_policy(name=name, rpo_threshold=rpo_threshold, retention=retention,
                                               crash_consistent_every=crash_consistent_every,
                                               app_consistent_every=app_consistent_every)

    async def edit_policy(self, name: str, **changes: str) -> Policy:
        """Change only the given settings of policy ``name`` (the names of :meth:`create_policy`'s); its servers
        follow from their next cycle."""
        return await self.client.edit_policy(name, **changes)

    async def delete_policy(self, name: str) -> None:
        """Delete policy ``name``; refused, naming the servers, while any replicates with it (and for
        ``default``)."""
        await self.client.delete_policy(name)

    async def prerequisites(self, check: str | None = None) -> Prerequisites:
        """Check the appliance's prerequisites now (all, or only ``check``)."""
        return await self.client.prerequisites(check)

    async def complete_setup(self) -> SetupInfo:
        """Record that the first-run setup is done; the new set-up reaches :attr:`setup_changed` too."""
        setup = await self.client.complete_setup()
        self.setup_changed.emit(setup)
        return setup

    async def server_history(self, name: str, span: str = "hour") -> ServerHistory:
        """Server ``name``'s throughput and RPO over the last hour or day."""
        return await self.client.server_history(name, span)

    async def enable(self, name: str, policy: str) -> ServerStatus:
        return await self.client.enable(name, policy)

    async def disable(self, name: str) -> ServerStatus:
        return await self.client.disable(name)

    async def resync(self, name: str) -> ServerStatus:
        return await self.client.resync(name)

    async def server(self, name: str) -> ServerStatus:
        """The server ``name`` as the engine sees it now (the push stream brings its changes after)."""
        return await self.client.server(name)

    async def set_policy(self, name: str, policy: str) -> ServerStatus:
        """Move a replicating server to the policy ``policy``, live; a refusal raises the engine's :class:`EngineError`
        and changes nothing."""
        return await self.client.set_policy(name, policy)

    async def set_max_mbps(self, name: str, mbps: float | None) -> ServerStatus:
        """Cap the server's replication at ``mbps`` Mbit/s (1 to 100000; None: no cap), live."""
        return await self.client.set_server(name, max_mbps=mbps)

    async def points(self, name: str) -> list[RecoveryPoint]:
        return await self.client.points(name)

    async def export_point(self, name: str, point_id: int | str, disk: int, fmt: str, out_file: BinaryIO,
                           progress: Callable[[int, int], None] | None = None) -> tuple[str, int]:
        """Stream disk ``disk`` of recovery point ``point_id`` as ``fmt`` ("raw" | "vhd") into ``out_file``, calling
        ``progress(written, total)`` as it goes. Returns the point's id and the size written; the file is the
        caller's (to name, rename or remove)."""
        return await self.client.export(name, point=str(point_id), disk=disk, fmt=fmt, out=out_file,
                                        progress=progress)

    async def activate_licence(self, text: str) -> LicenceStatus:
        """Activate the licence file whose content is ``text``. A refusal raises the engine's
        :class:`EngineError` and changes nothing; the new licence reaches :attr:`licence_changed` at once."""
        licence = await self.client.activate_licence(text)
        self._licence_known(licence)
        return licence

    async def refresh_ports(self) -> PortsStatus:
        """Ask the engine for its ports now (the push stream keeps :attr:`ports` current by itself), and pass
        them on as :attr:`ports_changed`. Named apart from :attr:`ports`, the last known value."""
        ports = await self.client.ports()
        self._ports_known(ports)
        return ports

    async def set_ports(self, *, management: int | None = None, data: int | None = None, listen: str | None = None,
                        keep_old_for: float | None = None) -> PortsStatus:
        """Move the ports (None: leave that one as it is). The engine checks everything before it changes
        anything; a refusal raises its :class:`EngineError`. The new ports reach :attr:`ports_changed` at once."""
        ports = await self.client.set_ports(management=management, data=data, listen=listen,
                                            keep_old_for=keep_old_for)
        self._ports_known(ports)
        return ports

    async def test_ports(self) -> ConnectivityReport:
        return await self.client.test_ports()

    async def backup(self, passphrase: str) -> bytes:
        """An encrypted backup of the appliance, to be written to a file of the admin's (restored with
        ``godwit appliance restore``)."""
        return await self.client.backup(passphrase)

    # --- agent updates (admin 1.2) --------------------------------------------------------------------
    # Each command passes the engine's answer on as :attr:`updates_changed` at once (the push stream
    # repeats it, and brings what follows: the stages of an install, a check's result).
    async def refresh_updates(self) -> UpdatesStatus:
        """Ask the engine for the agents' versions now. Named apart from :attr:`updates`, the last known value."""
        return self._answered(await self.client.agent_updates())

    async def check_updates(self) -> UpdatesStatus:
        """Ask the update feed now; returns when the check is done (an unreachable feed is in ``check_error``)."""
        return self._answered(await self.client.check_updates())

    async def update_agents(self, names: list[str] | None) -> UpdatesStatus:
        """Install the available version of ``names`` (None: Update all — every outdated agent, together, in the
        engine's order). Returns once the install started; its stages arrive as :attr:`updates_changed`."""
        return self._answered(await self.client.update_agents(names))

    async def rollback_agent(self, name: str) -> UpdatesStatus:
        """Put agent ``name``'s previous version back; returns when it runs again."""
        return self._answered(await self.client.rollback_agent(name))

    async def set_update_mode(self, mode: str | None, *, window: str | None = None,
                              now: bool = False) -> UpdatesStatus:
        """Switch to ``mode`` ("auto" | "manual"; None: keep it), move the daily install ``window`` ("HH:MM", the
        appliance's local time; None: keep it). ``now``: on switching to auto, install pending updates at once
        rather than at the next window."""
        return self._answered(await self.client.set_update_mode(mode, window=window, now=now))

    async def set_update_feed(self, url: str | None) -> UpdatesStatus:
        """Use the update feed at ``url``; the engine checks the address before it keeps it."""
        return self._answered(await self.client.set_update_feed(url))

    def _answered(self, updates: UpdatesStatus) -> UpdatesStatus:
        self._updates_known(updates)
        return updates
