"""The appliance's services as the admin API and the agent link see them.

:mod:`engine.appliance` builds one :class:`Services` at start-up; the HTTP handlers reach
everything through it (typed, via an ``AppKey``). Business rules, their events and the pushes to
the consoles live in the services, never in a handler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from engine.events import EventHub
from engine.inventory import Inventory
from engine.links.admin import SetupChanged
from engine.links.agent import Ack, AppliedReport, ReceivedReport
from engine.records import EngineStatus, ServerStatus, SetupInfo
from engine.replication import Replication
from engine.state import ServerRecord, StateDB
from engine.storage import Storage


@dataclass(frozen=True)
class Services:
    state: StateDB
    hub: EventHub
    inventory: Inventory
    replication: Replication
    storage: Storage
    #: The engine's own status (agents, disk space) and the set-up an admin copies to a source.
    status: Callable[[], EngineStatus]
    setup_info: Callable[[], SetupInfo]

    def __repr__(self) -> str:
        return f"<Services {self.inventory!r} {self.replication!r} {self.storage!r}>"

    def change_server(self, name: str, change: Callable[[ServerRecord], None]) -> ServerStatus:
        """Apply an admin's change to a server, push its new status to every console, and return it."""
        row = self.inventory.row(name)
        change(row)
        self.inventory.publish(row.server_id)
        return self.inventory.server(name)

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
