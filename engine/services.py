"""The appliance's services as the admin API and the agent link see them.

:mod:`engine.appliance` builds one :class:`Services` at start-up; the HTTP handlers reach
everything through it (typed, via an ``AppKey``). Business rules and their events live in the
services, never in a handler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from engine.events import EventHub
from engine.inventory import Inventory
from engine.records import EngineStatus, SetupInfo
from engine.replication import Replication
from engine.state import StateDB
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
