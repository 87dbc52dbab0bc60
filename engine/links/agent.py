"""The agent link: appliance agents ↔ engine supervisor (HTTP over ``run/agent.sock``, mode 0600).

The supervisor owns the state database, the CA key and the events; the agents ask and report here.
Each path takes one message and answers one (:data:`ROUTES`):

========================  =========================  ==========================
path                      request                    answer
========================  =========================  ==========================
``POST /agent/register``  :class:`RegisterRequest`   :class:`Registered`
``POST /agent/heartbeat`` :class:`HeartbeatRequest`  :class:`HeartbeatAnswer`
``POST /agent/authorize`` :class:`AuthorizeRequest`  :class:`Authorization`
``POST /agent/received``  :class:`ReceivedReport`    :class:`Ack`
``POST /agent/applied``   :class:`AppliedReport`     :class:`Ack`
``GET /agent/replicating`` —                         :class:`Replicating`
========================  =========================  ==========================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from engine.links import Link
from engine.links.data import StreamState
from engine.links.management import DesiredState, HeartbeatAnswer, Registered, Registration, ServerFacts
from engine.records import HealthCause

#: 1.1: a heartbeat says which management port it came in on.
#: 1.2: an applied report says how far a resync's full pass is (``resync_pass``, ``resync_offset``).
#: 1.3: a received report says when it is the server's own share of the cache that is full (``share_full``).
#: 1.4: an applied report's ``error_code`` may be ``target-unreachable`` (the azure target does not answer).
AGENT_LINK = Link("agent", 1, 4, "agent link")

__all__ = [
    "AGENT_LINK",
    "Ack",
    "AppliedPoint",
    "AppliedReport",
    "Authorization",
    "AuthorizeRequest",
    "HeartbeatAnswer",
    "HeartbeatRequest",
    "ReceivedReport",
    "RegisterRequest",
    "Registered",
    "Replicating",
    "ReplicatingServer",
]


@dataclass(frozen=True)
class RegisterRequest:
    """A registration the replication-manager checked, with the address it came from."""

    FLATTENED: ClassVar = ("registration",)

    registration: Registration
    address: str | None
    #: The management port it came in on (agent link 1.1).
    port: int | None = None


@dataclass(frozen=True)
class HeartbeatRequest:
    """A heartbeat, with the identity from the sender's client certificate."""

    server_id: str
    serial: int
    facts: ServerFacts
    address: str | None
    #: The management port it came in on (None from a replication-manager before agent link 1.1).
    port: int | None = None


@dataclass(frozen=True)
class AuthorizeRequest:
    """May the holder of this certificate stream data? (process-server, per connection)"""

    server_id: str
    serial: int


@dataclass(frozen=True)
class Authorization:
    """Yes, for this server and as this desired state says (``desired.replicate`` may be false)."""

    FLATTENED: ClassVar = ("desired",)

    name: str
    desired: DesiredState


@dataclass(frozen=True)
class ReceivedReport:
    """From the process-server: a disk's stream state after a batch, or why batches are refused."""

    FLATTENED: ClassVar = ("state",)

    server_id: str
    disk: int
    state: StreamState
    cache_full: bool = False
    #: Why batches are refused when the appliance's disk (not the cache limit) is why.
    cache_full_detail: str | None = None
    #: The server's own share of the cache is full (the others still go on).
    share_full: bool = False


@dataclass(frozen=True)
class AppliedPoint:
    id: int
    created_at: float
    kind: str


@dataclass(frozen=True)
class AppliedReport:
    """From the log-processor: how far a disk is applied, its recovery points, and why it stopped."""

    server_id: str
    disk: int
    #: The enabling this is about; a report about an earlier one is ignored.
    epoch: int
    applied_seq: int
    resync_done: int = 0
    bookmark_time: float | None = None
    bookmark_source_time: float | None = None
    error: str | None = None
    #: segment-corrupt | target-full | target-unwritable | target-unreachable (engine.records.HealthCause)
    error_code: HealthCause | None = None
    points: tuple[AppliedPoint, ...] = ()
    #: The resync generation whose full pass has segments applied on this disk (0: none since the log processor
    #: started), and how far into the disk they reach, in bytes (agent link 1.2).
    resync_pass: int = 0
    resync_offset: int = 0


@dataclass(frozen=True)
class Ack:
    """``ok`` is False for a report about a copy that is no longer the current one."""

    ok: bool


@dataclass(frozen=True)
class ReplicatingServer:
    FLATTENED: ClassVar = ("desired",)

    server_id: str
    name: str
    desired: DesiredState


@dataclass(frozen=True)
class Replicating:
    """Every replicating server: what the log processor applies."""

    servers: tuple[ReplicatingServer, ...] = ()
