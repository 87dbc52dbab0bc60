"""The appliance's health thresholds, judged from readings fed on a fake clock (engine/appliance_health.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from engine import diskspace
from engine.appliance_health import (
    HEALTHY_AGAIN,
    HealthJudge,
    Reading,
    cpu_percent,
    cpu_times,
    health_events,
    memory_percent,
)
from engine.links import decode, encode
from engine.links.admin import ADMIN, ApplianceHealthChanged, decode_message, encode_message
from engine.records import ApplianceHealth, HealthAlert, HealthThresholds

MINUTE = 60.0
#: Readings that span 15 minutes, the first one past the threshold included.
HELD = 15 * MINUTE + 15
START = 1_700_000_000.0


class Clock:
    """Readings every 15 s of a fake clock, each on the defaults of a quiet appliance unless told otherwise."""

    def __init__(self, judge: HealthJudge) -> None:
        self.judge = judge
        self.t = 0.0
        self.received = 0

    def feed(self, seconds: float, **values: object) -> ApplianceHealth:
        """Readings every 15 s for ``seconds`` with these values; the health after the last."""
        end = self.t + seconds
        health = self.judge.health
        while self.t < end:
            self.t += 15
            base = Reading(at=START + self.t, mono=self.t, cpu_percent=10.0, memory_percent=30.0,
                           cache_free_percent=60.0, cache_mount="/srv", backlog_bytes=0,
                           received_bytes=self.received, agents=(("log-processor", START + self.t),))
            health = self.judge.judge(replace(base, **values))  # type: ignore[arg-type]
        return health


def make_clock() -> Clock:
    return Clock(HealthJudge(HealthThresholds(), backlog_hold=MINUTE, logs=Path("/d/logs")))


def alerts(health: ApplianceHealth) -> dict[str, str]:
    return {a.metric: a.level for a in health.alerts}


def test_a_brief_cpu_spike_is_not_an_alert() -> None:
    """CPU at 99 % for 14 minutes, then normal, never alerts: only a sustained load does."""
    clock = make_clock()
    assert clock.feed(14 * MINUTE, cpu_percent=99.0).level == "healthy"
    assert clock.feed(MINUTE).level == "healthy"
    assert clock.feed(14 * MINUTE, cpu_percent=99.0).level == "healthy"  # the spike before does not add up


def test_sustained_cpu_is_a_warning_then_critical() -> None:
    """CPU above 80 % for 15 minutes is a warning, above 95 % for 15 minutes critical, each naming what to do."""
    clock = make_clock()
    health = clock.feed(HELD, cpu_percent=85.0)
    assert alerts(health) == {"cpu": "warning"} and health.level == "warning"
    (alert,) = health.alerts
    assert (alert.value, alert.threshold) == (85.0, 80.0) and "more CPUs" in alert.message
    assert clock.feed(10 * MINUTE, cpu_percent=97.0).level == "warning"  # critical only once held 15 minutes
    health = clock.feed(5 * MINUTE + 15, cpu_percent=97.0)
    assert alerts(health) == {"cpu": "critical"} and health.alerts[0].threshold == 95.0


def test_sustained_memory_is_an_alert() -> None:
    """Memory above 80 % for 15 minutes is a warning, above 95 % a critical; less time is nothing."""
    clock = make_clock()
    assert clock.feed(14 * MINUTE, memory_percent=96.0).level == "healthy"
    health = clock.feed(MINUTE + 15, memory_percent=96.0)
    assert alerts(health) == {"memory": "critical"} and "more memory" in health.alerts[0].message
    assert alerts(clock.feed(MINUTE, memory_percent=90.0)) == {"memory": "warning"}


def test_cache_free_space_alerts_at_once() -> None:
    """The cache's file system below 30 % free is a warning, below 25 % critical, as soon as it is measured."""
    assert (HealthThresholds().cache_free_warning, HealthThresholds().cache_free_critical) == (
        diskspace.WARNING_FREE * 100, diskspace.CRITICAL_FREE * 100)  # the same levels as the data directory's
    clock = make_clock()
    health = clock.feed(15, cache_free_percent=28.0)
    assert alerts(health) == {"cache-free": "warning"} and "/srv" in health.alerts[0].message
    assert alerts(clock.feed(15, cache_free_percent=20.0)) == {"cache-free": "critical"}


def test_a_backlog_that_drains_too_slowly_is_an_alert() -> None:
    """A backlog that would take more than 30 / 45 minutes at the recent apply rate is a warning / critical."""
    clock = make_clock()
    backlog = 10_000_000
    clock.feed(15, backlog_bytes=backlog)
    # 1000 bytes a second applied while 1000 arrive: the backlog stays, and would take 10 000 s to drain.
    for _ in range(8):
        clock.received += 15_000
        health = clock.feed(15, backlog_bytes=backlog)
    assert health.apply_rate_bps == 1000
    assert alerts(health) == {"backlog": "critical"}
    assert health.backlog_drain_seconds is not None and health.backlog_drain_seconds > 2700
    assert "log processor" in health.alerts[0].message


def test_a_backlog_that_drains_in_time_is_healthy() -> None:
    """A backlog applied fast enough to drain within 30 minutes is not an alert."""
    clock = make_clock()
    clock.feed(15, backlog_bytes=50_000_000)
    backlog = 50_000_000
    for _ in range(8):
        backlog -= 15_000_000 // 8
        health = clock.feed(15, backlog_bytes=backlog)
    assert health.level == "healthy" and health.backlog_drain_seconds is not None
    assert health.backlog_drain_seconds < 1800


def test_a_backlog_that_does_not_drain_is_critical_after_a_few_samples() -> None:
    """Bytes in the cache with nothing applied are critical once held, not at the first sample."""
    clock = make_clock()
    clock.feed(15, backlog_bytes=1_000_000)
    assert clock.feed(30, backlog_bytes=1_000_000).level == "healthy"  # a batch that just arrived
    health = clock.feed(MINUTE, backlog_bytes=1_000_000)
    assert alerts(health) == {"backlog": "critical"} and health.alerts[0].value is None
    assert "none was applied" in health.alerts[0].message


def test_an_agent_silent_for_15_minutes_is_critical() -> None:
    """An agent whose alive file has not changed for 15 minutes is a critical alert that names it and its log."""
    clock = make_clock()
    last = START
    assert clock.feed(15 * MINUTE, agents=(("log-processor", last),)).level == "healthy"  # the first reading + 15 min
    health = clock.feed(15, agents=(("log-processor", last),))
    (alert,) = health.alerts
    assert (alert.metric, alert.level, alert.agent) == ("agent", "critical", "log-processor")
    assert "log-processor" in alert.message and "/d/logs/log-processor.log" in alert.message
    assert health.agents[0].silent_seconds >= 15 * MINUTE


def test_an_agent_never_seen_is_silent_since_the_engine_started() -> None:
    """An agent that never touched its alive file counts as silent from the first reading (the engine's start)."""
    clock = make_clock()
    health = clock.feed(15 * MINUTE + 15, agents=(("process-server", None),))
    assert alerts(health) == {"agent": "critical"} and health.agents[0].last_seen is None


def test_a_wall_clock_set_forward_is_not_silence() -> None:
    """The wall clock 180 days ahead of the alive files' times (a clock set forward, or files stamped by another
    clock) is no silence while the files keep changing; silence is counted on the clock that never jumps."""
    judge = HealthJudge(HealthThresholds(), backlog_hold=MINUTE)
    health = judge.health
    for step in range(1, 80):  # 20 minutes of readings
        t = 15.0 * step
        health = judge.judge(Reading(at=START + 180 * 86400 + t, mono=t, agents=(("log-processor", START + t),)))
    assert health.level == "healthy" and health.agents[0].silent_seconds == 0


def test_the_worst_alert_wins_and_comes_first() -> None:
    """With a warning and a critical at once, the level is critical and the critical alert is listed first."""
    clock = make_clock()
    health = clock.feed(HELD, cpu_percent=85.0, cache_free_percent=20.0)
    assert health.level == "critical"
    assert [(a.metric, a.level) for a in health.alerts] == [("cache-free", "critical"), ("cpu", "warning")]


def test_recovery_goes_back_to_healthy() -> None:
    """Once every value is back within its threshold, the level is healthy and no alert remains."""
    clock = make_clock()
    assert clock.feed(HELD, cpu_percent=99.0, memory_percent=99.0).level == "critical"
    health = clock.feed(15)
    assert health.level == "healthy" and health.alerts == ()
    assert repr(clock.judge).startswith("<HealthJudge level=healthy alerts=[]")


def test_history_keeps_one_sample_a_minute_for_a_day() -> None:
    """The history holds the last sample of each minute, at most 24 hours of them."""
    clock = make_clock()
    clock.feed(10 * MINUTE, cpu_percent=50.0)
    history = clock.judge.history()
    assert len(history) in (10, 11) and len({int(s.at // 60) for s in history}) == len(history)
    clock.feed(25 * 60 * MINUTE)
    assert len(clock.judge.history()) == 24 * 60


def test_a_value_wavering_across_a_threshold_is_one_alert() -> None:
    """Cache free space wavering between 29.9 % and 30.1 % is one warning that stays (one event), not an alert
    and a 'healthy again' every sample; it clears once the value is a point back inside."""
    clock = make_clock()
    before = clock.judge.health
    told = []
    for value in [29.9, 30.1] * 20:
        after = clock.feed(15, cache_free_percent=value)
        told += health_events(before, after)
        before = after
    assert [severity for severity, _ in told] == ["warning"] and "29.9 % free" in told[0][1]
    assert alerts(clock.feed(15, cache_free_percent=31.5)) == {}


def test_the_health_crosses_the_admin_link_and_its_stream() -> None:
    """ApplianceHealth decodes as it was sent, on a request and as a stream message."""
    clock = make_clock()
    health = clock.feed(HELD, cpu_percent=85.0, agents=(("log-processor", None),))
    health = replace(health, history=clock.judge.history())
    assert decode(ApplianceHealth, encode(health), link=ADMIN) == health
    assert decode_message(encode_message(ApplianceHealthChanged(health))) == ApplianceHealthChanged(health)
    assert decode(ApplianceHealth, {}, link=ADMIN) == ApplianceHealth()  # every field has a default


def test_cpu_and_memory_are_read_from_proc(tmp_path: Path) -> None:
    """CPU % comes from /proc/stat deltas (idle and iowait are not busy), memory % from MemTotal − MemAvailable."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n")
    before = cpu_times(stat)
    stat.write_text("cpu  150 0 150 750 150 0 0 0 0 0\n")
    assert cpu_percent(before, cpu_times(stat)) == 50.0
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1000 kB\nMemFree:    100 kB\nMemAvailable:    250 kB\n")
    assert memory_percent(meminfo) == 75.0
    real = memory_percent()
    assert real is not None and 0 < real < 100


def test_each_new_alert_is_an_event_even_when_the_level_stays() -> None:
    """An agent falling silent while the CPU already made the appliance critical is its own event; an alert that
    stays is not told again; the last one clearing is one 'healthy again' event."""
    cpu = HealthAlert(metric="cpu", level="critical", value=99, threshold=95, message="CPU at 99 %")
    agent = HealthAlert(metric="agent", level="critical", value=900, threshold=900, message="log-processor silent",
                        agent="log-processor")
    cpu_warn = replace(cpu, level="warning", message="CPU at 85 %")
    healthy = ApplianceHealth()
    assert health_events(healthy, ApplianceHealth(level="warning", alerts=(cpu_warn,))) == [("warning", "CPU at 85 %")]
    assert health_events(ApplianceHealth(level="warning", alerts=(cpu_warn,)),
                         ApplianceHealth(level="critical", alerts=(cpu,))) == [("error", "CPU at 99 %")]
    both = ApplianceHealth(level="critical", alerts=(cpu, agent))
    assert health_events(ApplianceHealth(level="critical", alerts=(cpu,)), both) == [("error", "log-processor silent")]
    assert health_events(both, ApplianceHealth(level="critical", alerts=(agent,))) == []
    assert health_events(both, healthy) == [("info", HEALTHY_AGAIN)]
