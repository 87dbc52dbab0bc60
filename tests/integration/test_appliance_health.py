"""The engine measures the appliance's own health: real CPU, memory and cache figures, and an agent that stops
responding shows as an alert that names it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.appliance import Appliance, wait_for


@pytest.fixture
def sampled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """An engine that samples its health twice a second and finds an agent silent after 3 s (the supervisor waits
    10 minutes before it restarts one)."""
    app = Appliance(tmp_path_factory.mktemp("health"))
    app.start(env={"GODWIT_HEALTH_SAMPLE_EVERY": "0.5", "GODWIT_HEALTH_AGENT_SILENT": "3",
                   "GODWIT_HEALTH_SUSTAIN": "5", "GODWIT_AGENT_HUNG_AFTER": "600"})
    yield app
    app.stop()


def _health(app: Appliance) -> dict[str, Any]:
    done = app.cli("appliance", "health", "--json")
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def test_health_reports_real_values_and_names_a_silent_agent(sampled: Appliance) -> None:
    """`godwit appliance health --json` answers measured values; a stopped agent becomes a critical alert naming it."""
    health = wait_for(lambda: (h := _health(sampled))["sampled_at"] and h["cache_free_percent"] is not None and h,
                      timeout=15, what="a first sample with the cache's free space")
    assert 0 <= health["cpu_percent"] <= 100 and 0 < health["memory_percent"] < 100
    assert 0 < health["cache_free_percent"] <= 100 and health["cache_mount"]
    assert health["backlog_bytes"] == 0 and health["thresholds"]["agent_silent"] == 3
    assert {a["name"] for a in health["agents"]} >= {"log-processor", "process-server"}
    assert health["level"] in ("healthy", "warning", "critical")  # this machine's own load and disk may alert
    assert not [a for a in health["alerts"] if a["metric"] == "agent"], health["alerts"]
    history = sampled.json("appliance", "health", "--history")["history"]
    assert history and 0 <= history[-1]["cpu_percent"] <= 100

    victim = sampled.agent_pid("log-processor")
    os.kill(victim, signal.SIGSTOP)
    try:
        alert = wait_for(lambda: next((a for a in _health(sampled)["alerts"] if a["agent"] == "log-processor"),
                                      None), timeout=15, what="the stopped agent to show as an alert")
        text = sampled.cli("appliance", "health").stdout
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGCONT)
    assert alert["metric"] == "agent" and alert["level"] == "critical" and "log-processor" in alert["message"]
    assert "Appliance health: critical" in text and "Alerts:" in text and "Appliance agent log-processor" in text
    event = wait_for(lambda: next((e for e in sampled.events() if e["code"] == "appliance-health"
                                   and "log-processor" in e["message"]), None), timeout=10,
                     what="the appliance-health event")
    assert event["severity"] == "error", event

    wait_for(lambda: not [a for a in _health(sampled)["alerts"] if a["metric"] == "agent"], timeout=15,
             what="the agent alert to clear once it runs again")
