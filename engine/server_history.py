"""Each server's throughput and RPO over the last hour and the last day, as the server detail charts them.

Every :data:`HOUR_STEP` seconds the engine reads, for every replicating server, two counters per disk and its RPO:

``received``
    bytes the process server acknowledged into the cache (its reports' ``bytes_received``);
``applied``
    the received bytes of the batches the log processor has applied (:attr:`DiskProgress.bytes_applied`);
``rpo``
    the server's RPO at that moment (:meth:`Replication.summary`, the same figure ``vm show`` gives).

A sample holds the counters' growth over the step divided by the step (bytes a second) and the RPO at its end.
A counter that starts over (a disk whose replication was enabled again) or is not known yet adds nothing for that
step. The hour keeps one sample every :data:`HOUR_STEP` seconds, the day one every :data:`DAY_STEP` seconds (the
sum of its hour steps). A server that does not replicate gets no samples (the chart shows a gap); a forgotten
server's history is dropped.

The samples are kept in memory (about 20 bytes a sample, some 36 KB a replicating server); the day's are also
written to the state database as they are taken (:class:`HistoryStore`), so that the last day survives a restart
of the engine. The last hour starts over at a restart (a console says that there are no samples yet). A full disk
loses the day's samples until there is room again; it never takes the state database's reserve.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from engine.errors import BadInput, EngineError
from engine.records import ServerHistory, ServerSample

log = logging.getLogger(__name__)

#: Seconds between two samples of the last hour; tests shorten it through the environment.
HOUR_STEP = 10.0
STEP_ENV = "GODWIT_HISTORY_STEP"
#: Hour steps in one step of the last day (one a minute).
DAY_STEPS = 6
DAY_STEP = HOUR_STEP * DAY_STEPS
#: The spans a history is asked for, and the seconds each covers.
SPANS: dict[str, float] = {"hour": 3600.0, "day": 86400.0}
#: The most samples a span keeps whatever the step (a test's short step must not grow memory without bound).
MAX_SAMPLES = 20_000


def step_from_env(environ: dict[str, str] | None = None) -> float:
    """The hour's step: :data:`HOUR_STEP`, or what ``GODWIT_HISTORY_STEP`` says (tests; at least 0.1 s)."""
    env = os.environ if environ is None else environ
    try:
        return max(0.1, float(env.get(STEP_ENV, HOUR_STEP)))
    except ValueError:
        return HOUR_STEP


def check_span(span: str) -> str:
    """``span`` if it is one a history is kept for; else :class:`BadInput` in one line naming them."""
    if span not in SPANS:
        raise BadInput(f"Span {span[:40]!r} is not kept: ask for {' or '.join(SPANS)}.")
    return span


class HistoryStore(Protocol):
    """Where the day's samples are kept across restarts (the state database: :class:`engine.state.StateDB`)."""

    def add_history(self, rows: list[tuple[str, float, float, float, float | None]], *, keep_after: float) -> None:
        ...

    def history(self, *, since: float) -> list[tuple[str, float, float, float, float | None]]:
        ...


@dataclass(frozen=True)
class ServerReading:
    """What one server's counters say now."""

    #: Per disk: bytes received into the cache, and bytes of them applied (None: not known yet, e.g. not reported
    #: since the engine started: its first value then only says where the count starts).
    disks: tuple[tuple[int | None, int | None], ...] = ()
    rpo_seconds: float | None = None


class SampleRing:
    """The newest ``capacity`` samples of one span, in flat arrays: the time in a double, the rates and the RPO
    in floats (NaN: no RPO). Appending past the capacity overwrites the oldest."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._at = array("d", bytes(8 * capacity))
        self._values = array("f", bytes(4 * 3 * capacity))
        self._next = 0
        self._count = 0

    def __repr__(self) -> str:
        return f"<SampleRing {self._count}/{self.capacity}>"

    def __len__(self) -> int:
        return self._count

    def append(self, sample: ServerSample) -> None:
        i = self._next
        self._at[i] = sample.at
        self._values[3 * i] = sample.received_bps
        self._values[3 * i + 1] = sample.applied_bps
        self._values[3 * i + 2] = math.nan if sample.rpo_seconds is None else sample.rpo_seconds
        self._next = (i + 1) % self.capacity
        self._count = min(self._count + 1, self.capacity)

    def samples(self, since: float = -math.inf) -> tuple[ServerSample, ...]:
        """The samples taken after ``since``, oldest first."""
        out = []
        start = (self._next - self._count) % self.capacity
        for k in range(self._count):
            i = (start + k) % self.capacity
            at = self._at[i]
            if at <= since:
                continue
            rpo = self._values[3 * i + 2]
            out.append(ServerSample(at=at, received_bps=float(self._values[3 * i]),
                                    applied_bps=float(self._values[3 * i + 1]),
                                    rpo_seconds=None if math.isnan(rpo) else float(rpo)))
        return tuple(out)


def _grown(before: int | None, now: int | None) -> int:
    """What a counter grew by; nothing when either is unknown or it started over."""
    if before is None or now is None or now < before:
        return 0
    return now - before


@dataclass
class _Server:
    hour: SampleRing
    day: SampleRing
    #: The counters at the previous step, and when it was taken (monotonic).
    disks: tuple[tuple[int | None, int | None], ...] | None = None
    mono: float = 0.0
    #: The day step being summed: bytes received and applied, seconds, hour steps.
    day_sum: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])


class ServerHistories:
    """Every server's history (see the module's doc). :meth:`tick` takes a step from readings (pure: tests feed it
    readings and clock values); :meth:`watch` takes one every ``step`` seconds from ``read``, on the event loop
    (``read`` may use the state database)."""

    def __init__(self, *, read: Callable[[], dict[str, ServerReading | None]] | None = None,
                 step: float | None = None, day_steps: int = DAY_STEPS, store: HistoryStore | None = None) -> None:
        self.step = step_from_env() if step is None else step
        self.day_steps = day_steps
        self._read = read
        self._store = store
        self._servers: dict[str, _Server] = {}

    def __repr__(self) -> str:
        return f"<ServerHistories step={self.step}s servers={len(self._servers)}>"

    @property
    def day_step(self) -> float:
        return self.step * self.day_steps

    def _capacity(self, span: str, step: float) -> int:
        return min(MAX_SAMPLES, math.ceil(SPANS[span] / step) + 1)

    def _server(self, server_id: str) -> _Server:
        server = self._servers.get(server_id)
        if server is None:
            server = self._servers[server_id] = _Server(SampleRing(self._capacity("hour", self.step)),
                                                        SampleRing(self._capacity("day", self.day_step)))
        return server

    def load(self, *, now: float) -> int:
        """The day's samples from the store (after a restart); returns how many."""
        if self._store is None:
            return 0
        rows = self._store.history(since=now - SPANS["day"])
        for server_id, at, received, applied, rpo in rows:
            self._server(server_id).day.append(ServerSample(at=at, received_bps=received, applied_bps=applied,
                                                            rpo_seconds=rpo))
        return len(rows)

    def tick(self, readings: dict[str, ServerReading | None], *, at: float, mono: float) -> None:
        """One step: a sample for every server with a reading and an earlier step; servers missing from
        ``readings`` were forgotten and their history goes; a None reading (not replicating) adds nothing."""
        for gone in self._servers.keys() - readings.keys():
            del self._servers[gone]
        day: list[tuple[str, float, float, float, float | None]] = []
        for server_id, reading in readings.items():
            if reading is None:
                if server_id in self._servers:  # when it replicates again its counters and minute start afresh
                    self._servers[server_id].disks = None
                    self._servers[server_id].day_sum = [0.0, 0.0, 0.0, 0.0]
                continue
            server = self._server(server_id)
            before, seconds = server.disks, mono - server.mono
            server.disks, server.mono = reading.disks, mono
            if before is None or seconds <= 0:
                continue  # the first step of a server only sets where its counters start
            received = sum(_grown(before[i][0] if i < len(before) else None, rx)
                           for i, (rx, _) in enumerate(reading.disks))
            applied = sum(_grown(before[i][1] if i < len(before) else None, ap)
                          for i, (_, ap) in enumerate(reading.disks))
            server.hour.append(ServerSample(at=at, received_bps=received / seconds, applied_bps=applied / seconds,
                                            rpo_seconds=reading.rpo_seconds))
            total = server.day_sum
            total[0] += received
            total[1] += applied
            total[2] += seconds
            total[3] += 1
            if total[3] >= self.day_steps:
                sample = ServerSample(at=at, received_bps=total[0] / total[2], applied_bps=total[1] / total[2],
                                      rpo_seconds=reading.rpo_seconds)
                server.day.append(sample)
                server.day_sum = [0.0, 0.0, 0.0, 0.0]
                day.append((server_id, at, sample.received_bps, sample.applied_bps, sample.rpo_seconds))
        if day and self._store is not None:
            try:
                self._store.add_history(day, keep_after=at - SPANS["day"])
            except EngineError as exc:  # a full disk: the samples stay in memory, the next minute tries again
                log.warning("history.not-stored samples=%d: %s", len(day), exc)

    def forget(self, server_id: str) -> None:
        """Drop a server's history now (it was forgotten)."""
        self._servers.pop(server_id, None)

    def history(self, server_id: str, name: str, span: str, *, now: float | None = None) -> ServerHistory:
        """Server ``name``'s samples of the last ``span`` ("hour" or "day"), oldest first."""
        check_span(span)
        now = time.time() if now is None else now
        step = self.step if span == "hour" else self.day_step
        server = self._servers.get(server_id)
        samples = () if server is None else (server.hour if span == "hour" else server.day).samples(now - SPANS[span])
        return ServerHistory(name=name, span=span, step_seconds=step, samples=samples)

    async def watch(self) -> None:
        """Take a step every ``step`` seconds until cancelled; a failed step is logged and the next taken on time."""
        if self._read is None:
            raise RuntimeError("ServerHistories.watch needs a read function")
        while True:
            try:
                self.tick(self._read(), at=time.time(), mono=time.monotonic())
            except Exception:
                log.exception("history.step-failed")
            await asyncio.sleep(self.step)
