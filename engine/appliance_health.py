"""The appliance's own health, measured by the engine supervisor every :data:`SAMPLE_EVERY` seconds.

The thresholds are those appliance admins know from a process server:

``cpu``
    above 80 % (warning) or 95 % (critical) of the machine, held for 15 minutes (a brief spike does not count).
``memory``
    above 80 % / 95 % used (MemTotal − MemAvailable), held for 15 minutes.
``cache-free``
    the cache's file system below 30 % / 25 % free (the figure :mod:`engine.diskspace` measures).
``backlog``
    the bytes waiting in the cache would take more than 30 / 45 minutes to apply at the recent apply rate
    (held for a few samples, so that a batch that just arrived does not count).
``agent``
    an appliance agent has not touched its alive file for 15 minutes (critical).

The worst alert is the appliance's level. :class:`HealthJudge` decides from readings (pure: tests feed it
readings on a fake clock); :class:`ApplianceHealthMonitor` takes the readings (``/proc``, the cache, the
alive files) and keeps the last 24 hours at one sample a minute, in memory.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from engine.diskspace import human_bytes
from engine.durations import duration_text
from engine.records import (
    AgentLife,
    ApplianceHealth,
    DiskSpace,
    HealthAlert,
    HealthLevel,
    HealthSample,
    HealthThresholds,
    Severity,
)

log = logging.getLogger(__name__)

#: Seconds between two samples; tests shorten it (and the durations below) through the environment.
SAMPLE_EVERY = 15.0
SAMPLE_EVERY_ENV = "GODWIT_HEALTH_SAMPLE_EVERY"
SUSTAIN_ENV = "GODWIT_HEALTH_SUSTAIN"  # how long CPU and memory must stay past a threshold; also the rate window
AGENT_SILENT_ENV = "GODWIT_HEALTH_AGENT_SILENT"
#: Samples a backlog must stay past a threshold before it counts.
BACKLOG_HOLD_SAMPLES = 4
#: History kept: one sample a minute for 24 hours.
HISTORY_MINUTES = 24 * 60
#: Seconds of CPU time measured for the first sample (later ones measure since the previous sample).
FIRST_CPU_WINDOW = 0.25
_RANK: dict[HealthLevel, int] = {"healthy": 0, "warning": 1, "critical": 2}


def thresholds_from_env(environ: dict[str, str] | None = None) -> HealthThresholds:
    """The default thresholds, with the durations the environment overrides (seconds)."""
    env = os.environ if environ is None else environ
    default = HealthThresholds()
    return replace(default, sustain=float(env.get(SUSTAIN_ENV, default.sustain)),
                   agent_silent=float(env.get(AGENT_SILENT_ENV, default.agent_silent)))


def sample_every_from_env(environ: dict[str, str] | None = None) -> float:
    env = os.environ if environ is None else environ
    return max(0.1, float(env.get(SAMPLE_EVERY_ENV, SAMPLE_EVERY)))


@dataclass(frozen=True)
class Reading:
    """What one sample measured. ``mono`` is a clock that never jumps (durations); ``at`` the wall clock."""

    at: float
    mono: float
    cpu_percent: float | None = None
    memory_percent: float | None = None
    cache_free_percent: float | None = None
    cache_mount: str = ""
    backlog_bytes: int | None = None
    #: Bytes received into the cache since the engine started (only ever grows): with the backlog, what was applied.
    received_bytes: int = 0
    #: Each agent and when it last touched its alive file (epoch seconds; None: never).
    agents: tuple[tuple[str, float | None], ...] = ()


def _past(value: float, threshold: float, *, below: bool = False) -> bool:
    return value < threshold if below else value > threshold


class HealthJudge:
    """Turns readings into :class:`ApplianceHealth`: thresholds, how long each was held, the apply rate, history.

    Not thread-safe; the monitor calls it from the event loop only.
    """

    def __init__(self, thresholds: HealthThresholds, *, backlog_hold: float, logs: Path | None = None) -> None:
        self.thresholds = thresholds
        self._backlog_hold = backlog_hold
        self._logs = logs
        self._past_since: dict[tuple[str, HealthLevel], float] = {}  # (metric, level) -> mono when it went past
        self._applied: deque[tuple[float, float, int]] = deque()  # (mono, seconds since previous, bytes applied)
        self._previous: Reading | None = None
        self._history: deque[HealthSample] = deque(maxlen=HISTORY_MINUTES)
        self._alive: dict[str, tuple[float | None, float]] = {}  # agent -> (alive file's time, mono it was seen)
        self.health = ApplianceHealth(thresholds=thresholds)

    def __repr__(self) -> str:
        return (f"<HealthJudge level={self.health.level} alerts={[a.metric for a in self.health.alerts]} "
                f"history={len(self._history)}>")

    def history(self) -> tuple[HealthSample, ...]:
        return tuple(self._history)

    def _held(self, metric: str, level: HealthLevel, past: bool, now: float, hold: float) -> bool:
        """True once ``past`` has been true at every reading for ``hold`` seconds; a reading not past starts over."""
        key = (metric, level)
        if not past:
            self._past_since.pop(key, None)
            return False
        since = self._past_since.setdefault(key, now)
        return now - since >= hold

    def _level(self, metric: str, value: float, warning: float, critical: float, now: float, hold: float, *,
               below: bool = False, margin: float = 1.0) -> tuple[HealthLevel, float] | None:
        """The level ``value`` has held for ``hold`` seconds, and its threshold; None while within both. An alert
        that stands clears only once the value is ``margin`` back inside its threshold: a value wavering across it
        is one alert, not one a sample."""
        standing = {(a.metric, a.level) for a in self.health.alerts}

        def past(threshold: float, level: HealthLevel) -> bool:
            if (metric, level) in standing:
                threshold = threshold + margin if below else threshold - margin
            return _past(value, threshold, below=below)

        critical_held = self._held(metric, "critical", past(critical, "critical"), now, hold)
        warning_held = self._held(metric, "warning", past(warning, "warning"), now, hold)
        if critical_held:
            return "critical", critical
        if warning_held:
            return "warning", warning
        return None

    def _apply_rate(self, r: Reading) -> float | None:
        """Bytes a second applied over the last ``sustain`` seconds; None before two samples with a backlog."""
        prev, self._previous = self._previous, r
        if prev is None or prev.backlog_bytes is None or r.backlog_bytes is None:
            return None
        applied = max(0, prev.backlog_bytes + (r.received_bytes - prev.received_bytes) - r.backlog_bytes)
        self._applied.append((r.mono, max(r.mono - prev.mono, 1e-6), applied))
        while self._applied and self._applied[0][0] < r.mono - self.thresholds.sustain:
            self._applied.popleft()
        seconds = sum(dt for _, dt, _ in self._applied)
        return sum(n for _, _, n in self._applied) / seconds if seconds > 0 else None

    def judge(self, r: Reading) -> ApplianceHealth:
        """The appliance's health as of reading ``r`` (readings come in time order)."""
        t = self.thresholds
        alerts: list[HealthAlert] = []
        held = duration_text(t.sustain)
        if r.cpu_percent is not None:
            found = self._level("cpu", r.cpu_percent, t.cpu_warning, t.cpu_critical, r.mono, t.sustain)
            if found:
                level, limit = found
                alerts.append(HealthAlert(
                    metric="cpu", level=level, value=r.cpu_percent, threshold=limit,
                    message=f"The appliance's CPU has been above {limit:.0f} % busy for {held} (now "
                            f"{r.cpu_percent:.0f} %), so replication slows down: find what else runs on this machine "
                            "or give it more CPUs."))
        if r.memory_percent is not None:
            found = self._level("memory", r.memory_percent, t.memory_warning, t.memory_critical, r.mono, t.sustain)
            if found:
                level, limit = found
                alerts.append(HealthAlert(
                    metric="memory", level=level, value=r.memory_percent, threshold=limit,
                    message=f"The appliance's memory has been more than {limit:.0f} % used for {held} (now "
                            f"{r.memory_percent:.0f} %), so the appliance agents may be killed: find what uses it or "
                            "give this machine more memory."))
        if r.cache_free_percent is not None:
            found = self._level("cache-free", r.cache_free_percent, t.cache_free_warning, t.cache_free_critical,
                                r.mono, 0.0, below=True)
            if found:
                level, limit = found
                where = f" at {r.cache_mount}" if r.cache_mount else ""
                alerts.append(HealthAlert(
                    metric="cache-free", level=level, value=r.cache_free_percent, threshold=limit,
                    message=f"The cache's file system{where} has {r.cache_free_percent:.1f} % free, below the "
                            f"{limit:.0f} % {level} level: free space there or move the data directory to a larger "
                            "disk before the appliance stops accepting replication data."))
        rate = self._apply_rate(r)
        drain: float | None = None
        if r.backlog_bytes is not None and rate is not None:
            drain = 0.0 if r.backlog_bytes == 0 else (r.backlog_bytes / rate if rate > 0 else math.inf)
            found = self._level("backlog", drain, t.backlog_warning, t.backlog_critical, r.mono, self._backlog_hold,
                                margin=60.0)
            if found:
                level, limit = found
                alerts.append(HealthAlert(metric="backlog", level=level,
                                          value=None if math.isinf(drain) else drain, threshold=limit,
                                          message=self._backlog_message(r.backlog_bytes, rate, drain, limit, level)))
        lives = []
        for name, seen in r.agents:
            # Silence is counted on the clock that never jumps, from the reading at which the alive file's time
            # last changed: a wall clock set forward (or a file time from another clock) is not silence.
            known = self._alive.get(name)
            if known is None or (seen is not None and seen != known[0]):
                known = (seen, r.mono)
                self._alive[name] = known
            silent = max(0.0, r.mono - known[1])
            lives.append(AgentLife(name=name, last_seen=seen, silent_seconds=silent))
            if silent >= t.agent_silent:
                log_file = f" ({self._logs / (name + '.log')})" if self._logs else ""
                alerts.append(HealthAlert(
                    metric="agent", level="critical", value=silent, threshold=t.agent_silent, agent=name,
                    message=f"Appliance agent {name} has not shown it runs for {duration_text(silent)}: read its "
                            f"log{log_file} and restart the engine if it does not recover by itself."))
        alerts.sort(key=lambda a: -_RANK[a.level])
        level = alerts[0].level if alerts else "healthy"
        self.health = ApplianceHealth(
            level=level, alerts=tuple(alerts), sampled_at=r.at, cpu_percent=r.cpu_percent,
            memory_percent=r.memory_percent, cache_free_percent=r.cache_free_percent, cache_mount=r.cache_mount,
            backlog_bytes=r.backlog_bytes, apply_rate_bps=rate,
            backlog_drain_seconds=None if drain is None or math.isinf(drain) else drain, agents=tuple(lives),
            thresholds=t)
        sample = HealthSample(at=r.at, cpu_percent=r.cpu_percent, memory_percent=r.memory_percent,
                              cache_free_percent=r.cache_free_percent, backlog_bytes=r.backlog_bytes,
                              apply_rate_bps=rate)
        if self._history and int(self._history[-1].at // 60) == int(r.at // 60):
            self._history[-1] = sample  # one sample a minute: the latest of that minute
        else:
            self._history.append(sample)
        return self.health

    def _backlog_message(self, backlog: int, rate: float, drain: float, limit: float, level: HealthLevel) -> str:
        waiting = f"{human_bytes(backlog)} of replication data wait in the cache"
        if math.isinf(drain):
            return (f"{waiting} and none was applied in the last {duration_text(self.thresholds.sustain)}: check "
                    "that the log processor runs (its log) and that the target storage can be written.")
        return (f"{waiting} and would take {duration_text(drain)} to apply at the recent rate of "
                f"{human_bytes(int(rate))}/s, beyond the {duration_text(limit)} {level} level: check the log "
                "processor's log and the target storage's speed.")


# --- readings ----------------------------------------------------------------------------------
def cpu_times(stat: Path = Path("/proc/stat")) -> tuple[int, int]:
    """``(busy, total)`` jiffies of the whole machine since boot (idle and iowait are not busy)."""
    with stat.open() as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return total - idle, total


def cpu_percent(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    busy, total = after[0] - before[0], after[1] - before[1]
    return min(100.0, max(0.0, 100.0 * busy / total)) if total > 0 else None


def memory_percent(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    """Percent of memory in use: MemTotal − MemAvailable."""
    values: dict[str, int] = {}
    with meminfo.open() as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                values[key] = int(rest.split()[0])
    total, available = values.get("MemTotal"), values.get("MemAvailable")
    if not total or available is None:
        return None
    return min(100.0, max(0.0, 100.0 * (total - available) / total))


class ApplianceHealthMonitor:
    """Samples the appliance every ``sample_every`` seconds (:meth:`watch`) and hands ``on_sample`` the health
    before and after each sample. Reads of files and ``/proc`` run in a worker thread; the callables it is given
    run on the event loop (they may read the state database)."""

    def __init__(self, *, agents: Callable[[], Iterable[str]], alive_file: Callable[[str], Path],
                 disk_space: Callable[[], DiskSpace | None], backlog: Callable[[], int],
                 received: Callable[[], dict[tuple[str, int], int]],
                 on_sample: Callable[[ApplianceHealth, ApplianceHealth], None], logs: Path | None = None,
                 thresholds: HealthThresholds | None = None, sample_every: float | None = None) -> None:
        self.sample_every = sample_every_from_env() if sample_every is None else sample_every
        self.judge = HealthJudge(thresholds or thresholds_from_env(),
                                 backlog_hold=BACKLOG_HOLD_SAMPLES * self.sample_every,
                                 logs=logs)
        self._agents = agents
        self._alive_file = alive_file
        self._disk_space = disk_space
        self._backlog = backlog
        self._received_by_disk = received
        self._on_sample = on_sample
        self._cpu: tuple[int, int] | None = None
        self._received_seen: dict[tuple[str, int], int] = {}
        self._received_total = 0

    def __repr__(self) -> str:
        return f"<ApplianceHealthMonitor every={self.sample_every}s {self.judge!r}>"

    def health(self, *, history: bool = False) -> ApplianceHealth:
        now = self.judge.health
        return replace(now, history=self.judge.history()) if history else now

    def _received(self) -> int:
        """Bytes received into the cache since the engine started: the sum of each disk's growth (a disk whose
        count starts over, a new copy, adds nothing until it grows again)."""
        for key, count in self._received_by_disk().items():
            before = self._received_seen.get(key)
            if before is not None and count > before:
                self._received_total += count - before
            self._received_seen[key] = count
        return self._received_total

    def _measure(self, names: list[str]) -> tuple[float | None, float | None, int | None, list[float | None]]:
        """The readings that touch files (in a worker thread)."""
        now = cpu_times()
        cpu = cpu_percent(self._cpu, now) if self._cpu is not None else None
        self._cpu = now
        memory = memory_percent()
        try:
            backlog: int | None = self._backlog()
        except OSError as exc:
            log.warning("health.backlog-unreadable: %s", exc)
            backlog = None
        seen: list[float | None] = []
        for name in names:
            try:
                seen.append(self._alive_file(name).stat().st_mtime)
            except FileNotFoundError:
                seen.append(None)
        return cpu, memory, backlog, seen

    async def sample(self) -> ApplianceHealth:
        """Take one sample, judge it and hand it to ``on_sample``."""
        names = list(self._agents())
        if self._cpu is None:  # the first CPU figure needs a window to measure over
            self._cpu = cpu_times()
            await asyncio.sleep(FIRST_CPU_WINDOW)  # on the loop: a sleep in a thread fails under a shifted clock
        cpu, memory, backlog, seen = await asyncio.to_thread(self._measure, names)
        space = self._disk_space()
        free = 100.0 * space.free_bytes / space.size_bytes if space is not None and space.size_bytes else None
        reading = Reading(at=time.time(), mono=time.monotonic(), cpu_percent=cpu, memory_percent=memory,
                          cache_free_percent=free, cache_mount=space.mount_point if space is not None else "",
                          backlog_bytes=backlog, received_bytes=self._received(),
                          agents=tuple(zip(names, seen, strict=True)))
        before = self.judge.health
        after = self.judge.judge(reading)
        if [(a.metric, a.level) for a in after.alerts] != [(a.metric, a.level) for a in before.alerts]:
            log.info("health.changed level=%s alerts=%s", after.level, [a.metric for a in after.alerts])
        self._on_sample(before, after)  # consoles show the live values; events tell only what is new
        return after

    async def watch(self) -> None:
        """Sample until cancelled; a failed sample is logged and the next one is taken on time."""
        while True:
            try:
                await self.sample()
            except Exception:
                log.exception("health.sample-failed")
            await asyncio.sleep(self.sample_every)


#: The severity of the ``appliance-health`` event of each level.
EVENT_SEVERITY: dict[HealthLevel, Severity] = {"healthy": "info", "warning": "warning", "critical": "error"}
HEALTHY_AGAIN = ("The appliance is healthy again: CPU, memory, cache space, backlog and agents are within their "
                 "thresholds.")


def health_events(before: ApplianceHealth, after: ApplianceHealth) -> list[tuple[Severity, str]]:
    """The ``appliance-health`` events a change brings: one for each alert that is new or went up a level (its own
    message: an agent falling silent is told even while the CPU already made the appliance critical), and one
    when the last alert clears."""
    def key(a: HealthAlert) -> tuple[str, str | None]:
        return a.metric, a.agent

    had = {key(a): _RANK[a.level] for a in before.alerts}
    events: list[tuple[Severity, str]] = [(EVENT_SEVERITY[a.level], a.message) for a in after.alerts
                                          if _RANK[a.level] > had.get(key(a), -1)]
    if before.alerts and not after.alerts:
        events.append(("info", HEALTHY_AGAIN))
    return events

