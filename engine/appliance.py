"""The running appliance of one data directory: it builds the services (identity, PKI, state,
storage, inventory, replication), binds the ports, and starts the admin API, the agent link, the
appliance agents (:mod:`engine.supervisor`) and its own watchers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from engine import __version__, diskspace
from engine.admin_api import make_admin_app, make_agent_app
from engine.agents import AGENTS
from engine.appliance_health import ApplianceHealthMonitor, health_events
from engine.config import EngineConfig
from engine.errors import ConfigError, EngineError
from engine.events import EventHub
from engine.identity import ApplianceIdentity, create_secrets_and_pki
from engine.inventory import Inventory
from engine.licence import LicenceKeeper
from engine.links.admin import (
    ApplianceHealthChanged,
    EngineChanged,
    LicenceChanged,
    PortsChanged,
    SetupChanged,
    UpdatesChanged,
)
from engine.mobility_install import install_command
from engine.ports import DEFAULT_LISTEN_ADDRESS, PortsControl
from engine.prerequisites import Facts, PortFact, PrerequisiteChecker
from engine.records import ApplianceHealth, DiskLevel, EngineStatus, SetupInfo, Severity
from engine.replication import Replication
from engine.server_history import ServerHistories, ServerReading
from engine.services import Services
from engine.state import StateDB
from engine.storage import open_storage
from engine.supervisor import AgentProcess, Launcher
from engine.updater.mobility import MobilityUpdates
from engine.updater.service import Updater

log = logging.getLogger(__name__)

#: Seconds between two checks of the licence (thresholds, expiry, the clock).
LICENCE_CHECK_EVERY = 5.0
LICENCE_CHECK_ENV = "GODWIT_LICENCE_CHECK_EVERY"  # tests that move the clock through every threshold


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
        self.services: Services
        self.agents: list[AgentProcess] = []
        self.ports: PortsControl
        self.licence: LicenceKeeper
        self.updater: Updater
        self.history: ServerHistories
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
        ports = self.ports
        # Sources reach the appliance by its name, or by the one address it listens on.
        host = socket.gethostname() if ports.listen_address == DEFAULT_LISTEN_ADDRESS else ports.listen_address
        command = (f"godwit mobility run --appliance {host}:{ports.management_port} --passphrase-file passphrase.txt "
                   f"--ca-fingerprint {fp} --state-dir /var/lib/godwit-mobility --disk /dev/sda")
        return SetupInfo(appliance_id=self.identity.appliance_id, passphrase=self.inventory.passphrase(),
                         ca_fingerprint=fp, management_port=ports.management_port, data_port=ports.data_port,
                         secret_store=self._secret_store_text, host=host, mobility_command=command,
                         setup_completed_at=self.services.setup_completed_at() if hasattr(self, "services")
                         else None,
                         install_command=install_command(host=host, management_port=ports.management_port,
                                                         ca_fingerprint=fp))

    def _publish_engine(self) -> None:
        if hasattr(self, "hub"):
            self.hub.publish(EngineChanged(self.status()))

    def _publish_ports(self) -> None:
        self.hub.publish(PortsChanged(self.ports.status()))
        self.hub.publish(SetupChanged(self.setup_info()))

    def _open(self) -> None:
        """Identity, secrets, PKI, state, licence, ports and services."""
        self.data_dir.create()
        ident = ApplianceIdentity.load(self.data_dir)
        first_start = ident is None
        if first_start and (self.data_dir.state_db.exists() or any(self.data_dir.pki.glob("*.key"))):
            # appliance.json is written last by a restore: state without it is a restore cut short (or a lost file)
            raise ConfigError(f"{self.data_dir.root} holds an appliance's state but no appliance.json: a restore that "
                              "was cut short, or a deleted file. Restore appliance.json, or restore the backup again "
                              "into an empty --data-dir.")
        self.identity = ident or ApplianceIdentity.create(self.data_dir)
        store = self.identity.secrets(self.data_dir)
        pki = create_secrets_and_pki(self.data_dir, self.identity, store)
        self._fingerprint = pki.ca_fingerprint()
        self._secret_store_text = store.describe()
        self.state = StateDB(self.data_dir.state_db, reserve_bytes=diskspace.STATE_RESERVE)
        self.hub = EventHub(self.state)
        config = self.config
        self.ports = PortsControl.open(state=self.state, hub=self.hub,
                                       launcher_for=lambda sockets: Launcher(self.data_dir, sockets),
                                       management=config.management_port, data=config.data_port,
                                       listen=config.listen_address)
        self.licence = LicenceKeeper(data_dir=self.data_dir, identity=self.identity, store=store, state=self.state,
                                     hub=self.hub, pki=pki)
        self.updater = Updater(data_dir=self.data_dir, state=self.state, hub=self.hub,
                               probe_address=self._probe_address)
        self.updater.on_change = lambda status: self.hub.publish(UpdatesChanged(status))
        self.updater.prepare()  # before any agent starts: an interrupted install is rolled back first
        storage = open_storage(self.data_dir, store)
        replication = Replication(state=self.state, hub=self.hub, storage=storage)
        self.inventory = Inventory(
            state=self.state, pki=pki, secrets=store, hub=self.hub, replication=replication,
            heartbeat_interval=config.heartbeat_interval, management_port=self.ports.management_port,
            licence_check=lambda what: self.licence.check_new_server(what, replicating=self.services.replicating()))
        self.inventory.data_port = self.ports.data_port
        self.ports.inventory, self.ports.storage = self.inventory, storage
        self.ports.ca_pem = pki.ca_cert_path.read_bytes()
        self.ports.on_change = self._publish_ports
        self.mobility = MobilityUpdates(state=self.state, hub=self.hub, data_dir=self.data_dir)
        self.inventory.mobility_updates = self.mobility
        self.history = ServerHistories(read=self._server_readings, store=self.state)
        self.history.load(now=time.time())
        checker = PrerequisiteChecker(self._prerequisite_facts)
        self.services = Services(state=self.state, hub=self.hub, inventory=self.inventory, replication=replication,
                                 storage=storage, licence=self.licence, ports=self.ports, data_dir=self.data_dir,
                                 secrets=store, status=self.status, setup_info=self.setup_info,
                                 updater=self.updater, mobility=self.mobility, history=self.history,
                                 prerequisites=checker)
        if first_start:
            self.hub.record("info", "appliance-created",
                            f"Appliance {self.identity.appliance_id} created; CA fingerprint {self._fingerprint}.")
        if store.kind == "file" and self.state.get_meta("secrets_in_file_reported") is None:
            self.hub.record("warning", "secrets-in-file",
                            "No OS keyring is available: the appliance's secrets are kept in "
                            f"{self.data_dir.secrets_file}, protected by file permissions only.")
            self.state.set_meta("secrets_in_file_reported", "1")

    def _probe_address(self, port: str) -> tuple[str, int]:
        """Where the health check of an agent reaches its port on this machine."""
        ports = self.ports
        host = {DEFAULT_LISTEN_ADDRESS: "127.0.0.1", "::": "::1"}.get(ports.listen_address, ports.listen_address)
        return host, ports.management_port if port == "management" else ports.data_port

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

    async def _watch_licence(self) -> None:
        """Check the licence every few seconds: thresholds, expiry and the clock are events, and the consoles
        see each change."""
        while True:
            try:
                if self.licence.tick():  # on the loop: the state database's one connection is used from here
                    self.hub.publish(LicenceChanged(self.licence.status()))
            except Exception:
                log.exception("licence.watch-failed")
            await asyncio.sleep(float(os.environ.get(LICENCE_CHECK_ENV, LICENCE_CHECK_EVERY)))

    def _received_by_disk(self) -> dict[tuple[str, int], int]:
        """Bytes each replicating disk has received into the cache, as the process server last reported."""
        replication = self.services.replication
        return {(row.server_id, disk): replication.progress(row.server_id, disk).bytes_received
                for row in self.state.servers() if row.replicate for disk in range(len(row.replicated_sizes))}

    def _server_readings(self) -> dict[str, ServerReading | None]:
        """Every registered server's counters for its history: None for one that does not replicate."""
        replication = self.services.replication
        now = time.time()
        readings: dict[str, ServerReading | None] = {}
        for row in self.state.servers():
            if not row.replicate:
                readings[row.server_id] = None
                continue
            disks = [replication.progress(row.server_id, i) for i in range(len(row.replicated_sizes))]
            # a count not reported since the engine started is unknown (not 0): its first report is not growth
            readings[row.server_id] = ServerReading(
                disks=tuple((d.bytes_received if d.received_reported else None, d.bytes_applied) for d in disks),
                rpo_seconds=replication.summary(row, now).rpo)
        return readings

    def _prerequisite_facts(self) -> Facts:
        """What the prerequisites' checks need, read on the loop."""
        ports, storage, servers = self.ports, self.services.storage, self.state.servers()
        # The cache folder may be a file system of its own (the appliance image mounts its cache disk there).
        cache = self.data_dir.root / "cache"
        # This engine holds both ports while it runs (it cannot run, nor move one, without binding it); the
        # check asks whether each port's agent answers there.
        return Facts(ports=(PortFact("management", ports.management_port, held=True,
                                     reach=self._probe_address("management")),
                            PortFact("data", ports.data_port, held=True, reach=self._probe_address("data"))),
                     listen_address=ports.listen_address, cache_path=cache if cache.is_dir() else self.data_dir.root,
                     servers=len(servers),
                     protected_bytes=sum(d.size for row in servers for d in row.disks),
                     secret_kind=self.services.secrets.kind, secret_description=self._secret_store_text,
                     secrets_file=self.data_dir.secrets_file, target_kind=storage.kind,
                     probe_target=storage.probe_target)

    def _health_sampled(self, before: ApplianceHealth, after: ApplianceHealth) -> None:
        """Every console sees each sample; each new or worse alert, and the last one clearing, is an event."""
        self.hub.publish(ApplianceHealthChanged(after))
        for severity, message in health_events(before, after):
            self._record_quietly(severity, "appliance-health", message)

    def _health_monitor(self) -> ApplianceHealthMonitor:
        storage = self.services.storage
        return ApplianceHealthMonitor(
            agents=lambda: [a.spec.name for a in self.agents], alive_file=self.data_dir.alive_file,
            disk_space=lambda: self.inventory.disk_space, backlog=lambda: storage.cache.used_bytes(),
            received=self._received_by_disk, on_sample=self._health_sampled, logs=self.data_dir.logs)

    async def run(self, stop: asyncio.Event, on_ready: Callable[[str], None] = print) -> None:
        """Serve until ``stop`` is set, then stop the agents and close everything.

        ``on_ready`` receives one line for the admin once every socket is up.
        """
        self._open()
        runners: list[web.AppRunner] = []
        tasks: list[asyncio.Task[None]] = []
        ports = self.ports
        try:
            runners.append(await self._start_unix_site(make_agent_app(self.services), self.data_dir.agent_socket))
            launcher = ports.launcher
            self.agents = [AgentProcess(spec, self.data_dir, launcher, self.hub, self._publish_engine)
                           for spec in AGENTS]
            ports.agents = {a.spec.name: a for a in self.agents}
            self.updater.agents = dict(ports.agents)
            tasks = [asyncio.create_task(a.run(), name=a.spec.name) for a in self.agents]
            tasks.append(asyncio.create_task(self.inventory.watch_health(), name="health"))
            tasks.append(asyncio.create_task(ports.watch(), name="ports"))
            tasks.append(asyncio.create_task(self._watch_licence(), name="licence"))
            tasks.append(asyncio.create_task(self.updater.watch(), name="updates"))
            health = self._health_monitor()
            tasks.append(asyncio.create_task(health.watch(), name="appliance-health"))
            tasks.append(asyncio.create_task(self.history.watch(), name="server-history"))
            runners.append(await self._start_unix_site(make_admin_app(self.services, health=health),
                                                       self.data_dir.admin_socket))
            where = f"management port {ports.management_port}, data port {ports.data_port} on {ports.listen_address}"
            self._record_quietly("info", "engine-started", f"Engine {__version__} started: {where}.")
            tasks.append(asyncio.create_task(self._watch_disk_space(), name="disk-space"))
            on_ready(f"Godwit engine running for {self.data_dir.root} (pid {os.getpid()}): {where}, admin socket "
                     f"{self.data_dir.admin_socket}.")
            await stop.wait()
            log.info("engine.stopping")
        finally:
            await self.updater.aclose()
            await asyncio.gather(*(a.stop() for a in self.agents))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._record_quietly("info", "engine-stopped", "Engine stopped.")
            self.hub.close()
            for runner in reversed(runners):
                await runner.cleanup()
            ports.close()
            for path in (self.data_dir.admin_socket, self.data_dir.agent_socket):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            self.state.close()
            log.info("engine.stopped")
