"""The admin API: CLI and console ↔ engine (HTTP over ``admin.sock``, mode 0600), and its push stream.

Requests and answers are the records of :mod:`engine.records`. ``GET /v1/stream`` sends one JSON
object per line: a :class:`Hello` snapshot first, then one message per change. Each line has a
``type`` (:data:`STREAM_TYPES`); a reader skips types it does not know (a newer minor version).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import ProtocolError
from engine.links import Link, decode, encode
from engine.records import (
    ApplianceHealth,
    EngineStatus,
    Event,
    LicenceStatus,
    PortsStatus,
    ServerStatus,
    SetupInfo,
    UpdatesStatus,
)

#: 1.1: the licence and the ports (Hello fields, LicenceChanged, PortsChanged, their requests).
#: 1.2: agent updates (Hello.updates, UpdatesChanged, the /v1/agents requests).
#: 1.3: policies edited (PATCH) and deleted (DELETE /v1/policies/{name}), a server's policy in its settings,
#: ServerStatus.newest_data_at and rpo_threshold, DiskStatus.phase (a resync's progress).
#: 1.4: the appliance's own health (Hello.health, ApplianceHealthChanged, GET /v1/appliance/health).
#: 1.5: the first-run setup (SetupInfo.setup_completed_at, POST /v1/setup/complete), the prerequisites
#: (POST /v1/appliance/prerequisites) and a server's history (GET /v1/servers/{name}/history?span=hour|day).
#: 1.6: the target storage (GET and PUT /v1/target).
#: 1.7: SetupInfo.install_command (the one line that installs the mobility bundle from the appliance).
ADMIN = Link("admin", 1, 7, "admin API")


@dataclass(frozen=True)
class Hello:
    """The first message: everything a console shows, as of now."""

    engine: EngineStatus
    setup: SetupInfo
    servers: tuple[ServerStatus, ...]
    #: Events up to this id are in ``GET /v1/events``; later ones arrive as :class:`EventAdded`.
    last_event_id: int
    #: None from an engine before admin 1.1.
    licence: LicenceStatus | None = None
    ports: PortsStatus | None = None
    #: None from an engine before admin 1.2.
    updates: UpdatesStatus | None = None
    #: None from an engine before admin 1.4.
    health: ApplianceHealth | None = None


@dataclass(frozen=True)
class ServerChanged:
    server: ServerStatus


@dataclass(frozen=True)
class ServerRemoved:
    name: str


@dataclass(frozen=True)
class EventAdded:
    event: Event


@dataclass(frozen=True)
class EngineChanged:
    engine: EngineStatus


@dataclass(frozen=True)
class SetupChanged:
    setup: SetupInfo


@dataclass(frozen=True)
class LicenceChanged:
    """The licence changed: activated, expired, a warning threshold crossed, or a day went by."""

    licence: LicenceStatus


@dataclass(frozen=True)
class PortsChanged:
    ports: PortsStatus


@dataclass(frozen=True)
class UpdatesChanged:
    """Agent updates changed: a check, a stage of an install, a mode, a version."""

    updates: UpdatesStatus


@dataclass(frozen=True)
class ApplianceHealthChanged:
    """The appliance's health as last sampled (sent with each sample, every 15 s: the values move too)."""

    health: ApplianceHealth


StreamMessage = (Hello | ServerChanged | ServerRemoved | EventAdded | EngineChanged | SetupChanged | LicenceChanged
                 | PortsChanged | UpdatesChanged | ApplianceHealthChanged)
#: The ``type`` of each stream message on the wire.
STREAM_TYPES: dict[str, type[Any]] = {"hello": Hello, "server": ServerChanged, "server-removed": ServerRemoved,
                                      "event": EventAdded, "engine": EngineChanged, "setup": SetupChanged,
                                      "licence": LicenceChanged, "ports": PortsChanged,
                                      "updates": UpdatesChanged, "appliance-health": ApplianceHealthChanged}
_TYPE_OF = {cls: name for name, cls in STREAM_TYPES.items()}


def encode_message(message: StreamMessage) -> dict[str, Any]:
    """One line of the stream (without the newline)."""
    return {"type": _TYPE_OF[type(message)], **encode(message)}


def decode_message(data: Any) -> StreamMessage | None:
    """A stream line; None for a type this version does not know (skip it)."""
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError("An admin stream line must be a JSON object with a type.")
    cls = STREAM_TYPES.get(data["type"])
    if cls is None:
        return None
    message: StreamMessage = decode(cls, data, link=ADMIN)
    return message
