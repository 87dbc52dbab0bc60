"""The management protocol: mobility service ↔ replication-manager (management port, HTTPS).

``GET /v1/ca`` (the CA certificate, PEM), ``POST /v1/register`` (:class:`Registration` →
:class:`Registered`) and ``POST /v1/heartbeat`` with the client certificate (:class:`ServerFacts`
→ :class:`HeartbeatAnswer`). What a source sends is checked field by field here (``parse``); what
the appliance answers is decoded with :func:`engine.links.decode`.

From 1.2 a registered source also reads ``GET /v1/mobility/feed/{metadata,targets}/...`` with its
client certificate: the signed update metadata of the mobility version the appliance offers
(:class:`MobilityUpdate`), and the package, which it verifies against the update feed's trusted root.

From 1.3 anyone who reaches the port reads ``GET /v1/ca.pem`` (the CA certificate again, under a name curl
users expect) and ``GET /v1/mobility/bundle`` (the newest self-contained mobility bundle, a tarball): what the
install line of :mod:`engine.mobility_install` downloads on a source that is not registered yet.

From 1.4 the heartbeat answer names the generation of the server's desired state (``desired_generation``), and
``GET /v1/desired?after=GENERATION&wait=SECONDS`` with the client certificate is a long poll: the appliance answers
(:class:`DesiredChange`) as soon as that server's desired state may have changed, or after ``wait`` seconds with
``changed: false``. A source then sends a heartbeat at once, which brings the new desired state; heartbeats stay
the fallback (an older source never polls, an older appliance never names a generation).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from engine.errors import ProtocolError
from engine.links import Link
from engine.records import Disk

#: 1.1: the heartbeat answer names the management port to use from now on.
#: 1.2: the heartbeat answer offers a mobility version (:class:`MobilityUpdate`), the facts say how the
#: service's own update went (:class:`UpdateReport`), and ``GET /v1/mobility/feed/...`` serves the package.
#: 1.3: ``GET /v1/ca.pem`` and ``GET /v1/mobility/bundle``, public (the self-contained mobility bundle).
#: 1.4: the heartbeat answer's ``desired_generation``, and the long poll ``GET /v1/desired`` (:class:`DesiredChange`).
MANAGEMENT = Link("management", 1, 4, "management protocol")

MAX_DISKS = 64
MAX_NOTICES = 16
_MAX_TEXT = 256


def _text(data: dict[str, Any], key: str, *, max_len: int = _MAX_TEXT, required: bool = True) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise ProtocolError(f"Field {key!r} must be a non-empty string.")
    if len(value) > max_len or not value.isprintable():
        raise ProtocolError(f"Field {key!r} must be printable text of at most {max_len} characters.")
    return value.strip()


def _disks(data: dict[str, Any]) -> tuple[Disk, ...]:
    raw = data.get("disks")
    if not isinstance(raw, list) or len(raw) > MAX_DISKS:
        raise ProtocolError(f"Field 'disks' must be a list of at most {MAX_DISKS} disks.")
    disks = []
    for item in raw:
        if not isinstance(item, dict):
            raise ProtocolError("Each disk must be an object with 'path' and 'size'.")
        size = item.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 2**63:
            raise ProtocolError("A disk's 'size' must be a non-negative integer of bytes.")
        disks.append(Disk(path=_text(item, "path", max_len=4096), size=size,
                          capture=_text(item, "capture", max_len=32, required=False),
                          tracking=_text(item, "tracking", max_len=32, required=False),
                          note=_text(item, "note", max_len=512, required=False)))
    return tuple(disks)


@dataclass(frozen=True)
class Notice:
    """Something the mobility service tells the admin once (an event), e.g. that tracking lost writes."""

    severity: Literal["info", "warning"]
    code: str
    message: str


@dataclass(frozen=True)
class PointFacts:
    """How the mobility service is taking points: the last freeze, and why points are deferred or
    not crash-consistent (None when they are not)."""

    last_freeze_ms: float | None = None
    deferred: str | None = None
    inconsistent: str | None = None


def _notices(data: dict[str, Any]) -> tuple[Notice, ...]:
    raw = data.get("notices", [])
    if not isinstance(raw, list) or len(raw) > MAX_NOTICES:
        raise ProtocolError(f"Field 'notices' must be a list of at most {MAX_NOTICES} notices.")
    out = []
    for item in raw:
        if not isinstance(item, dict) or item.get("severity") not in ("info", "warning"):
            raise ProtocolError("Each notice must be an object with a severity of 'info' or 'warning'.")
        code = _text(item, "code", max_len=64)
        if not all(c.isalnum() or c == "-" for c in code):
            raise ProtocolError("A notice's 'code' may hold only letters, digits and '-'.")
        out.append(Notice(severity=item["severity"], code=code, message=_text(item, "message", max_len=512)))
    return tuple(out)


def _point_facts(data: dict[str, Any]) -> PointFacts | None:
    raw = data.get("points")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ProtocolError("Field 'points' must be an object.")
    ms = raw.get("last_freeze_ms")
    if ms is not None and (not isinstance(ms, int | float) or isinstance(ms, bool) or not 0 <= ms < 1e9):
        raise ProtocolError("Field 'points.last_freeze_ms' must be a number of milliseconds or null.")
    return PointFacts(last_freeze_ms=None if ms is None else float(ms),
                      deferred=_text(raw, "deferred", max_len=512, required=False) or None,
                      inconsistent=_text(raw, "inconsistent", max_len=512, required=False) or None)


def _clock(data: dict[str, Any]) -> float | None:
    value = data.get("clock")
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1e11:
        raise ProtocolError("Field 'clock' must be seconds since the epoch.")
    return float(value)


#: How a mobility service's own update stands: ``updating`` while it downloads and installs a version (sent with
#: every heartbeat meanwhile), then once one of the outcomes.
UpdateOutcome = Literal["updating", "updated", "update-failed", "rolled-back"]
_OUTCOMES = ("updating", "updated", "update-failed", "rolled-back")


@dataclass(frozen=True)
class UpdateReport:
    """How the mobility service's update to ``version`` went (management 1.2). An outcome other than ``updating``
    is sent until a heartbeat carrying it got through: the appliance records it as one event."""

    version: str
    outcome: UpdateOutcome
    #: The version it came from (updated) or went back to (rolled-back); empty when it does not say.
    previous: str = ""
    #: Why it failed or was rolled back, for the admin (empty otherwise).
    reason: str = ""


def _update_report(data: dict[str, Any]) -> UpdateReport | None:
    raw = data.get("update")
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("outcome") not in _OUTCOMES:
        raise ProtocolError(f"Field 'update' must be an object with an outcome of {', '.join(_OUTCOMES)}.")
    return UpdateReport(version=_text(raw, "version", max_len=64), outcome=raw["outcome"],
                        previous=_text(raw, "previous", max_len=64, required=False),
                        reason=_text(raw, "reason", max_len=512, required=False))


@dataclass(frozen=True)
class ServerFacts:
    """What a source server says about itself in every registration and heartbeat."""

    hostname: str
    os: str
    agent_version: str
    disks: tuple[Disk, ...]
    notices: tuple[Notice, ...] = ()
    points: PointFacts | None = None
    #: The source server's wall clock when it sent this (None from services that do not say).
    clock: float | None = None
    #: How the service's own update goes (management 1.2; None: no update under way or to tell).
    update: UpdateReport | None = None

    @classmethod
    def parse(cls, data: Any) -> ServerFacts:
        if not isinstance(data, dict):
            raise ProtocolError("The request body must be a JSON object.")
        return cls(hostname=_text(data, "hostname"), os=_text(data, "os"),
                   agent_version=_text(data, "agent_version", max_len=64), disks=_disks(data),
                   notices=_notices(data), points=_point_facts(data), clock=_clock(data),
                   update=_update_report(data))


@dataclass(frozen=True)
class Registration:
    """``POST /v1/register``: the passphrase, a CSR for the client certificate, and the server's facts
    (the facts' fields sit beside the others in the body)."""

    passphrase: str
    csr: str
    name: str
    facts: ServerFacts

    @classmethod
    def parse(cls, data: Any) -> Registration:
        if not isinstance(data, dict):
            raise ProtocolError("The request body must be a JSON object.")
        name = _text(data, "name", max_len=63)
        if any(c in name for c in "/\\") or name.startswith("."):
            raise ProtocolError("A server name may not contain '/' or '\\' or start with '.'.")
        return cls(passphrase=_text(data, "passphrase", max_len=128), csr=_text_block(data, "csr"), name=name,
                   facts=ServerFacts.parse(data))


def _text_block(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > 8192:
        raise ProtocolError(f"Field {key!r} must be a PEM block of at most 8 KiB.")
    return value


@dataclass(frozen=True)
class PolicyTerms:
    """What a source needs of its replication policy: how often to take which point."""

    name: str
    crash_consistent_every: float
    app_consistent_every: float | None
    retention: float


@dataclass(frozen=True)
class DiskSize:
    """A disk as replication was enabled with it: the seed disk has this size."""

    index: int
    size: int


@dataclass(frozen=True)
class DesiredState:
    """What the appliance wants of a server's replication. The mobility service follows it; the
    process server and the log processor read it over the agent link."""

    replicate: bool
    max_mbps: float | None = None
    #: Resyncs asked for so far: a higher number than the source has done asks for another.
    resync_gen: int = 0
    #: Which enabling of replication is current (None when not replicating): nothing from an earlier
    #: one is ever reused.
    epoch: int | None = None
    policy: PolicyTerms | None = None
    disks: tuple[DiskSize, ...] = ()

    @property
    def disk_sizes(self) -> list[int]:
        return [d.size for d in self.disks]


@dataclass(frozen=True)
class MobilityUpdate:
    """The mobility version the appliance offers a source (management 1.2): the package's path in the feed the
    appliance serves at ``/v1/mobility/feed``, its length and SHA-256 (the signed metadata must say the same),
    and whether to install it now (auto mode, staggered; manual mode once the admin asked)."""

    version: str
    target: str
    length: int
    sha256: str
    install: bool


@dataclass(frozen=True)
class HeartbeatAnswer:
    """The appliance's answer to every heartbeat: when to send the next, where to send data, and
    what to replicate (the desired state's fields sit beside the others on the wire)."""

    FLATTENED: ClassVar = ("desired",)

    heartbeat_interval: float
    data_port: int
    desired: DesiredState
    #: The management port to send heartbeats to from now on (it moved when it differs from the one used);
    #: absent from appliances before management 1.1.
    management_port: int | None = None
    #: A newer mobility version the appliance offers (None: none, or an appliance before management 1.2).
    mobility_update: MobilityUpdate | None = None
    #: The generation of this server's desired state this answer holds (management 1.4): what to long-poll
    #: ``GET /v1/desired`` with. None: an appliance before 1.4, or one that cannot tell now (heartbeats only).
    desired_generation: str | None = None


@dataclass(frozen=True)
class Registered:
    """The answer to a registration: the server's identity and certificate, then a heartbeat's answer
    (its fields beside these on the wire)."""

    FLATTENED: ClassVar = ("answer",)

    server_id: str
    name: str
    certificate: str
    answer: HeartbeatAnswer


#: The longest a long poll of ``GET /v1/desired`` is held (seconds); a longer ``wait`` is cut to it.
MAX_DESIRED_WAIT = 25.0
_GENERATION = re.compile(r"^[0-9a-f]{1,64}$")


@dataclass(frozen=True)
class DesiredWait:
    """``GET /v1/desired?after=GENERATION&wait=SECONDS`` (management 1.4): answer when the server's desired state
    is no longer at generation ``after``, or after ``wait`` seconds (at most :data:`MAX_DESIRED_WAIT`)."""

    after: str
    wait: float = MAX_DESIRED_WAIT

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> DesiredWait:
        after = query.get("after", "")
        if not _GENERATION.match(after):
            raise ProtocolError("Query parameter 'after' must be the desired_generation of a heartbeat's answer "
                                "(1 to 64 hex digits).")
        text = query.get("wait")
        if text is None:
            return cls(after=after)
        try:
            wait = float(text)
        except ValueError:
            wait = float("nan")
        if not 0 <= wait <= 3600:  # NaN too
            raise ProtocolError("Query parameter 'wait' must be a number of seconds from 0 to 3600.")
        return cls(after=after, wait=min(wait, MAX_DESIRED_WAIT))


@dataclass(frozen=True)
class DesiredChange:
    """The answer to the long poll ``GET /v1/desired`` (management 1.4): the generation of the server's desired
    state now, and whether it is another than the one asked about. Changed: send a heartbeat now (its answer
    holds the new desired state). It is a hint, never the state itself: a change it misses is learnt at the
    next heartbeat, one it reports that was none costs one heartbeat."""

    generation: str
    changed: bool
