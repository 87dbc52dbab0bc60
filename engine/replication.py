"""Replication as the supervisor tracks it: policies, enabling, and what the agents report.

The process server reports what it acknowledged per disk, the log processor what it applied and
which recovery points exist; from these the supervisor derives each server's state, progress,
RPO and health, and tells the mobility services (through heartbeats) what to do.
"""

from __future__ import annotations

import bisect
import logging
import re
import time
from dataclasses import dataclass, field
from functools import partial

from engine.durations import duration_text, parse_duration, setting_text
from engine.errors import BadInput, DiskFull, NotFound
from engine.events import EventHub
from engine.links.agent import AppliedReport, ReceivedReport
from engine.links.management import DesiredState, DiskSize, PointFacts, PolicyTerms
from engine.records import DiskStatus, HealthCause, Policy, RecoveryPoint, ServerState, Severity
from engine.state import ServerRecord, StateDB
from engine.storage import Storage

log = logging.getLogger(__name__)

DEFAULT_POLICY = Policy(name="default", rpo_threshold=15 * 60, retention=24 * 3600, crash_consistent_every=5 * 60,
                        app_consistent_every=4 * 3600)
MAX_RETENTION = 15 * 24 * 3600
#: Seconds without acknowledged progress before an initial replication is called stalled.
STALL_AFTER = 120.0
#: Clocks that differ by more than this are a health cause (points and the RPO are still right).
MAX_CLOCK_SKEW = 60.0
#: Seconds without a batch after which a disk shows no rate and no ETA: a rate that old (the
#: appliance refusing batches, the source gone quiet) says nothing about now. At least; longer when
#: at the current rate one batch takes longer (a slow link), so that the rate does not blink.
RATE_STALE_AFTER = 10.0
#: Received reports remembered per disk to value what the log processor applied in bytes: one every report of the
#: process server (a second) while the log processor lags; beyond that the oldest go and the value is approximate.
RECEIVED_MARKS = 4096


#: The settings of a policy an admin types, as fields of :class:`Policy` (each is ``--field-name`` on the CLI).
POLICY_SETTINGS = ("rpo_threshold", "retention", "crash_consistent_every", "app_consistent_every")
#: The bandwidth cap an admin may set, Mbit/s: from 1 Mbit/s to 100 Gbit/s.
MIN_MBPS = 1.0
MAX_MBPS = 100_000.0


def _flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def make_policy(name: str, *, rpo_threshold: str, retention: str, crash_consistent_every: str,
                app_consistent_every: str) -> Policy:
    """A policy from what an admin typed, checked against the product's limits."""
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", name):
        raise BadInput(f"Policy name {name!r}: use letters, digits, '-', '_' or '.' (at most 63).")
    typed = {"rpo_threshold": rpo_threshold, "retention": retention, "crash_consistent_every": crash_consistent_every,
             "app_consistent_every": app_consistent_every}
    blank = Policy(name=name, rpo_threshold=0, retention=0, crash_consistent_every=0, app_consistent_every=None)
    return edited_policy(blank, typed)  # every setting is typed: nothing of ``blank`` but its name stays


def edited_policy(p: Policy, changes: dict[str, str]) -> Policy:
    """``p`` with the settings an admin typed (``changes``: setting -> text) changed and the others kept,
    checked against the product's limits exactly as a new policy is. Raises :class:`BadInput` naming the
    first setting that does not fit; ``p`` itself never changes."""
    unknown = sorted(set(changes) - set(POLICY_SETTINGS))
    if unknown:
        raise BadInput(f"A policy has no setting {unknown[0]!r}; its settings are "
                       f"{', '.join(_flag(s) for s in POLICY_SETTINGS)}.")

    def duration(setting: str) -> float:
        text = changes.get(setting)
        return float(getattr(p, setting)) if text is None else parse_duration(text, _flag(setting))

    rpo_threshold, retention = duration("rpo_threshold"), duration("retention")  # in the order of the options
    crash_every = duration("crash_consistent_every")
    app = changes.get("app_consistent_every")
    if app is None:
        app_every = p.app_consistent_every
    else:
        app_every = None if app.strip().lower() == "off" else parse_duration(app, "--app-consistent-every")
    return check_policy(Policy(name=p.name, rpo_threshold=rpo_threshold, retention=retention,
                               crash_consistent_every=crash_every, app_consistent_every=app_every))


def check_policy(p: Policy) -> Policy:
    """``p`` if its settings are within the product's limits; else :class:`BadInput` saying which is not."""
    if not 0 < p.retention <= MAX_RETENTION:
        raise BadInput("--retention must be more than 0 and at most 15 days.")
    if p.crash_consistent_every < 1:
        raise BadInput("--crash-consistent-every must be at least 1 s.")
    if p.rpo_threshold < 1:
        raise BadInput("--rpo-threshold must be at least 1 s.")
    if p.app_consistent_every is not None and not 3600 <= p.app_consistent_every <= 12 * 3600:
        raise BadInput("--app-consistent-every must be between 1h and 12h, or off.")
    return p


def check_max_mbps(value: object) -> float | None:
    """A bandwidth cap as the admin API takes it: a number of Mbit/s from :data:`MIN_MBPS` to
    :data:`MAX_MBPS`, or None for no cap. Anything else is :class:`BadInput`."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and MIN_MBPS <= value <= MAX_MBPS:
        return float(value)
    raise BadInput(f"The bandwidth cap must be from {MIN_MBPS:g} to {MAX_MBPS:g} Mbit/s, or none.")


def parse_max_mbps(text: str, flag: str = "--max-mbps") -> float | None:
    """A bandwidth cap as an admin types it: Mbit/s from :data:`MIN_MBPS` to :data:`MAX_MBPS`, or ``off``
    (None: no cap). Anything else is :class:`BadInput` in one line naming ``flag``."""
    if text.strip().lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not MIN_MBPS <= value <= MAX_MBPS:  # NaN and infinities too
        raise BadInput(f"{flag} {text!r} is not a bandwidth: give Mbit/s from {MIN_MBPS:g} to {MAX_MBPS:g}, "
                       "or off.")
    return value


#: How the admin reads each setting's name.
_SETTING_NAMES = {"rpo_threshold": "RPO threshold", "retention": "retention",
                  "crash_consistent_every": "crash-consistent every", "app_consistent_every": "app-consistent every"}


@dataclass
class DiskProgress:
    acked_seq: int = 0
    initial_done: int = 0
    initial_complete: bool = False
    bytes_received: int = 0
    last_progress_at: float = field(default_factory=time.time)
    throughput_bps: float = 0.0
    last_step_bytes: int = 0  #: bytes the last progress report added (one batch or a few)
    applied_seq: int = 0
    resync_done: int = 0
    #: The resync whose full pass has segments applied (its generation) and how far into the disk it is (bytes).
    resync_pass: int = 0
    resync_offset: int = 0
    last_bookmark_time: float | None = None  # appliance time at which the newest applied cycle was applied
    last_bookmark_source: float | None = None  # the source's time at which that cycle started
    points: list[RecoveryPoint] = field(default_factory=list)
    error: str | None = None
    #: What kind of stop ``error`` is: segment-corrupt waits for a resync; target-full and
    #: target-unwritable pause applying until the log processor can write again.
    error_code: HealthCause | None = None
    #: Received bytes of the batches the log processor applied (``bytes_received`` as of ``applied_seq``): what
    #: a server's history shows as applied. None until the log processor reported since the engine started and a
    #: received report tells what its ``applied_seq`` is worth.
    bytes_applied: int | None = None
    applied_reported: bool = False
    #: ``(acked_seq, bytes_received)`` as the process server reported them, from the one at or before
    #: ``applied_seq`` on (at most :data:`RECEIVED_MARKS`): what an applied sequence number is worth in bytes.
    received_marks: list[tuple[int, int]] = field(default_factory=list)

    @property
    def received_reported(self) -> bool:
        """Whether the process server reported this disk since the engine started (``bytes_received`` is then
        its count, not a zero that stands for nothing known)."""
        return bool(self.received_marks)

    def note_received_mark(self, seq: int, received: int) -> None:
        """Remember what batch ``seq`` is worth in received bytes (a report older than the newest is ignored)."""
        marks = self.received_marks
        if marks and seq <= marks[-1][0]:
            return
        marks.append((seq, received))
        if len(marks) > RECEIVED_MARKS:
            del marks[:len(marks) - RECEIVED_MARKS]
        self.value_applied()

    def value_applied(self) -> None:
        """``bytes_applied`` from ``applied_seq`` and the marks: exact at a mark, interpolated between two, the
        newest mark's bytes beyond it (the process server's next report adds the rest). Marks wholly behind
        ``applied_seq`` are dropped, but one: it anchors what comes next."""
        marks, seq = self.received_marks, self.applied_seq
        if not self.applied_reported:
            return
        if seq <= 0:
            value: int | None = 0
        else:
            i = bisect.bisect_right(marks, (seq, 2**63))  # marks[:i] are at or before seq
            if i == 0:
                value = None  # marks start after it: unknown (an engine that started after it was applied)
            elif i == len(marks) or marks[i - 1][0] == seq:
                value = marks[i - 1][1]
            else:
                (s0, b0), (s1, b1) = marks[i - 1], marks[i]
                value = b0 + (b1 - b0) * (seq - s0) // (s1 - s0)
            del marks[:max(0, i - 1)]
        if value is not None and (self.bytes_applied is None or value > self.bytes_applied):
            self.bytes_applied = value


@dataclass(frozen=True)
class Summary:
    """A server's replication as the inventory shows it."""

    state: ServerState
    rpo: float | None = None
    last_point: float | None = None
    #: What the RPO is reckoned from (see :attr:`ServerStatus.newest_data_at`).
    newest_data_at: float | None = None
    #: The policy's RPO threshold (None when not replicating).
    rpo_threshold: float | None = None
    #: Why replication is not as it should be, and the sentence for the admin.
    cause: tuple[HealthCause, str] | None = None


class Replication:
    def __init__(self, *, state: StateDB, hub: EventHub, storage: Storage) -> None:
        self._state = state
        self._hub = hub
        self._storage = storage
        self._disks: dict[tuple[str, int], DiskProgress] = {}
        self.cache_full: dict[str, bool] = {}
        #: Why the process server last refused a server's batch, when it says (e.g. the disk's reserve).
        self.cache_full_detail: dict[str, str | None] = {}
        #: Servers whose own share of the cache is full (the process server's last report of them said so).
        self.share_full: dict[str, bool] = {}
        #: How each server's mobility service last said it takes points (from heartbeats).
        self.points_taken: dict[str, PointFacts | None] = {}
        #: How far each source server's clock is ahead of the appliance's (seconds; from heartbeats).
        self.clock_skew: dict[str, float] = {}
        #: Events about applying (paused, resumed, refused) the state database had no room for yet, oldest first:
        #: recorded, in order, at the next report that finds room.
        self._unsaid: list[tuple[Severity, str, str, str]] = []
        if state.policy(DEFAULT_POLICY.name) is None:
            state.add_policy(DEFAULT_POLICY)

    def __repr__(self) -> str:
        return f"<Replication disks={len(self._disks)} unsaid_events={len(self._unsaid)}>"

    # --- policies ------------------------------------------------------------------------------
    def create_policy(self, p: Policy) -> Policy:
        if self._state.policy(p.name) is not None:
            raise BadInput(f"A policy named {p.name!r} exists already; `godwit policy show {p.name}` shows it.")
        self._state.add_policy(p)
        self._hub.record("info", "policy-created", f"Replication policy {p.name} created.")
        return p

    def policy(self, name: str) -> Policy:
        p = self._state.policy(name)
        if p is None:
            raise NotFound(f"No policy named {name!r}. `godwit policy list` shows the policies.")
        return p

    def _chosen_policy(self, name: str) -> Policy:
        """The policy an admin chose for a server; an unknown name is refused with the names there are."""
        p = self._state.policy(name)
        if p is None:
            names = ", ".join(x.name for x in self._state.policies())
            raise NotFound(f"No policy named {name!r}; the policies are: {names}.")
        return p

    def policy_users(self, name: str) -> list[str]:
        """The servers that replicate with this policy, by name."""
        return self._state.policy_users(name)

    def edit_policy(self, name: str, changes: dict[str, str]) -> Policy:
        """Change the settings of a policy that are in ``changes`` (setting -> what the admin typed), checked as
        a new policy is; nothing changes if one is refused. Its servers follow live: their mobility services
        at their next heartbeat, the log processor at its next look, health at once."""
        if not changes:
            raise BadInput("Nothing to change: give --rpo-threshold, --retention, --crash-consistent-every "
                           "and/or --app-consistent-every.")
        before = self.policy(name)
        after = edited_policy(before, changes)
        if after == before:
            return before
        self._state.update_policy(after)
        users = self.policy_users(name)
        changed = ", ".join(f"{_SETTING_NAMES[k]} {setting_text(old)} → {setting_text(new)}" for k in POLICY_SETTINGS
                            if (old := getattr(before, k)) != (new := getattr(after, k)))
        self._hub.record("info", "policy-changed", f"Replication policy {name} changed: {changed}"
                         + (f"; its servers follow from their next cycle: {', '.join(users)}." if users else "."))
        return after

    def delete_policy(self, name: str) -> None:
        """Delete a policy that no server replicates with; ``default`` is never deleted."""
        if name == DEFAULT_POLICY.name:
            raise BadInput("The policy 'default' cannot be deleted: it is the one `godwit vm enable` uses without "
                           "--policy.")
        self.policy(name)
        if not self._state.delete_policy(name):  # a server replicates with it (checked in the same statement)
            users = self.policy_users(name)
            raise BadInput(f"Policy {name!r} is used by {', '.join(users)}: move them to another policy first "
                           "(godwit vm set NAME --policy P).")
        self._hub.record("info", "policy-deleted", f"Replication policy {name} deleted.")

    # --- enabling ------------------------------------------------------------------------------
    def enable(self, row: ServerRecord, policy: str | None) -> None:
        """Start replicating a server. One that replicates already is refused (its policy changes with
        :meth:`set_policy`, never by enabling it again)."""
        if row.replicate:
            raise BadInput(f"{row.name} already replicates with policy {row.policy}: to change its policy, run "
                           f"`godwit vm set {row.name} --policy P`.")
        p = self._chosen_policy(policy or DEFAULT_POLICY.name)
        disks = row.disks
        if not disks or any(d.size == 0 for d in disks):
            raise BadInput(f"{row.name} reports a missing or empty disk; fix it on the source server first.")
        self._state.set_replication(row.server_id, replicate=True, policy=p.name,
                                    disk_sizes=[d.size for d in disks])
        self._hub.record("info", "replication-enabled", f"Replication of {row.name} enabled with policy "
                         f"{p.name}; initial replication starts at its next heartbeat.", server=row.name)

    def set_policy(self, row: ServerRecord, name: str) -> None:
        """Move a replicating server to another policy, live: the copy and its points stay; the new terms
        apply from its next cycle. An unknown policy, or a server that does not replicate, changes nothing."""
        if not row.replicate:
            raise BadInput(f"{row.name} does not replicate: enable it with that policy instead "
                           f"(godwit vm enable {row.name} --policy {name}).")
        p = self._chosen_policy(name)
        if p.name == row.policy:
            return
        self._state.set_policy(row.server_id, p.name)
        self._hub.record("info", "policy-set", f"{row.name} now replicates with policy {p.name} (was "
                         f"{row.policy}); it applies from its next cycle.", server=row.name)

    def resync(self, row: ServerRecord) -> None:
        if not row.replicate:
            raise BadInput(f"{row.name} is not replicating; enable it instead.")
        self._state.request_resync(row.server_id)
        self._hub.record("info", "resync-requested", f"Resync of {row.name} requested: every block is sent "
                         "again and compared; recovery points are kept.", server=row.name)

    def set_max_mbps(self, row: ServerRecord, max_mbps: float | None) -> None:
        max_mbps = check_max_mbps(max_mbps)
        self._state.set_max_mbps(row.server_id, max_mbps)
        self._hub.record("info", "bandwidth-set", f"{row.name}: bandwidth cap "
                         + ("removed." if max_mbps is None else f"set to {max_mbps:g} Mbit/s."), server=row.name)

    def disable(self, row: ServerRecord) -> None:
        """Stop replicating and free the server's cache and target data."""
        self._state.set_replication(row.server_id, replicate=False, policy=None)
        self._state.delete_meta(f"initial-complete.{row.server_id}.", prefix=True)
        self._state.delete_meta(f"resync-complete.{row.server_id}.", prefix=True)
        for key in [k for k in self._disks if k[0] == row.server_id]:
            del self._disks[key]
        self._storage.delete_server(row.server_id)
        self._hub.record("warning", "replication-disabled", f"Replication of {row.name} disabled; its recovery "
                         "points and cached data were deleted.", server=row.name)

    def desired_state(self, row: ServerRecord) -> DesiredState:
        """What the mobility service and the agents should do for this server."""
        if not row.replicate or row.policy is None:
            return DesiredState(replicate=False, max_mbps=row.max_mbps, resync_gen=row.resync_gen)
        p = self.policy(row.policy)
        return DesiredState(replicate=True, max_mbps=row.max_mbps, resync_gen=row.resync_gen, epoch=row.epoch,
                            policy=PolicyTerms(name=p.name, crash_consistent_every=p.crash_consistent_every,
                                               app_consistent_every=p.app_consistent_every, retention=p.retention),
                            disks=tuple(DiskSize(index=i, size=size) for i, size in enumerate(row.replicated_sizes)))

    # --- reports from the agents -------------------------------------------------------------------
    def progress(self, server_id: str, disk: int) -> DiskProgress:
        return self._disks.setdefault((server_id, disk), DiskProgress())

    def received(self, report: ReceivedReport) -> bool:
        """From the process server. False (and nothing changed) when it is about a copy that is no longer
        the current one; an initial replication that just completed is an event."""
        row = self._state.server(server_id=report.server_id)
        if row is None or row.epoch != report.state.epoch:
            return False
        if self._note_received(report):
            # Once per copy and disk: the process server tells its stored states again at every start.
            said = f"initial-complete.{row.server_id}.{row.epoch}.{report.disk}"
            if self._state.get_meta(said) is None:
                self._hub.record("info", "initial-replication-complete",
                                 f"Initial replication of {row.name} disk {report.disk} is complete.", server=row.name)
                self._state.set_meta(said, "1")
        return True

    def applied(self, report: AppliedReport) -> bool:
        """From the log processor. False (and nothing changed) when it is about a copy that was disabled
        (and perhaps enabled again); a stop and a resumption of applying are events."""
        row = self._state.server(server_id=report.server_id)
        if row is None or row.epoch != report.epoch:
            return False
        before = self.progress(row.server_id, report.disk)
        before_error, before_code = before.error, before.error_code
        self._note_applied(report)
        code = report.error_code or HealthCause.SEGMENT_CORRUPT
        if report.error and (report.error, code) != (before_error, before_code):
            text = f"{row.name} disk {report.disk}: {report.error}"
            if code == HealthCause.SEGMENT_CORRUPT:
                self._unsaid.append(("error", "segment-refused", text, row.name))
            else:
                self._unsaid.append(("warning", "apply-paused", text, row.name))
        elif isinstance(before_code, HealthCause) and before_code.pauses_applying and not report.error:
            self._unsaid.append(("info", "apply-resumed", f"{row.name} disk {report.disk}: recovery points are "
                                 "being created again.", row.name))
        self._say_unsaid()
        self._note_resync_complete(row)
        return True

    def _say_unsaid(self) -> None:
        """Record the events about applying that are still owed, oldest first. The change they are about is
        noted already (the report is taken): one the state database has no room for (a full disk: the pause
        is often why) waits for the next report, instead of being lost with a refused report."""
        while self._unsaid:
            severity, code, text, server = self._unsaid[0]
            try:
                self._hub.record(severity, code, text, server=server)
            except DiskFull as exc:
                log.warning("apply.event-deferred code=%s server=%s: %s", code, server, exc)
                return
            self._unsaid.pop(0)

    def _note_resync_complete(self, row: ServerRecord) -> None:
        """Record ``resync-complete`` once per resync, when its pass is applied on every disk (the log
        processor tells its state again at every start: the event is noted durably)."""
        gen = row.resync_gen
        disks = range(len(row.replicated_sizes))
        if gen == 0 or any(self.progress(row.server_id, i).resync_done < gen for i in disks):
            return
        said = f"resync-complete.{row.server_id}.{row.epoch}.{gen}"
        if self._state.get_meta(said) is None:
            self._hub.record("info", "resync-complete", f"Resync of {row.name} is complete: every block of its "
                             f"{len(disks)} disk(s) was compared and sent again; recovery points are taken again.",
                             server=row.name)
            self._state.set_meta(said, "1")

    def _note_received(self, report: ReceivedReport) -> bool:
        """Returns True when an initial replication just completed."""
        p = self.progress(report.server_id, report.disk)
        state = report.state
        now = time.time()
        received = state.bytes_received
        if received > p.bytes_received:
            dt = max(now - p.last_progress_at, 1e-3)
            rate = (received - p.bytes_received) / dt
            p.throughput_bps = rate if p.throughput_bps == 0 else 0.7 * p.throughput_bps + 0.3 * rate
            p.last_progress_at = now
            p.last_step_bytes = received - p.bytes_received
        p.bytes_received = max(p.bytes_received, received)
        p.acked_seq = max(p.acked_seq, state.acked_seq)
        p.note_received_mark(state.acked_seq, received)
        p.initial_done = max(p.initial_done, state.initial_done)
        completed = state.initial_complete and not p.initial_complete
        p.initial_complete = p.initial_complete or state.initial_complete
        self.cache_full[report.server_id] = report.cache_full
        detail = report.cache_full_detail
        self.cache_full_detail[report.server_id] = detail[:1024] if detail else None
        self.share_full[report.server_id] = report.share_full
        return completed

    def _note_applied(self, report: AppliedReport) -> None:
        p = self.progress(report.server_id, report.disk)
        p.applied_seq = report.applied_seq
        p.applied_reported = True
        p.value_applied()
        p.resync_done = report.resync_done
        if report.resync_pass > p.resync_pass:  # a new pass (a restarted log processor says 0 until it applies)
            p.resync_pass, p.resync_offset = report.resync_pass, report.resync_offset
        elif report.resync_pass == p.resync_pass:
            p.resync_offset = max(p.resync_offset, report.resync_offset)
        if report.bookmark_time:
            p.last_bookmark_time = report.bookmark_time
            p.last_bookmark_source = report.bookmark_source_time or None
        p.error = report.error
        # No code: a refusal (log processors before codes). A code this version does not know stays as it
        # came (a pause, shown as it is).
        p.error_code = (report.error_code or HealthCause.SEGMENT_CORRUPT) if report.error else None
        p.points = [RecoveryPoint(id=x.id, created_at=x.created_at, kind=x.kind) for x in report.points]

    # --- what the admin sees ---------------------------------------------------------------------
    def points(self, row: ServerRecord) -> list[RecoveryPoint]:
        """Recovery points of the whole server: those every disk has."""
        disks = row.disks
        if not disks or not row.replicate:
            return []
        per_disk = [{pt.id: pt for pt in self.progress(row.server_id, i).points} for i in range(len(disks))]
        common = set(per_disk[0]).intersection(*per_disk[1:])
        return sorted((per_disk[0][i] for i in common), key=lambda pt: pt.id)

    def disk_statuses(self, row: ServerRecord, now: float | None = None) -> tuple[DiskStatus, ...]:
        """Each disk's progress: through initial replication, then through each resync's full pass (how far
        into the disk its applied segments reach). The rate (and the ETA from it) is the recent one: a disk
        that received no batch for :data:`RATE_STALE_AFTER` seconds (or three times as long as its last batch
        took) shows none."""
        now = time.time() if now is None else now
        out = []
        for i, d in enumerate(row.disks):
            p = self.progress(row.server_id, i)
            phase = ""
            done = d.size
            if row.replicate and not p.initial_complete:
                phase, done = "initial", min(p.initial_done, d.size)
            elif row.replicate and p.resync_done < row.resync_gen:
                # Until its pass has a segment applied a resync is at 0; a pass is done once its last one is.
                phase = "resync"
                done = min(p.resync_offset, d.size) if p.resync_pass > p.resync_done else 0
            hold = max(RATE_STALE_AFTER, 3 * p.last_step_bytes / p.throughput_bps) if p.throughput_bps else 0.0
            rate = p.throughput_bps if row.replicate and now - p.last_progress_at <= hold else 0.0
            eta = (d.size - done) / rate if phase and rate > 0 else None
            out.append(DiskStatus(path=d.path, size=d.size, bytes_done=done if row.replicate else 0,
                                  bytes_total=d.size, throughput_bps=rate, eta_seconds=eta, capture=d.capture,
                                  tracking=d.tracking, note=d.note, phase=phase))
        return tuple(out)

    def summary(self, row: ServerRecord, now: float) -> Summary:
        """State, RPO, last point and the replication health cause (if any) of a server."""
        if not row.replicate:
            return Summary(ServerState.REGISTERED)
        progress = [self.progress(row.server_id, i) for i in range(len(row.disks))]
        points = self.points(row)
        last_point = points[-1].created_at if points else None
        policy = self._state.policy(row.policy) if row.policy else None
        threshold = policy.rpo_threshold if policy is not None else None
        complete = bool(progress) and all(p.initial_complete for p in progress)
        # The newest consistent instant, in the appliance's time: the source's time of the cycle taken back
        # by the clocks' difference, never later than when it was applied. It keeps ageing while the server
        # is paused or in error: that is the data an admin would recover.
        skew = self.clock_skew.get(row.server_id, 0.0)
        bookmarks = [min(p.last_bookmark_time, p.last_bookmark_source - skew) if p.last_bookmark_source
                     else p.last_bookmark_time for p in progress if p.last_bookmark_time is not None]
        newest = min(bookmarks) if complete and len(bookmarks) == len(progress) else None
        rpo = None if newest is None else max(0.0, now - newest)
        stopped = partial(Summary, rpo=rpo, last_point=last_point, newest_data_at=newest, rpo_threshold=threshold)
        changed = disk_change(row)
        if changed is not None:  # nothing is lost, but nothing moves until the disk is back or re-enabled
            return stopped(ServerState.PAUSED, cause=changed)
        stops = [(p.error_code or HealthCause.SEGMENT_CORRUPT, p.error) for p in progress if p.error]
        if stops:  # a refused segment needs the admin; a target that cannot be written heals by itself
            state = ServerState.ERROR if stops[0][0] == HealthCause.SEGMENT_CORRUPT else ServerState.PAUSED
            return stopped(state, cause=stops[0])
        state = ServerState.PROTECTED if complete and points else ServerState.INITIAL_REPLICATION
        if complete and any(p.resync_done < row.resync_gen for p in progress):
            state = ServerState.RESYNCING
        cause: tuple[HealthCause, str] | None = None
        detail = self.cache_full_detail.get(row.server_id)
        if self.cache_full.get(row.server_id) and detail:
            # the process server refused its last batch for the disk's reserve (it says so); until a batch is
            # taken again, that is this server's cause (the supervisor records the disk's events itself)
            cause = (HealthCause.DISK_FULL, detail)
        elif self.cache_full.get(row.server_id) and self.share_full.get(row.server_id):
            cause = (HealthCause.CACHE_FULL, "This server's share of the appliance's cache is full: its data waits "
                     "to be applied while the other servers go on, and it resumes by itself. If it stays so, the "
                     "target storage is slower than this server's changes.")
        elif self.cache_full.get(row.server_id):
            cause = (HealthCause.CACHE_FULL, "The appliance's cache is full: replication waits until the log "
                     "processor catches up. Free space on the appliance or add cache storage.")
        elif state == ServerState.INITIAL_REPLICATION and progress and \
                min(now - p.last_progress_at for p in progress) > STALL_AFTER:
            cause = (HealthCause.INITIAL_REPLICATION_STALLED, "Initial replication made no progress for "
                     f"{STALL_AFTER / 60:.0f} min. Check that the source server reaches the data port.")
        elif (taken := self.points_taken.get(row.server_id)) is not None and taken.deferred:
            cause = (HealthCause.POINT_DEFERRED, taken.deferred)
        elif taken is not None and taken.inconsistent:
            cause = (HealthCause.POINTS_NOT_CRASH_CONSISTENT, f"The last recovery point is not crash-consistent: "
                     f"{taken.inconsistent}. Stop that writer during points, or add a pre-snapshot hook that "
                     "quiesces it.")
        elif abs(skew) > MAX_CLOCK_SKEW:
            cause = (HealthCause.CLOCK_SKEW, f"The clock of {row.hostname or row.name} is "
                     f"{duration_text(abs(skew))} {'ahead of' if skew > 0 else 'behind'} the appliance's. Points "
                     "and the RPO are reckoned with the difference taken out; set both clocks right (NTP).")
        elif rpo is not None and policy is not None and rpo > policy.rpo_threshold:
            cause = (HealthCause.RPO_EXCEEDED, f"The RPO is {rpo / 60:.1f} min, above the policy's threshold of "
                     f"{policy.rpo_threshold / 60:.0f} min. Check the source server's network and the appliance's "
                     "load.")
        return Summary(state, rpo=rpo, last_point=last_point, cause=cause, newest_data_at=newest,
                       rpo_threshold=threshold)


def disk_change(row: ServerRecord) -> tuple[HealthCause, str] | None:
    """A source disk that vanished or changed size since replication was enabled, as a health cause."""
    now = row.disks
    then = row.replicated_sizes
    for i, size in enumerate(then):
        if i >= len(now) or now[i].size == 0:
            path = now[i].path if i < len(now) else f"disk {i}"
            return (HealthCause.DISK_MISSING, f"{path} is gone from {row.name} (or cannot be read): replication of "
                    "it is paused. Reattach it, or disable and enable replication to start over without it.")
        if now[i].size != size:
            return (HealthCause.DISK_SIZE_CHANGED, f"{now[i].path} on {row.name} changed size from {size} to "
                    f"{now[i].size} bytes: replication is paused. Disable and enable replication to start over "
                    "with the new size.")
    return None
