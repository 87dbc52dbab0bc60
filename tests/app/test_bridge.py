"""The bridge: typed stream messages become Qt signals (server updates coalesced by name), and
re-attaching waits by the one Backoff, longest after a failed engine start."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtWidgets import QApplication

import app.bridge
from app.bridge import (
    FAILED_START_RETRY,
    RETRY,
    EngineBridge,
    EngineError,
    EngineStatus,
    Event,
    Health,
    HealthCause,
    ServerState,
    ServerStatus,
    SetupInfo,
)
from engine.links.admin import EngineChanged, EventAdded, Hello, ServerChanged, ServerRemoved, SetupChanged
from tests.app.scripted import ScriptedClient

pytestmark = [pytest.mark.asyncio, pytest.mark.qt_loop]

ENGINE = EngineStatus(pid=4242, version="0.1.0", started_at=0.0, data_dir="/d")
SETUP = SetupInfo(appliance_id="a", passphrase="p", ca_fingerprint="f", management_port=1, data_port=2,
                  secret_store="file", host="h", mobility_command="godwit mobility run")


def server(name: str, **kw: Any) -> ServerStatus:
    base: dict[str, Any] = dict(server_id=name, name=name, hostname=name, os="Debian 12", agent_version="0.1.0",
                                state=ServerState.REGISTERED, health=Health.HEALTHY, health_cause=None,
                                health_detail=None, registered_at=0.0, last_heartbeat=None, address=None)
    return ServerStatus(**{**base, **kw})


class _Waits:
    """Stands in for ``asyncio`` in the bridge: records each wait, and stops the loop after ``count``."""

    class Done(Exception):
        pass

    def __init__(self, count: int) -> None:
        self.count = count
        self.seconds: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.seconds.append(seconds)
        if len(self.seconds) >= self.count:
            raise self.Done

    async def wait_for(self, awaitable: Any, timeout: float) -> None:
        """The bridge's pause between attempts (which Start engine can cut short): it times out here."""
        awaitable.close()
        await self.sleep(timeout)
        raise TimeoutError

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


async def test_stream_messages_become_signals(tmp_path: Path, qapp: QApplication) -> None:
    """Each typed stream message reaches its signal; updates of one server within 100 ms arrive as the last one."""
    bridge = EngineBridge(tmp_path, start_engine=False)
    later = server("web-01", state=ServerState.PROTECTED, health=Health.WARNING,
                   health_cause=HealthCause.RPO_EXCEEDED)
    started = Event(1, 0.0, "info", "engine-started", "The engine started.")
    bridge.client = ScriptedClient(events=[started], messages=[  # type: ignore[assignment]
        Hello(engine=ENGINE, setup=SETUP, servers=(server("web-01"), server("db-01")), last_event_id=1),
        ServerChanged(server(name="web-01", state=ServerState.INITIAL_REPLICATION)),
        ServerChanged(later),
        ServerChanged(server("gone-01")),
        ServerRemoved("gone-01"),
        EventAdded(Event(2, 0.0, "warning", "rpo-exceeded", "web-01 is behind.", server="web-01")),
        EngineChanged(ENGINE),
        SetupChanged(SETUP),
    ])
    seen: list[tuple[str, object]] = []
    for name in ("setup_changed", "servers_reset", "server_updated", "server_removed", "events_reset",
                 "event_added", "engine_changed"):
        getattr(bridge, name).connect(lambda value, name=name: seen.append((name, value)))
    await bridge._follow()
    assert bridge.state == "attached" and bridge.attach_count == 1
    assert repr(bridge) == f"<EngineBridge {tmp_path} state=attached attached=1x>"
    deadline = time.monotonic() + 5
    while not any(name == "server_updated" for name, _ in seen) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert [name for name, _ in seen] == ["setup_changed", "servers_reset", "events_reset", "engine_changed",
                                          "server_removed", "event_added", "engine_changed", "setup_changed",
                                          "server_updated"]
    assert [s.name for s in dict(seen)["servers_reset"]] == ["web-01", "db-01"]  # type: ignore[attr-defined]
    assert seen[-1] == ("server_updated", later)
    assert seen[4] == ("server_removed", "gone-01")
    await bridge.aclose()


async def test_reattach_waits_grow_by_the_backoff(tmp_path: Path, qapp: QApplication,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With no engine and none to start, attempts wait 0.25, 0.5, 1, 2, 3 s, then FAILED_START_RETRY each."""
    waits = _Waits(count=8)
    monkeypatch.setattr(app.bridge, "asyncio", waits)
    bridge = EngineBridge(tmp_path / "nothing-here", start_engine=False)
    with pytest.raises(_Waits.Done):
        await bridge._attach_forever()
    assert waits.seconds == [0.25, 0.5, 1.0, 2.0, 3.0, 15.0, 15.0, 15.0]
    assert RETRY.longest == FAILED_START_RETRY == 15.0
    assert bridge.state == "stopped"  # nothing holds the data directory: the console offers Start engine
    await bridge.aclose()


async def test_a_failed_engine_start_waits_the_longest(tmp_path: Path, qapp: QApplication,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine start that fails is said once and retried every FAILED_START_RETRY seconds, not hammered."""
    waits = _Waits(count=3)
    starts: list[float] = []

    async def failing_start(self: EngineBridge) -> None:
        starts.append(time.monotonic())
        raise EngineError("The management port 443 is in use by another program.")

    monkeypatch.setattr(app.bridge, "asyncio", waits)
    monkeypatch.setattr(EngineBridge, "_spawn_engine", failing_start)
    bridge = EngineBridge(tmp_path / "d")
    states: list[tuple[str, str]] = []
    bridge.connection_changed.connect(lambda state, detail: states.append((state, detail)))
    with pytest.raises(_Waits.Done):
        await bridge._attach_forever()
    assert waits.seconds == [FAILED_START_RETRY] * 3
    assert len(starts) == 3
    assert states == [("failed", "The management port 443 is in use by another program.")]
    await bridge.aclose()
