"""Typed results the engine hands out, and their one JSON form.

Everything that crosses the admin API is one of these frozen dataclasses; :func:`to_json` and
:func:`from_json` are the only serialisers, so the CLI, the console and the tests read the same
shape.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, TypeVar

Severity = Literal["info", "warning", "error"]
AgentState = Literal["starting", "running", "restarting", "stopped"]


class Health(StrEnum):
    HEALTHY = "healthy"
    WARNING = "warning"
    CRITICAL = "critical"


class ServerState(StrEnum):
    """Where a registered server's replication stands."""

    REGISTERED = "registered"  #: not replicating
    INITIAL_REPLICATION = "initial-replication"
    PROTECTED = "protected"  #: initial replication complete and a recovery point exists
    RESYNCING = "resyncing"
    PAUSED = "paused"  #: nothing moves until the cause goes away (by itself or by the admin)
    ERROR = "error"  #: the admin must act (a refused segment: resync)


class HealthCause(StrEnum):
    """Why a server is not healthy. ``label`` is how a person reads the code."""

    AGENT_NOT_SEEN = "agent-not-seen"
    DISK_FULL = "disk-full"  #: the appliance's data directory (recorded once, as an appliance event)
    DISK_SPACE_LOW = "disk-space-low"  #: the same, below the warning level
    CACHE_FULL = "cache-full"
    INITIAL_REPLICATION_STALLED = "initial-replication-stalled"
    POINT_DEFERRED = "point-deferred"
    POINTS_NOT_CRASH_CONSISTENT = "points-not-crash-consistent"
    CLOCK_SKEW = "clock-skew"
    RPO_EXCEEDED = "rpo-exceeded"
    SEGMENT_CORRUPT = "segment-corrupt"  #: a refused segment: waits for a resync
    TARGET_FULL = "target-full"  #: the seed disk's file system is full: applying pauses
    TARGET_UNWRITABLE = "target-unwritable"  #: the seed disk cannot be written: applying pauses
    TARGET_UNREACHABLE = "target-unreachable"  #: the target storage does not answer: applying pauses
    DISK_MISSING = "disk-missing"
    DISK_SIZE_CHANGED = "disk-size-changed"

    @property
    def label(self) -> str:
        return self.value.replace("-", " ")

    @property
    def about_appliance_disk(self) -> bool:
        """A cause that comes from the appliance's own disk, recorded once by the supervisor, not per server."""
        return self in (HealthCause.DISK_SPACE_LOW, HealthCause.DISK_FULL)

    @property
    def pauses_applying(self) -> bool:
        """A cause that stops the log processor until it can write again (it heals by itself)."""
        return self in (HealthCause.TARGET_FULL, HealthCause.TARGET_UNWRITABLE, HealthCause.TARGET_UNREACHABLE)


@dataclass(frozen=True)
class Disk:
    """A source disk as its mobility service describes it."""

    path: str
    size: int
    #: How a point takes it at one instant: "freeze" (its file systems), "clone" (reflink),
    #: "idle-check" (consistent only while not written), "none" (never crash-consistent).
    capture: str = ""
    #: How its changes are found: "block-trace", "extent-map", "file-stamp", "full-compare".
    tracking: str = ""
    #: The same in a sentence for the admin.
    note: str = ""


@dataclass(frozen=True)
class ServerStatus:
    """A registered source server as the admin sees it."""

    server_id: str
    name: str
    hostname: str
    os: str
    agent_version: str
    state: ServerState
    health: Health
    health_cause: HealthCause | None
    health_detail: str | None
    registered_at: float
    last_heartbeat: float | None
    address: str | None
    disks: tuple[DiskStatus, ...] = ()
    replicating: bool = False
    policy: str | None = None
    max_mbps: float | None = None
    #: Seconds between ``newest_data_at`` and when this status was made: it grows while nothing new arrives.
    #: A reader ages it itself from ``newest_data_at`` (kept for consoles before admin 1.3).
    rpo_seconds: float | None = None
    #: When the newest recovery point was created (epoch seconds, the appliance's clock).
    last_recovery_point: float | None = None
    #: The newest instant of the server that the appliance holds on every disk (epoch seconds: the source's time
    #: of that data, with the clocks' difference taken out): the RPO is now minus this. None until there is one.
    newest_data_at: float | None = None
    #: The RPO above which the server is unhealthy (seconds, from its policy); None when not replicating.
    rpo_threshold: float | None = None
    #: The mobility service version the server runs (what its last heartbeat said).
    mobility_version: str = ""
    #: Its update against the mobility version the appliance offers: "up-to-date", "update-available",
    #: "updating", "update-failed"; empty when the appliance offers none.
    mobility_update: str = ""

    @property
    def total_size(self) -> int:
        return sum(d.size for d in self.disks)

    def rpo_at(self, now: float) -> float | None:
        """The RPO at ``now`` (epoch seconds), aged from ``newest_data_at``; an engine before admin 1.3 sends
        only ``rpo_seconds``, as of when it made the status. None while there is no consistent data yet."""
        if self.newest_data_at is not None:
            return max(0.0, now - self.newest_data_at)
        return self.rpo_seconds


@dataclass(frozen=True)
class Policy:
    """A replication policy. Durations in seconds; ``app_consistent_every`` None means off."""

    name: str
    rpo_threshold: float
    retention: float
    crash_consistent_every: float
    app_consistent_every: float | None


@dataclass(frozen=True)
class DiskStatus:
    """A source disk and how far its replication is."""

    path: str
    size: int
    bytes_done: int = 0
    bytes_total: int = 0
    throughput_bps: float = 0.0
    eta_seconds: float | None = None
    capture: str = ""
    tracking: str = ""
    note: str = ""
    #: What ``bytes_done`` counts: "initial" (initial replication), "resync" (a resync's full pass), "" when the
    #: disk is in step (or not replicating). Text, not an enum: a newer engine may add phases.
    phase: str = ""


@dataclass(frozen=True)
class RecoveryPoint:
    id: int
    created_at: float
    kind: str


@dataclass(frozen=True)
class Event:
    id: int
    ts: float
    severity: Severity
    code: str
    message: str
    server: str | None = None


@dataclass(frozen=True)
class SetupInfo:
    appliance_id: str
    passphrase: str
    ca_fingerprint: str
    management_port: int
    data_port: int
    secret_store: str
    host: str
    mobility_command: str
    #: When an admin finished (or closed as done) the first-run setup wizard; None on a new appliance, whose
    #: console then opens the wizard by itself (admin 1.5).
    setup_completed_at: float | None = None
    #: The one line that downloads the mobility bundle from this appliance, checks it against the CA fingerprint
    #: and installs it on a source server (:func:`engine.mobility_install.install_command`); "" from an engine
    #: before admin 1.7.
    install_command: str = ""


@dataclass(frozen=True)
class AgentStatus:
    """One appliance agent process under the supervisor."""

    name: str
    version: str
    state: AgentState
    pid: int | None
    restarts: int
    #: Restarts in the last hour: a crash loop shows here while ``restarts`` only ever grows.
    restarts_last_hour: int = 0


DiskLevel = Literal["ok", "warning", "critical", "full"]


@dataclass(frozen=True)
class DiskSpace:
    """Free space of the file system that holds the data directory, as the supervisor last measured it.

    Sizes count what ``df`` counts (used + available): blocks the file system keeps for root are
    neither. ``level`` is ok, warning (below 30 % free), critical (below 25 %) or full (below the
    reserve the process server keeps: it refuses replication data). ``detail`` says it in a sentence
    for the admin (None when ok).
    """

    path: str
    mount_point: str
    free_bytes: int
    size_bytes: int
    reserve_bytes: int
    level: DiskLevel
    detail: str | None = None


@dataclass(frozen=True)
class EngineStatus:
    pid: int
    version: str
    started_at: float
    data_dir: str
    agents: tuple[AgentStatus, ...] = field(default_factory=tuple)
    disk_space: DiskSpace | None = None

    @property
    def healthy(self) -> bool:
        return all(a.state == "running" for a in self.agents) and \
            (self.disk_space is None or self.disk_space.level == "ok")


HealthLevel = Literal["healthy", "warning", "critical"]


@dataclass(frozen=True)
class HealthAlert:
    """One threshold the appliance is past: what, how far, and a sentence with the cause and what to do."""

    #: "cpu", "memory", "cache-free", "backlog" or "agent" (text: a newer engine may add metrics).
    metric: str = ""
    level: HealthLevel = "warning"
    #: The measured value in the metric's unit (percent; seconds to drain the backlog); None for a backlog that
    #: does not drain at all.
    value: float | None = None
    threshold: float = 0.0
    message: str = ""
    #: The appliance agent an ``agent`` alert is about.
    agent: str | None = None


@dataclass(frozen=True)
class HealthThresholds:
    """Where each metric turns warning and critical, and how long it must stay there."""

    cpu_warning: float = 80.0
    cpu_critical: float = 95.0
    memory_warning: float = 80.0
    memory_critical: float = 95.0
    #: Percent free of the cache's file system below which it is warning, critical.
    cache_free_warning: float = 30.0
    cache_free_critical: float = 25.0
    #: Seconds the backlog would take to drain at the recent apply rate.
    backlog_warning: float = 1800.0
    backlog_critical: float = 2700.0
    #: Seconds CPU and memory must stay past a threshold before they count (a brief spike does not).
    sustain: float = 900.0
    #: Seconds an appliance agent may go without touching its alive file.
    agent_silent: float = 900.0


@dataclass(frozen=True)
class HealthSample:
    """One minute of the appliance's health history (the last sample of that minute)."""

    at: float = 0.0
    cpu_percent: float | None = None
    memory_percent: float | None = None
    cache_free_percent: float | None = None
    backlog_bytes: int | None = None
    apply_rate_bps: float | None = None


@dataclass(frozen=True)
class AgentLife:
    """When an appliance agent last showed it runs (its alive file)."""

    name: str = ""
    #: Epoch seconds; None when it never did since the engine started.
    last_seen: float | None = None
    silent_seconds: float = 0.0


@dataclass(frozen=True)
class ApplianceHealth:
    """The appliance's own health (``godwit appliance health``): the worst alert's level, the alerts, the values
    they were judged on, and (on request) the history of the last 24 hours."""

    level: HealthLevel = "healthy"
    alerts: tuple[HealthAlert, ...] = ()
    #: When the values were measured (epoch seconds); None before the first sample.
    sampled_at: float | None = None
    cpu_percent: float | None = None
    memory_percent: float | None = None
    cache_free_percent: float | None = None
    #: Where the cache lives (the file system's mount point).
    cache_mount: str = ""
    #: Bytes received into the cache and not applied yet, the recent apply rate, and the drain time at that rate
    #: (None when the backlog does not drain).
    backlog_bytes: int | None = None
    apply_rate_bps: float | None = None
    backlog_drain_seconds: float | None = None
    agents: tuple[AgentLife, ...] = ()
    thresholds: HealthThresholds = field(default_factory=HealthThresholds)
    history: tuple[HealthSample, ...] = ()


LicenceState = Literal["evaluation", "active", "expired"]
#: How loudly the console shows the licence: nothing, an amber banner (30 days left or fewer), a red one (7 or fewer).
LicenceAlarm = Literal["none", "warning", "critical"]


@dataclass(frozen=True)
class LicenceStatus:
    """The appliance's licence as the admin sees it (``godwit license show``)."""

    state: LicenceState
    #: Whole days until the licence ends (rounded up; 0 once expired); None for a licence without an end.
    days_left: int | None
    expires_at: float | None
    activated_at: float | None
    licensee: str | None
    #: How many servers may replicate at once; None when unlimited.
    max_servers: int | None
    evaluation_started_at: float
    alarm: LicenceAlarm = "none"
    #: The banner's sentence: what is about to happen and what to do (empty when ``alarm`` is none).
    message: str = ""
    #: The warning threshold reached (30, 14, 7, 3 or 1 days left; 0 once expired); None before the first. The
    #: console notifies the desktop once per threshold.
    threshold: int | None = None
    #: True while the appliance's clock is behind the latest time it has seen: the licence is reckoned from that.
    clock_rolled_back: bool = False


@dataclass(frozen=True)
class FirewallRule:
    """One rule the network around the appliance needs."""

    direction: Literal["inbound", "outbound"]
    protocol: str
    port: int | None
    #: Who is on the other side: "source servers", "target storage", ...
    peer: str
    purpose: str


@dataclass(frozen=True)
class TargetStatus:
    """Where seed disks and recovery points go (``godwit target show``). The credential is never part of it."""

    #: Where servers enabled from now on replicate: ``local`` or ``azure``.
    kind: str
    #: The same in words: ``this appliance's own disk (local)``, ``container C of https://…``.
    location: str
    account_url: str | None = None
    container: str | None = None
    #: Servers replicating to another target than this one: they keep theirs until disabled and enabled again.
    servers_elsewhere: tuple[str, ...] = ()


@dataclass(frozen=True)
class PortsStatus:
    """Where the appliance listens (``godwit ports show``)."""

    management_port: int
    data_port: int
    #: The address both ports listen on; 0.0.0.0 is every IPv4 address of this machine.
    listen_address: str
    firewall: tuple[FirewallRule, ...] = ()
    #: While the management port moves: the old port, still served until every registered server has reached
    #: the new one or until ``old_port_closes_at``; ``servers_not_moved`` are those not seen on the new one yet.
    old_management_port: int | None = None
    old_port_closes_at: float | None = None
    servers_not_moved: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConnectivityCheck:
    """One result of ``godwit ports test``."""

    name: str
    ok: bool
    #: What was found.
    detail: str
    #: What to do when it failed (empty when ok).
    fix: str = ""


@dataclass(frozen=True)
class ServerReach:
    """When a registered server last reached each port of the appliance."""

    name: str
    management_at: float | None
    management_port: int | None
    data_at: float | None


@dataclass(frozen=True)
class ConnectivityReport:
    checks: tuple[ConnectivityCheck, ...]
    servers: tuple[ServerReach, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)



UpdateMode = Literal["auto", "manual"]
#: Where an agent stands against the update feed.
UpdateState = Literal["up-to-date", "update-available", "updating", "update-failed", "cannot-update"]
#: The steps of an install, in order (``updating``).
UpdateStage = Literal["downloading", "verifying", "installing", "health-check"]


@dataclass(frozen=True)
class AgentUpdate:
    """One appliance agent's versions (``godwit agents list``)."""

    name: str
    #: How the admin knows it: "Replication manager".
    title: str
    installed_version: str
    #: The newest version the feed offers that may be installed beside the others; None when unknown or none.
    available_version: str | None
    #: The version kept for rollback; None when there is none.
    previous_version: str | None
    status: UpdateState
    #: Why it failed or cannot update, and what to do (None otherwise).
    reason: str | None = None
    stage: UpdateStage | None = None
    #: Within the stage, 0..1 (downloading); None when not measured.
    progress: float | None = None


@dataclass(frozen=True)
class UpdatesStatus:
    """Agent updates as the admin sees them: the mode, the feed, and every agent."""

    mode: UpdateMode
    #: The daily check-and-install time of auto mode, "HH:MM" in the appliance's local time.
    window: str
    feed_url: str | None
    agents: tuple[AgentUpdate, ...]
    last_check_at: float | None = None
    #: The last check that reached the feed and verified it.
    last_success_at: float | None = None
    #: Why the last check failed and what to do (None when it succeeded).
    check_error: str | None = None
    #: Auto mode: when the pending updates (if any) will be installed.
    next_install_at: float | None = None
    #: True while the agents run different versions (one updated, another not): the console recommends Update all.
    mismatched: bool = False


T = TypeVar("T")


def to_json(obj: Any) -> Any:
    """A record (or list of records) as plain JSON values. The fields a record names in
    ``FLATTENED`` are written beside its own fields, not nested (a wire shape that predates them)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        flat: tuple[str, ...] = getattr(type(obj), "FLATTENED", ())
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = to_json(getattr(obj, f.name))
            if f.name in flat:
                out.update(value)
            else:
                out[f.name] = value
        return out
    if isinstance(obj, list | tuple):
        return [to_json(x) for x in obj]
    return obj


def type_hints(cls: type[Any]) -> dict[str, Any]:
    """A record class's field types, resolved once per class (resolving them is slow)."""
    hints: dict[str, Any] | None = cls.__dict__.get("__godwit_hints__")
    if hints is None:
        hints = typing.get_type_hints(cls)
        type.__setattr__(cls, "__godwit_hints__", hints)
    return hints


def from_json(cls: type[T], data: Any) -> T:
    """Rebuild a record from :func:`to_json` output; unknown keys are ignored (newer engines)."""
    hints = type_hints(cls)
    flat: tuple[str, ...] = getattr(cls, "FLATTENED", ())
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in flat:  # its fields sit beside ours
            kwargs[f.name] = _convert(hints[f.name], data)
        elif f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name])
    return cls(**kwargs)


def _convert(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _member(tp, value)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_json(tp, value)  # type: ignore[arg-type]
    if origin is tuple and isinstance(value, list):
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_convert(item_tp, v) for v in value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if isinstance(arg, type) and dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return from_json(arg, value)
            if isinstance(arg, type) and issubclass(arg, enum.Enum) and value is not None:
                return _member(arg, value)
    return value


def _member(tp: type[enum.Enum], value: Any) -> Any:
    """An enum member; a value this version does not know (a newer peer's) stays as it came."""
    try:
        return tp(value)
    except ValueError:
        return value


#: How a prerequisite of the appliance stands: fine, works but below what is advised, or blocks the appliance.
PrerequisiteStatus = Literal["ok", "warning", "failed"]


@dataclass(frozen=True)
class PrerequisiteCheck:
    """One prerequisite of the appliance, as the first-run wizard and ``godwit appliance check`` show it."""

    #: "ports", "cache-space", "clock", "secret-store", "sizing" or "target" (text: a newer engine may add checks).
    key: str
    #: What is checked, as a title ("Ports free").
    title: str
    status: PrerequisiteStatus
    #: What the check found, in one sentence with the figures.
    found: str
    #: What to do about it, in one sentence; empty when the check is ok.
    action: str = ""


@dataclass(frozen=True)
class Prerequisites:
    """The appliance's prerequisites as last checked (admin 1.5)."""

    checks: tuple[PrerequisiteCheck, ...] = ()
    #: When they were checked (epoch seconds); None before the first check.
    checked_at: float | None = None


@dataclass(frozen=True)
class ServerSample:
    """One step of a server's history: what arrived and what was applied over the step, and the RPO at its end."""

    at: float
    #: Bytes a second received from the source into the appliance's cache over the step.
    received_bps: float = 0.0
    #: Bytes a second applied to the server's target disks over the step.
    applied_bps: float = 0.0
    #: The RPO at the end of the step (seconds); None while there was no consistent data yet.
    rpo_seconds: float | None = None


@dataclass(frozen=True)
class ServerHistory:
    """A server's throughput and RPO over the last hour or day, oldest sample first (admin 1.5)."""

    name: str
    #: "hour" or "day".
    span: str
    #: Seconds each sample covers.
    step_seconds: float
    samples: tuple[ServerSample, ...] = ()
