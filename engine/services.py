"""The appliance's services as the admin API and the agent link see them.

:mod:`engine.appliance` builds one :class:`Services` at start-up; the HTTP handlers reach
everything through it (typed, via an ``AppKey``). Business rules, their events and the pushes to
the consoles live in the services, never in a handler.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from engine.config import DataDir
from engine.errors import BadInput, EngineError, TargetUnwritable, UpdateError
from engine.events import EventHub
from engine.inventory import Inventory
from engine.licence import LicenceKeeper
from engine.links.admin import LicenceChanged, PortsChanged, SetupChanged
from engine.links.agent import Ack, AppliedReport, ReceivedReport
from engine.ports import PortsControl
from engine.prerequisites import PrerequisiteChecker
from engine.records import (
    EngineStatus,
    LicenceStatus,
    Policy,
    Prerequisites,
    ServerHistory,
    ServerStatus,
    SetupInfo,
    TargetStatus,
)
from engine.replication import Replication
from engine.secrets import SecretStore
from engine.server_history import ServerHistories, check_span
from engine.state import ServerRecord, StateDB
from engine.storage import replica
from engine.storage.target import RoutedStorage, TargetSetting, credential_name, read_setting, write_setting
from engine.updater.mobility import MobilityUpdates
from engine.updater.service import Updater


@dataclass(frozen=True)
class Services:
    state: StateDB
    hub: EventHub
    inventory: Inventory
    replication: Replication
    storage: RoutedStorage
    licence: LicenceKeeper
    ports: PortsControl
    data_dir: DataDir
    secrets: SecretStore
    #: The engine's own status (agents, disk space) and the set-up an admin copies to a source.
    status: Callable[[], EngineStatus]
    setup_info: Callable[[], SetupInfo]
    updater: Updater
    #: The mobility version offered to the source servers (None: this engine offers none).
    mobility: MobilityUpdates | None = None
    #: Each server's throughput and RPO over the last hour and day (None: this engine keeps none).
    history: ServerHistories | None = None
    #: The appliance's prerequisites (None: this engine checks none).
    prerequisites: PrerequisiteChecker | None = None

    #: The state database's meta key of when the first-run setup was completed.
    SETUP_COMPLETED = "setup_completed_at"

    def __repr__(self) -> str:
        return f"<Services {self.inventory!r} {self.replication!r} {self.storage!r}>"

    def change_server(self, name: str, change: Callable[[ServerRecord], None]) -> ServerStatus:
        """Apply an admin's change to a server, push its new status to every console, and return it."""
        row = self.inventory.row(name)
        change(row)
        self.inventory.publish(row.server_id)
        return self.inventory.server(name)

    def update_mobility(self, names: list[str]) -> list[ServerStatus]:
        """The admin's Update of the mobility service on these servers (one, or a bulk selection): each installs the
        offered version at its next heartbeat. Returns their new status (also pushed to every console)."""
        if self.mobility is None:
            raise UpdateError("This engine offers no mobility updates.")
        self.mobility.request(names)
        names = list(dict.fromkeys(names))
        for name in names:
            self.inventory.publish(self.inventory.row(name).server_id)
        return [self.inventory.server(name) for name in names]

    # --- the target storage ------------------------------------------------------------------------------------
    def target(self) -> TargetStatus:
        """Where new copies go, and which replicating servers are elsewhere (they keep their target)."""
        setting = read_setting(self.data_dir)
        elsewhere = []
        for row in self.state.servers():
            if row.replicate and row.epoch is not None:
                placed = self.storage.placed(replica(row.server_id, row.epoch))
                if placed is not None and placed != setting:
                    elsewhere.append(row.name)
        return TargetStatus(setting.kind, setting.describe(), setting.account_url, setting.container,
                            tuple(sorted(elsewhere)))

    async def set_target(self, kind: str, *, account_url: str | None = None, container: str | None = None,
                         credential: str | None = None, still_wanted: Callable[[], bool] = lambda: True
                         ) -> TargetStatus:
        """Point new copies at ``local`` or an Azure container. The container is checked first (created if need
        be, a page blob written, snapshotted, read back and deleted, the clock compared): nothing changes if it
        fails, or if the admin gave up meanwhile (``still_wanted``: the console's dialog was closed). The
        credential goes to the secret store only."""
        if kind == "local":
            setting = TargetSetting()
        elif kind == "azure":
            setting = check_azure_target(account_url, container, credential)
            assert setting.account_url is not None and setting.container is not None and credential is not None
            candidate = self.storage.azure(setting.account_url, setting.container, credential.strip())
            try:
                await asyncio.to_thread(candidate.probe_target)
            except OSError as exc:  # unreachable: said as the account, not as an internal error
                raise TargetUnwritable(f"The {setting.describe()} cannot be reached ({exc.strerror or exc}): check "
                                       "the account URL and the appliance's network and proxy.") from exc
        else:
            raise BadInput(f"There is no target {kind!r}: choose local or azure.")
        if not still_wanted():
            raise BadInput("The change of target was cancelled before it was saved; nothing changed.")
        if kind == "azure":
            assert setting.account_url is not None and setting.container is not None and credential is not None
            self.secrets.set(credential_name(setting.account_url, setting.container), credential.strip())
        write_setting(self.data_dir, setting)
        self.hub.publish(PortsChanged(self.ports.status()))  # the firewall rules name the target
        status = self.target()
        kept = f" {len(status.servers_elsewhere)} server(s) already replicating keep their target until disabled " \
               "and enabled again." if status.servers_elsewhere else ""
        self.hub.record("info", "target-changed", f"Servers enabled from now on replicate to {setting.describe()}."
                        + kept)
        return status

    def replicating(self) -> int:
        """How many servers replicate now (what a licence's number of servers counts)."""
        return sum(1 for row in self.state.servers() if row.replicate)

    def enable(self, name: str, policy: str | None) -> ServerStatus:
        """Start replicating a server (the licence must allow one more). One that replicates already is refused:
        its policy changes through its settings (:meth:`Replication.set_policy`)."""
        def change(row: ServerRecord) -> None:
            if not row.replicate:
                self.licence.check_new_server("enable", replicating=self.replicating())
            self.replication.enable(row, policy)

        return self.change_server(name, change)

    def edit_policy(self, name: str, changes: dict[str, str]) -> Policy:
        """Change a policy's settings (only those in ``changes``); every console sees its servers' new terms."""
        policy = self.replication.edit_policy(name, changes)
        for row in self.state.servers():
            if row.replicate and row.policy == name:
                self.inventory.publish(row.server_id)
        return policy

    def delete_policy(self, name: str) -> None:
        """Delete a policy no server replicates with (``default`` never)."""
        self.replication.delete_policy(name)

    def activate_licence(self, text: str) -> LicenceStatus:
        status = self.licence.activate(text, replicating=self.replicating())
        self.hub.publish(LicenceChanged(status))
        return status

    async def backup(self, passphrase: str) -> bytes:
        """An encrypted backup of the appliance (:mod:`engine.backup`), made in a worker thread."""
        from engine.backup import create_backup

        blob = await asyncio.to_thread(create_backup, data_dir=self.data_dir, store=self.secrets, passphrase=passphrase)
        self.hub.record("info", "appliance-backed-up", f"An encrypted backup of the appliance was written "
                        f"({len(blob)} bytes): identity, CA, keys, policies and {self.state.count_servers()} "
                        "registered server(s).")
        return blob

    def setup_completed_at(self) -> float | None:
        """When an admin completed the first-run setup; None on a new appliance."""
        value = self.state.get_meta(self.SETUP_COMPLETED)
        return float(value) if value is not None else None

    def complete_setup(self) -> SetupInfo:
        """Record that the first-run setup is done, once: a second call keeps the first time. The first pushes the
        new set-up to every console and is an event."""
        if self.setup_completed_at() is None:
            self.state.set_meta(self.SETUP_COMPLETED, repr(time.time()))
            self.hub.record("info", "setup-completed", "The first-run setup of the appliance was completed; the "
                            "console no longer opens it by itself (its Setup page runs it again).")
            info = self.setup_info()
            self.hub.publish(SetupChanged(info))
            return info
        return self.setup_info()

    async def check_prerequisites(self, check: str | None) -> Prerequisites:
        """Check the appliance's prerequisites now: all, or only ``check``; the others as last checked."""
        if self.prerequisites is None:
            raise EngineError("This engine does not check the appliance's prerequisites.")
        return await self.prerequisites.check(check)

    def server_history(self, name: str, span: str) -> ServerHistory:
        """Server ``name``'s throughput and RPO over the last ``span`` ("hour" or "day")."""
        check_span(span)
        row = self.inventory.row(name)
        if self.history is None:
            return ServerHistory(name=row.name, span=span, step_seconds=0.0)
        return self.history.history(row.server_id, row.name, span)

    def forget(self, name: str) -> None:
        """Forget a server: its certificate is revoked, its replication and its history go."""
        server_id = self.inventory.row(name).server_id
        self.inventory.forget(name)
        if self.history is not None:
            self.history.forget(server_id)

    def rotate_passphrase(self) -> SetupInfo:
        self.inventory.rotate_passphrase()
        info = self.setup_info()
        self.hub.publish(SetupChanged(info))
        return info

    def received(self, report: ReceivedReport) -> Ack:
        """A process server's report; consoles see the server's new progress."""
        ok = self.replication.received(report)
        if ok:
            self.inventory.publish(report.server_id)
        return Ack(ok)

    def applied(self, report: AppliedReport) -> Ack:
        """A log processor's report; consoles see the server's new points and health."""
        ok = self.replication.applied(report)
        if ok:
            self.inventory.publish(report.server_id)
        return Ack(ok)


_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")


def check_azure_target(account_url: str | None, container: str | None, credential: str | None) -> TargetSetting:
    """An Azure target as typed by the admin, or BadInput saying what is wrong with it."""
    url = (account_url or "").strip().rstrip("/")
    parsed = urlsplit(url)
    if parsed.scheme not in ("https", "http") or not parsed.netloc or parsed.query or parsed.fragment:
        raise BadInput(f"{url or 'The account URL'!r} is not a storage account URL: give one like "
                       "https://ACCOUNT.blob.core.windows.net.")
    name = (container or "").strip()
    if not _CONTAINER.fullmatch(name):
        raise BadInput(f"{name!r} is not a container name: 3 to 63 lowercase letters, digits and single hyphens, "
                       "starting and ending with a letter or digit.")
    if not credential or not credential.strip():
        raise BadInput("No credential was given: give a connection string or a SAS token (a file that holds it).")
    return TargetSetting("azure", url, name)
