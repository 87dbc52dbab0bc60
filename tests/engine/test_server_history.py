"""Each server's history: rates from the agents' counters, the hour's and the day's steps, bounded rings, a forgotten
server; and what an applied sequence number is worth in received bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import BadInput
from engine.records import ServerSample
from engine.replication import RECEIVED_MARKS, DiskProgress
from engine.server_history import SPANS, SampleRing, ServerHistories, ServerReading, step_from_env
from engine.state import StateDB

T0 = 1_800_000_000.0


def _tick(h: ServerHistories, n: int, readings: dict[str, ServerReading | None]) -> None:
    h.tick(readings, at=T0 + n * h.step, mono=n * h.step)


def test_rates_come_from_counter_growth_over_the_step() -> None:
    """The first step only sets where counters start; later steps are growth / step, summed over disks, with the
    RPO at the end of the step; a count that starts over or is unknown adds nothing."""
    h = ServerHistories(step=10.0)
    _tick(h, 0, {"s": ServerReading(disks=((1000, 0), (0, None)), rpo_seconds=None)})
    assert h.history("s", "web", "hour", now=T0).samples == ()
    _tick(h, 1, {"s": ServerReading(disks=((11_000, 5000), (2000, None)), rpo_seconds=None)})
    _tick(h, 2, {"s": ServerReading(disks=((500, 6000), (2000, 1000)), rpo_seconds=42.0)})  # disk 0 started over
    samples = h.history("s", "web", "hour", now=T0 + 20).samples
    assert samples == (ServerSample(at=T0 + 10, received_bps=1200.0, applied_bps=500.0, rpo_seconds=None),
                       ServerSample(at=T0 + 20, received_bps=0.0, applied_bps=100.0, rpo_seconds=42.0))


def test_the_day_sums_six_hour_steps() -> None:
    """One day sample every six hour steps: the bytes of those steps over their seconds, the RPO at the end."""
    h = ServerHistories(step=10.0)
    for n in range(13):
        _tick(h, n, {"s": ServerReading(disks=((n * 600, n * 300),), rpo_seconds=float(n))})
    day = h.history("s", "web", "day", now=T0 + 130)
    assert day.step_seconds == 60.0 and day.span == "day"
    assert [(s.at, s.received_bps, s.applied_bps, s.rpo_seconds) for s in day.samples] == [
        (T0 + 60, 60.0, 30.0, 6.0), (T0 + 120, 60.0, 30.0, 12.0)]
    assert len(h.history("s", "web", "hour", now=T0 + 130).samples) == 12


def test_rings_are_bounded_and_old_samples_leave_the_span() -> None:
    """A ring keeps its capacity's newest samples, oldest first; history only shows those within the span."""
    ring = SampleRing(3)
    for i in range(5):
        ring.append(ServerSample(at=float(i), received_bps=i, applied_bps=0.0, rpo_seconds=None if i % 2 else 1.0))
    assert len(ring) == 3 and [s.at for s in ring.samples()] == [2.0, 3.0, 4.0]
    assert [s.rpo_seconds for s in ring.samples()] == [1.0, None, 1.0]
    assert [s.at for s in ring.samples(since=2.5)] == [3.0, 4.0]

    h = ServerHistories(step=10.0)
    for n in range(400):
        _tick(h, n, {"s": ServerReading(disks=((n, n),))})
    hour = h.history("s", "web", "hour", now=T0 + 399 * 10).samples
    assert len(hour) == 360 and hour[0].at == T0 + 40 * 10  # exactly the last hour
    assert h.history("s", "web", "hour", now=T0 + 399 * 10 + 7200).samples == ()
    assert h._servers["s"].hour.capacity == SPANS["hour"] / 10 + 1  # memory stays bounded


def test_not_replicating_then_forgotten() -> None:
    """A server that stops replicating gets no samples but keeps its past ones, and starts afresh when it
    replicates again; a server missing from the readings (forgotten) loses its history; so does forget()."""
    h = ServerHistories(step=10.0)
    _tick(h, 0, {"s": ServerReading(disks=((0, 0),)), "t": ServerReading(disks=((0, 0),))})
    _tick(h, 1, {"s": ServerReading(disks=((100, 0),)), "t": ServerReading(disks=((0, 0),))})
    _tick(h, 2, {"s": None, "t": ServerReading(disks=((0, 0),))})
    _tick(h, 3, {"s": ServerReading(disks=((50_000, 0),)), "t": ServerReading(disks=((0, 0),))})  # a new copy
    assert [s.received_bps for s in h.history("s", "web", "hour", now=T0 + 30).samples] == [10.0]
    _tick(h, 4, {"s": ServerReading(disks=((50_100, 0),))})
    assert h.history("t", "db", "hour", now=T0 + 40).samples == ()
    assert len(h.history("s", "web", "hour", now=T0 + 40).samples) == 2
    h.forget("s")
    assert h.history("s", "web", "hour", now=T0 + 40).samples == () and "servers=0" in repr(h)


def test_spans_and_step_from_the_environment() -> None:
    """Only hour and day are kept (one line naming them otherwise); the step comes from the environment."""
    with pytest.raises(BadInput, match="ask for hour or day"):
        ServerHistories(step=10.0).history("s", "web", "week")
    assert step_from_env({}) == 10.0 and step_from_env({"GODWIT_HISTORY_STEP": "0.5"}) == 0.5
    assert step_from_env({"GODWIT_HISTORY_STEP": "0"}) == 0.1 and step_from_env({"GODWIT_HISTORY_STEP": "x"}) == 10.0


def test_applied_bytes_from_received_marks() -> None:
    """What the log processor applied is valued by what the process server received up to that batch: exact at a
    reported batch, interpolated between two, unknown before the first mark (an engine that just started), and it
    never goes back; the marks stay bounded."""
    p = DiskProgress()
    p.note_received_mark(1, 100)
    assert p.bytes_applied is None and p.received_reported  # the log processor has not reported yet
    p.applied_reported = True
    p.value_applied()
    assert p.bytes_applied == 0
    for seq, received in ((2, 200), (4, 600), (10, 1800)):
        p.note_received_mark(seq, received)
    p.applied_seq = 3
    p.value_applied()
    assert p.bytes_applied == 400 and p.received_marks[0] == (2, 200)
    p.applied_seq = 10
    p.value_applied()
    assert p.bytes_applied == 1800 and p.received_marks == [(10, 1800)]
    p.applied_seq = 12  # ahead of the reports: the newest mark until the next report
    p.value_applied()
    p.note_received_mark(12, 2000)
    assert p.bytes_applied == 2000

    late = DiskProgress()
    assert not late.received_reported
    late.note_received_mark(100, 10_000)
    late.applied_seq, late.applied_reported = 50, True
    late.value_applied()
    assert late.bytes_applied is None
    for seq in range(101, 101 + RECEIVED_MARKS + 10):
        late.note_received_mark(seq, seq * 100)
    assert len(late.received_marks) == RECEIVED_MARKS


def _db(tmp_path: Path) -> StateDB:
    db = StateDB(tmp_path / "state.db")
    for sid in ("s", "t"):
        db.add_server(server_id=sid, name=f"name-{sid}", hostname=sid, os="Linux", agent_version="0.1.0",
                      cert_serial=int.from_bytes(sid.encode(), "big"), address=None, disks=[])
    return db


def test_the_day_survives_a_restart_in_the_state_database(tmp_path: Path) -> None:
    """Day samples are written to the state database as they are taken and read back by a new engine's history
    (the hour starts over); samples older than a day are deleted; a forgotten server's rows go with it; samples of
    a server that is not registered (forgotten meanwhile) are not stored."""
    db = _db(tmp_path)
    h = ServerHistories(step=10.0, store=db)
    for n in range(13):
        _tick(h, n, {"s": ServerReading(disks=((n * 600, n * 300),), rpo_seconds=float(n)),
                     "gone": ServerReading(disks=((n, n),))})
    assert [r[:2] for r in db.history(since=0)] == [("s", T0 + 60), ("s", T0 + 120)]
    db.close()

    db = StateDB(tmp_path / "state.db")
    again = ServerHistories(step=10.0, store=db)
    assert again.load(now=T0 + 130) == 2
    day = again.history("s", "name-s", "day", now=T0 + 130).samples
    assert [(s.at, s.received_bps, s.applied_bps, s.rpo_seconds) for s in day] == [
        (T0 + 60, 60.0, 30.0, 6.0), (T0 + 120, 60.0, 30.0, 12.0)]
    assert again.history("s", "name-s", "hour", now=T0 + 130).samples == ()
    assert again.load(now=T0 + 60 + 86400) == 1  # only what is within the last day

    db.add_history([("t", T0 + 200, 1.0, 1.0, None)], keep_after=T0 + 100)  # older rows go as new ones come
    assert [r[:2] for r in db.history(since=0)] == [("s", T0 + 120), ("t", T0 + 200)]
    db.revoke_server("s")
    assert [r[0] for r in db.history(since=0)] == ["t"]
    db.close()
